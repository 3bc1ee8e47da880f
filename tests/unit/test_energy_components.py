"""Specification of the energy breakdown by component (``energy.components``).

GPU figure from the energy backend; cpu and dram from RAPL, Zeus or CodeCarbon, first
measured source winning; headline stays GPU-only and a total with the host is given beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.codecarbon_backend import CodeCarbonEnergyBackend
from llenergymeasure.energy.components import (
    GPU_ONLY_NOTE,
    energy_components,
    host_readings_from_codecarbon,
    host_readings_from_rapl,
    host_readings_from_zeus,
)
from llenergymeasure.energy.rapl import HostEnergyMeasurement, HostEnergyReading
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.testing.energy import (
    FakeCodeCarbonTracker,
    FakeEmissionsData,
    FakeZeusMeasurement,
    FakeZeusMonitor,
)


def gpu(total: float | None = 1000.0) -> EnergyMeasurement:
    return EnergyMeasurement(
        backend="nvml",
        available=total is not None,
        method="nvml_counter" if total is not None else "unavailable",
        total_energy_j=total,
        duration_s=10.0,
        notes=[] if total is not None else ["no GPU"],
    )


def rapl(cpu: float | None, dram: float | None = None) -> list[HostEnergyReading]:
    out = [
        HostEnergyReading(
            component="cpu",
            energy_j=cpu,
            method="rapl_sysfs" if cpu is not None else "unavailable",
            zones=["intel-rapl:0 (package-0)"],
            notes=[] if cpu is not None else ["intel-rapl:0 counter was reset during the window"],
        )
    ]
    if dram is not None:
        out.append(
            HostEnergyReading(
                component="dram",
                energy_j=dram,
                method="rapl_sysfs",
                zones=["intel-rapl:0:0 (dram)"],
            )
        )
    return out


@dataclass
class ZeusMeasurementWithCpu(FakeZeusMeasurement):
    cpu_energy: dict[int, float] | None = None
    dram_energy: dict[int, float] | None = None


def test_gpu_only_when_the_host_exposes_nothing() -> None:
    c = energy_components(gpu())
    assert [x.component for x in c.components] == ["gpu"]
    assert c.gpu_energy_j == 1000.0
    assert c.host_energy_j is None
    assert c.total_with_host_j == 1000.0
    assert c.notes == [GPU_ONLY_NOTE]


def test_rapl_cpu_and_dram_are_added_to_the_total_with_host_but_not_to_the_gpu_figure() -> None:
    c = energy_components(gpu(), rapl(150.0, 30.0))
    assert c.gpu_energy_j == 1000.0
    assert c.host_energy_j == pytest.approx(180.0)
    assert c.total_with_host_j == pytest.approx(1180.0)
    cpu = c.component("cpu")
    assert cpu is not None and cpu.method == "rapl_sysfs" and not cpu.estimated
    assert cpu.sources == ["intel-rapl:0 (package-0)"]
    gpu_c = c.component("gpu")
    assert gpu_c is not None and gpu_c.method == "nvml_counter"


def test_the_first_measured_source_wins_and_the_others_are_named_not_added() -> None:
    zeus = host_readings_from_zeus(ZeusMeasurementWithCpu(1.0, {0: 1.0}, cpu_energy={0: 99.0}))
    c = energy_components(gpu(), rapl(150.0), zeus)
    cpu = c.component("cpu")
    assert cpu is not None and cpu.energy_j == 150.0
    assert any("zeus" in n and "not added" in n for n in cpu.notes)
    assert c.host_energy_j == 150.0


def test_a_failed_rapl_reading_falls_back_to_the_next_source() -> None:
    zeus = host_readings_from_zeus(ZeusMeasurementWithCpu(1.0, {0: 1.0}, cpu_energy={0: 99.0}))
    cpu = energy_components(gpu(), rapl(None), zeus).component("cpu")
    assert cpu is not None and cpu.method == "zeus" and cpu.energy_j == 99.0


def test_an_unmeasured_host_component_is_kept_as_unavailable_with_the_reason() -> None:
    c = energy_components(gpu(), rapl(None))
    cpu = c.component("cpu")
    assert cpu is not None and cpu.energy_j is None and cpu.method == "unavailable"
    assert "reset" in cpu.notes[0]
    assert c.host_energy_j is None and c.total_with_host_j == 1000.0


def test_rapl_unavailable_on_the_machine_says_why() -> None:
    m = HostEnergyMeasurement(available=False, reason="no powercap tree at /sys/class/powercap")
    cpu = energy_components(gpu(), host_readings_from_rapl(m)).component("cpu")
    assert cpu is not None and cpu.method == "unavailable"
    assert cpu.notes == ["RAPL: no powercap tree at /sys/class/powercap"]


def test_rapl_measurement_components_pass_through() -> None:
    m = HostEnergyMeasurement(available=True, components=rapl(10.0, 2.0))
    assert [r.component for r in host_readings_from_rapl(m)] == ["cpu", "dram"]


def test_without_a_gpu_figure_there_is_no_total() -> None:
    c = energy_components(gpu(None), rapl(150.0))
    assert c.total_with_host_j is None
    assert c.host_energy_j == 150.0
    gpu_c = c.component("gpu")
    assert gpu_c is not None and gpu_c.method == "unavailable" and gpu_c.notes == ["no GPU"]


def test_zeus_cpu_and_dram_are_summed_over_packages() -> None:
    readings = host_readings_from_zeus(
        ZeusMeasurementWithCpu(
            1.0, {0: 1.0}, cpu_energy={0: 10.0, 1: 12.0}, dram_energy={0: 3.0, 1: 4.0}
        )
    )
    assert [(r.component, r.energy_j, r.method, r.zones) for r in readings] == [
        ("cpu", 22.0, "zeus", ["cpu 0", "cpu 1"]),
        ("dram", 7.0, "zeus", ["cpu 0", "cpu 1"]),
    ]


def test_zeus_without_cpu_measurement_gives_nothing() -> None:
    assert host_readings_from_zeus(FakeZeusMeasurement(1.0, {0: 1.0})) == []
    assert host_readings_from_zeus(ZeusMeasurementWithCpu(1.0, {0: 1.0})) == []


def test_codecarbon_cpu_and_ram_are_converted_from_kwh_and_flagged_estimated() -> None:
    data = FakeEmissionsData(
        duration=3.0,
        gpu_energy=0.001,
        energy_consumed=0.0015,
        cpu_energy=0.0001,
        ram_energy=0.00005,
    )
    readings = host_readings_from_codecarbon(data)
    assert [(r.component, r.method) for r in readings] == [
        ("cpu", "codecarbon"),
        ("dram", "codecarbon"),
    ]
    assert readings[0].energy_j == pytest.approx(360.0)
    assert readings[1].energy_j == pytest.approx(180.0)
    c = energy_components(gpu(), readings)
    dram = c.component("dram")
    assert dram is not None and dram.estimated and "estimated" in dram.notes[0]


def test_codecarbon_zero_figures_are_not_host_readings() -> None:
    data = FakeEmissionsData(duration=3.0, gpu_energy=0.001, energy_consumed=0.001)
    assert host_readings_from_codecarbon(data) == []
    assert host_readings_from_codecarbon(None) == []


def test_the_zeus_backend_keeps_its_last_window_for_the_host_figures() -> None:
    backend = ZeusEnergyBackend(monitor_factory=lambda idx: FakeZeusMonitor(idx))
    assert backend.last_window is None
    backend.begin()
    backend.end()
    assert isinstance(backend.last_window, FakeZeusMeasurement)


def test_the_codecarbon_backend_keeps_its_last_emissions_data_for_the_host_figures() -> None:
    backend = CodeCarbonEnergyBackend(tracker_factory=lambda **kw: FakeCodeCarbonTracker(**kw))
    assert backend.last_emissions_data is None
    backend.begin()
    backend.end()
    assert isinstance(backend.last_emissions_data, FakeEmissionsData)
