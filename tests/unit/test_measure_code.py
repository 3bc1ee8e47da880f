"""``llem.measure()``: any block of code (or every call of a function) measured through the
energy window of llem's runs, with the runs' backend choice, baseline code and result arithmetic.

Driven with fake sensors, backends and a fake clock (``llenergymeasure.testing``): every figure
here is exact arithmetic on the fakes' readings, never a wall-clock time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llenergymeasure as llem
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.energy.codecarbon_backend import CodeCarbonEnergyBackend, codecarbon_importable
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.rapl import RaplReader
from llenergymeasure.energy.sensors import GpuSensor, SensorReading
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.harness.block_machine import Machine, TorchCudaIfLoaded, runs_energy_backend
from llenergymeasure.harness.block_measurement import Measurement, MeasurementNotReadyError
from llenergymeasure.harness.measure_code import MeasuredBlock, MeasuredFunction
from llenergymeasure.harness.orchestrator import energy_backend_for
from llenergymeasure.harness.settings import MeasurementSettings
from llenergymeasure.testing.energy import (
    FakeClock,
    FakeCodeCarbonTracker,
    FakeEnergyBackend,
    FakeGpuSensor,
    FakeZeusMonitor,
)

NVML = MeasurementSettings(energy_backend="nvml", sampling_interval_ms=50)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def machine(
    clock: FakeClock,
    sensor: GpuSensor | None,
    *,
    tmp_path: Path,
    settings: MeasurementSettings | None = NVML,
    **overrides: Any,
) -> Machine:
    """The fakes of one machine: the sensor, settings, a RAPL tree that is not there, clocks."""
    parts: dict[str, Any] = {
        "open_sensor": lambda: sensor,
        "settings": settings,
        "rapl": RaplReader(root=tmp_path / "no-powercap"),
        "clock": clock,
        "timer": clock,
        "sleep": clock.sleep,
        "baseline_cache": BaselineCache(),
    }
    parts.update(overrides)
    return Machine(**parts)


def sampler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "llem-energy-sampler")


# ─── Energy, duration, per-device figures ──────────────────────────────────────────────────


def test_a_block_reports_the_energy_and_duration_of_every_gpu_from_the_counters(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 50.0], clock=clock)
    with MeasuredBlock(machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(2.0)

    assert m.energy_j == pytest.approx(300.0)  # 100 W x 2 s + 50 W x 2 s
    assert m.duration_s == pytest.approx(2.0)
    assert m.gpus == [0, 1]
    assert [d.device_index for d in m.devices] == [0, 1]
    assert [d.energy_j for d in m.devices] == pytest.approx([200.0, 100.0])
    assert [d.device_uuid for d in m.devices] == sensor.uuids
    assert m.measurement.method == "nvml_counter"
    assert m.measurement.backend == "nvml"
    assert m.not_measured_reason is None
    assert isinstance(m.measurement, Measurement)
    assert "short_measurement_duration" in m.warnings  # the runs' flags, under 10 s
    assert "energy_counter_poll_disagreement" not in m.warnings


def test_the_energy_backend_is_chosen_by_the_code_runs_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Machine().choose_backend is runs_energy_backend
    asked: list[tuple[MeasurementSettings, GpuSensor | None]] = []

    def spy(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
        asked.append((settings, sensor))
        return energy_backend_for(settings, sensor)

    monkeypatch.setattr("llenergymeasure.harness.orchestrator.energy_backend_for", spy)
    sensor = FakeGpuSensor()
    backend = runs_energy_backend(NVML, sensor)
    assert asked == [(NVML, sensor)]
    assert isinstance(backend, NvmlEnergyBackend)


def test_the_user_settings_choose_the_backend_when_none_are_injected(
    clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_ENERGY_BACKEND", "none")
    sensor = FakeGpuSensor(clock=clock)
    with MeasuredBlock(machine=machine(clock, sensor, tmp_path=tmp_path, settings=None)) as m:
        clock.advance(1.0)
    assert m.measurement.backend == "none"
    assert m.energy_j is None

    monkeypatch.setenv("LLEM_ENERGY_BACKEND", "nvml")  # an explicit choice that cannot work
    with (
        pytest.raises(BackendError, match="nvml"),
        MeasuredBlock(machine=machine(clock, None, tmp_path=tmp_path, settings=None)),
    ):
        pass


def test_gpus_restricts_the_block_to_those_cuda_ordinals(clock: FakeClock, tmp_path: Path) -> None:
    sensor = FakeGpuSensor(n_devices=3, power_w=[100.0, 50.0, 30.0], clock=clock)
    with MeasuredBlock(gpus=[2, 0], machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(2.0)

    assert m.gpus == [2, 0]
    assert [(d.device_index, d.energy_j) for d in m.devices] == [
        (2, pytest.approx(60.0)),
        (0, pytest.approx(200.0)),
    ]
    assert [d.device_uuid for d in m.devices] == [sensor.uuids[2], sensor.uuids[0]]
    assert m.energy_j == pytest.approx(260.0)


def test_one_gpu_may_be_given_as_an_int(clock: FakeClock, tmp_path: Path) -> None:
    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 50.0], clock=clock)
    with MeasuredBlock(gpus=1, machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(1.0)
    assert m.gpus == [1]
    assert m.energy_j == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ([], "no GPU to measure"),
        ([0, 0], "listed twice"),
        (-1, "not a CUDA ordinal"),
        ([True], "not a CUDA ordinal"),
        ("0", "a CUDA ordinal or a list"),
        ([1.0], "not a CUDA ordinal"),
    ],
)
def test_bad_gpus_are_refused_before_anything_is_opened(gpus: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        llem.measure(gpus=gpus)


def test_a_gpu_this_process_does_not_see_is_refused_and_the_sensor_closed(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(n_devices=2, clock=clock)
    ran = []
    block = MeasuredBlock(gpus=[1, 2], machine=machine(clock, sensor, tmp_path=tmp_path))
    with pytest.raises(ConfigError, match=r"sees 2 GPU\(s\).*\[2\]"), block:
        ran.append(True)
    assert ran == []  # the block never ran
    assert sensor.closed
    with pytest.raises(MeasurementNotReadyError, match=r"window did not open .*ConfigError"):
        _ = block.energy_j


# ─── Counter vs poll ───────────────────────────────────────────────────────────────────────


class CounterRunsFast(FakeGpuSensor):
    """The energy counter integrates ``true_w`` while the power reading says ``power_w``."""

    def __init__(self, true_w: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.true_w = true_w

    def read(self, i: int) -> SensorReading:
        reading = super().read(i)
        counter = self.energy_offset_mj + round(self.true_w * (reading.t - self.t_start) * 1000)
        return SensorReading(t=reading.t, power_w=reading.power_w, energy_mj=counter)


def test_counter_and_poll_are_both_reported_with_their_disagreement(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = CounterRunsFast(true_w=110.0, power_w=100.0, clock=clock)
    with MeasuredBlock(machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(10.0)

    assert m.counter_energy_j == pytest.approx(1100.0)
    assert m.poll_energy_j == pytest.approx(1000.0)  # the background sampler's integral
    assert m.counter_vs_poll_diff_pct == pytest.approx((1000.0 - 1100.0) / 1100.0 * 100.0)
    assert m.energy_j == pytest.approx(1100.0)  # the counter is the figure
    assert "energy_counter_poll_disagreement" in m.warnings  # as a run would flag it
    (device,) = m.devices
    assert (device.counter_energy_j, device.poll_energy_j) == (
        pytest.approx(1100.0),
        pytest.approx(1000.0),
    )


def test_without_a_counter_the_polled_power_is_the_figure(clock: FakeClock, tmp_path: Path) -> None:
    sensor = FakeGpuSensor(power_w=80.0, supports_energy_counter=False, clock=clock)
    with MeasuredBlock(machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(2.0)
    assert m.energy_j == pytest.approx(160.0)
    assert m.measurement.method == "nvml_power_integration"
    assert m.counter_energy_j is None


# ─── Baseline and J/token ──────────────────────────────────────────────────────────────────


def test_a_baseline_in_watts_is_subtracted_over_the_duration(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(power_w=100.0, clock=clock)
    with MeasuredBlock(baseline=40.0, machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(2.0)

    assert m.energy_j == pytest.approx(200.0)
    assert m.baseline_power_w == 40.0
    assert m.measurement.baseline_energy_j == pytest.approx(80.0)
    assert m.energy_adjusted_j == pytest.approx(120.0)
    assert m.measurement.baseline_source == "given"
    assert m.per_token(10) == pytest.approx(20.0)
    assert m.per_token(10, adjusted=True) == pytest.approx(12.0)


def test_a_baseline_above_the_draw_gives_a_negative_adjusted_energy_and_says_so(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(power_w=100.0, clock=clock)
    with MeasuredBlock(baseline=150, machine=machine(clock, sensor, tmp_path=tmp_path)) as m:
        clock.advance(1.0)
    assert m.energy_adjusted_j == pytest.approx(-50.0)
    assert any("negative" in n for n in m.notes)


class LoadSensor(FakeGpuSensor):
    """Draws ``power`` (settable); its counter integrates exactly what was drawn."""

    def __init__(self, clock: FakeClock, idle_w: float) -> None:
        super().__init__(power_w=idle_w, clock=clock)
        self.power = idle_w
        self._energy_j = 1000.0
        self._t = clock()
        self._guard = threading.Lock()

    def _advance(self) -> float:
        now = self.clock()
        self._energy_j += self.power * (now - self._t)
        self._t = now
        return now

    def draw(self, watts: float) -> None:
        with self._guard:
            self._advance()
            self.power = watts

    def read(self, i: int) -> SensorReading:
        with self._guard:
            t = self._advance()
            return SensorReading(t=t, power_w=self.power, energy_mj=round(self._energy_j * 1000))


def test_baseline_measure_polls_idle_power_first_with_the_runs_baseline_code(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = LoadSensor(clock, idle_w=50.0)
    parts = machine(clock, sensor, tmp_path=tmp_path)
    with MeasuredBlock(baseline="measure", baseline_seconds=1.0, machine=parts) as m:
        sensor.draw(250.0)
        clock.advance(2.0)
    sensor.draw(50.0)

    assert m.energy_j == pytest.approx(500.0)
    assert m.baseline_power_w == pytest.approx(50.0)
    assert m.energy_adjusted_j == pytest.approx(400.0)  # 500 J - 50 W x 2 s
    assert m.measurement.baseline_source == "measured"
    assert m.baseline is not None
    assert m.baseline.duration_s == pytest.approx(1.0)  # the fake clock's, polled every 50 ms
    assert m.baseline.n_samples == 21
    assert m.baseline.device_uuids == [sensor.uuids[0]]

    # the next block of this process reuses it (as runs do, within the baseline TTL)
    with MeasuredBlock(baseline="measure", baseline_seconds=1.0, machine=parts) as again:
        clock.advance(1.0)
    assert again.measurement.baseline_source == "cached"
    assert again.baseline_power_w == pytest.approx(50.0)


def test_a_baseline_measurement_can_be_passed_on_to_another_block(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = LoadSensor(clock, idle_w=30.0)
    parts = machine(clock, sensor, tmp_path=tmp_path)
    with MeasuredBlock(baseline="measure", baseline_seconds=0.5, machine=parts) as first:
        clock.advance(1.0)
    assert first.baseline is not None
    with MeasuredBlock(baseline=first.baseline, machine=parts) as second:
        sensor.draw(130.0)
        clock.advance(1.0)
    assert second.measurement.baseline_source == "passed"
    assert second.energy_adjusted_j == pytest.approx(100.0)


def test_a_baseline_of_other_gpus_is_refused_before_the_block_runs(
    clock: FakeClock, tmp_path: Path
) -> None:
    two = FakeGpuSensor(n_devices=2, clock=clock)
    with MeasuredBlock(
        gpus=0, baseline="measure", machine=machine(clock, two, tmp_path=tmp_path)
    ) as on_gpu0:
        clock.advance(1.0)
    ran = []
    other = MeasuredBlock(
        gpus=1, baseline=on_gpu0.baseline, machine=machine(clock, two, tmp_path=tmp_path)
    )
    with pytest.raises(ConfigError, match="baseline was measured on"), other:
        ran.append(True)
    assert ran == []


@pytest.mark.parametrize(
    ("baseline", "message"),
    [(-1.0, ">= 0"), (float("nan"), ">= 0"), ("idle", "idle power in watts"), (True, "watts")],
)
def test_a_bad_baseline_is_refused(baseline: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        llem.measure(baseline=baseline)


def test_baseline_seconds_has_the_runs_bound() -> None:
    with pytest.raises(ConfigError, match="baseline_seconds"):
        llem.measure(baseline="measure", baseline_seconds=0)
    with pytest.raises(ConfigError, match="baseline_seconds"):
        llem.measure(baseline="measure", baseline_seconds=7200)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_per_token_needs_a_positive_whole_number_of_tokens(
    n: Any, clock: FakeClock, tmp_path: Path
) -> None:
    with MeasuredBlock(machine=machine(clock, FakeGpuSensor(clock=clock), tmp_path=tmp_path)) as m:
        clock.advance(1.0)
    with pytest.raises(ValueError, match="whole number of tokens"):
        m.per_token(n)


# ─── Nothing to measure: None with a reason, never 0 J ─────────────────────────────────────


def test_without_a_gpu_the_energy_is_none_with_a_reason_and_the_duration_is_measured(
    clock: FakeClock, tmp_path: Path
) -> None:
    none = MeasurementSettings(energy_backend="none")
    with MeasuredBlock(
        gpus=[0], baseline=40.0, machine=machine(clock, None, tmp_path=tmp_path, settings=none)
    ) as m:
        clock.advance(3.0)

    assert m.energy_j is None
    assert m.not_measured_reason
    assert m.energy_adjusted_j is None
    assert m.per_token(10) is None
    assert m.duration_s == pytest.approx(3.0)
    assert m.gpus == [] and m.devices == []
    assert "gpus=[0] not measured: this process sees no GPU" in m.notes
    assert "not measured" in str(m.measurement)


@pytest.mark.skipif(codecarbon_importable(), reason="auto picks CodeCarbon where it is installed")
def test_auto_on_a_machine_without_gpu_measures_nothing(clock: FakeClock, tmp_path: Path) -> None:
    auto = MeasurementSettings(energy_backend="auto")
    with MeasuredBlock(
        baseline="measure", machine=machine(clock, None, tmp_path=tmp_path, settings=auto)
    ) as m:
        clock.advance(1.0)
    assert m.energy_j is None and m.not_measured_reason
    assert m.baseline_power_w is None
    assert any("idle baseline not taken" in n for n in m.notes)


def test_a_sensor_with_no_visible_gpu_counts_as_no_gpu(clock: FakeClock, tmp_path: Path) -> None:
    empty = FakeGpuSensor(n_devices=0, clock=clock)
    none = MeasurementSettings(energy_backend="none")
    with MeasuredBlock(machine=machine(clock, empty, tmp_path=tmp_path, settings=none)) as m:
        clock.advance(1.0)
    assert m.energy_j is None and m.gpus == []
    assert empty.closed


def test_codecarbon_zero_gpu_energy_is_not_a_reading_and_its_host_estimates_stay(
    clock: FakeClock, tmp_path: Path
) -> None:
    def codecarbon(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
        return CodeCarbonEnergyBackend(
            tracker_factory=lambda **kw: FakeCodeCarbonTracker(
                gpu_kwh=0.0, gpu_count=0, cpu_kwh=1e-6, ram_kwh=5e-7, **kw
            ),
            available=lambda: True,
        )

    parts = machine(clock, None, tmp_path=tmp_path, choose_backend=codecarbon)
    with MeasuredBlock(machine=parts) as m:
        clock.advance(1.0)

    assert m.energy_j is None
    assert "CodeCarbon tracked no GPU" in (m.not_measured_reason or "")
    cpu = m.components.component("cpu")
    dram = m.components.component("dram")
    assert cpu is not None and cpu.energy_j == pytest.approx(3.6) and cpu.estimated
    assert dram is not None and dram.energy_j == pytest.approx(1.8) and dram.estimated
    assert m.host_energy_j == pytest.approx(5.4)


def test_host_rapl_counters_are_read_around_the_block_and_marked_measured(
    clock: FakeClock, tmp_path: Path
) -> None:
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    sensor = FakeGpuSensor(clock=clock)
    parts = machine(
        clock, sensor, tmp_path=tmp_path, rapl=RaplReader(root=tmp_path / "powercap", clock=clock)
    )
    with MeasuredBlock(machine=parts) as m:
        clock.advance(1.0)
        (zone / "energy_uj").write_text("13000000\n")  # 12 J on the CPU package

    cpu = m.components.component("cpu")
    assert cpu is not None and cpu.method == "rapl_sysfs" and not cpu.estimated
    assert cpu.energy_j == pytest.approx(12.0)
    assert m.components.total_with_host_j == pytest.approx(100.0 + 12.0)


# ─── Other backends ────────────────────────────────────────────────────────────────────────


def test_zeus_is_told_the_gpus_and_reports_them_by_cuda_ordinal(
    clock: FakeClock, tmp_path: Path
) -> None:
    monitors: list[FakeZeusMonitor] = []

    def zeus(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
        def monitor(indices: list[int] | None) -> FakeZeusMonitor:
            monitors.append(FakeZeusMonitor(indices, energy_j={1: 42.0}))
            return monitors[-1]

        return ZeusEnergyBackend(monitor_factory=monitor, available=lambda: True)

    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 21.0], clock=clock)
    parts = machine(clock, sensor, tmp_path=tmp_path, choose_backend=zeus)
    with MeasuredBlock(gpus=[1], machine=parts) as m:
        clock.advance(2.0)

    assert monitors[0].gpu_indices == [1]
    assert [(d.device_index, d.energy_j) for d in m.devices] == [(1, 42.0)]
    assert m.energy_j == 42.0
    assert m.poll_energy_j == pytest.approx(42.0)  # llem's own sampler over GPU 1: 21 W x 2 s


def test_codecarbon_cannot_be_limited_to_some_gpus(clock: FakeClock, tmp_path: Path) -> None:
    def codecarbon(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
        return CodeCarbonEnergyBackend(tracker_factory=FakeCodeCarbonTracker)

    sensor = FakeGpuSensor(n_devices=2, clock=clock)
    parts = machine(clock, sensor, tmp_path=tmp_path, choose_backend=codecarbon)
    with pytest.raises(ConfigError, match="codecarbon"), MeasuredBlock(gpus=0, machine=parts):
        pass
    assert sensor.closed


# ─── The window: order, exceptions, reading too early ──────────────────────────────────────


class LoggingBackend(FakeEnergyBackend):
    def __init__(self, log: list[str]) -> None:
        super().__init__(100.0)
        self.log = log

    def begin(self) -> None:
        self.log.append("energy.begin")
        super().begin()

    def end(self) -> EnergyMeasurement:
        self.log.append("energy.end")
        return super().end()


class LoggingDevice:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def synchronize(self) -> None:
        self.log.append("synchronize")

    def reset_peak_memory(self) -> None:
        self.log.append("reset_peak_memory")


def logging_machine(log: list[str], clock: FakeClock, tmp_path: Path) -> Machine:
    return machine(
        clock,
        FakeGpuSensor(clock=clock),
        tmp_path=tmp_path,
        choose_backend=lambda settings, sensor: LoggingBackend(log),
        device=LoggingDevice(log),
    )


def test_the_block_alone_runs_inside_the_runs_window(clock: FakeClock, tmp_path: Path) -> None:
    log: list[str] = []
    with MeasuredBlock(machine=logging_machine(log, clock, tmp_path)) as m:
        log.append("block")
    assert log == ["synchronize", "energy.begin", "block", "synchronize", "energy.end"]
    assert m.energy_j == 100.0


def test_figures_read_inside_the_block_raise_a_clear_error(
    clock: FakeClock, tmp_path: Path
) -> None:
    block = MeasuredBlock(machine=machine(clock, FakeGpuSensor(clock=clock), tmp_path=tmp_path))
    with pytest.raises(MeasurementNotReadyError, match="after the block"):
        _ = block.energy_j
    with block as m:
        with pytest.raises(MeasurementNotReadyError, match="after the block"):
            _ = m.energy_j
        with pytest.raises(MeasurementNotReadyError):
            m.per_token(3)
        clock.advance(1.0)
    assert m.energy_j == pytest.approx(100.0)


def test_a_block_that_raises_closes_the_window_records_nothing_and_reraises(
    clock: FakeClock, tmp_path: Path
) -> None:
    log: list[str] = []
    parts = logging_machine(log, clock, tmp_path)
    threads = sampler_threads()
    block = MeasuredBlock(machine=parts)
    with pytest.raises(KeyError, match="boom"), block:
        log.append("block")
        raise KeyError("boom")

    assert log == ["synchronize", "energy.begin", "block", "energy.end"]  # closed, no sync
    assert sampler_threads() == threads  # the sampler stopped
    with pytest.raises(MeasurementNotReadyError, match=r"raised .*KeyError.*nothing was recorded"):
        _ = block.energy_j


def test_a_block_runs_once(clock: FakeClock, tmp_path: Path) -> None:
    block = MeasuredBlock(machine=machine(clock, FakeGpuSensor(clock=clock), tmp_path=tmp_path))
    with block:
        pass
    with pytest.raises(ConfigError, match="runs once"), block:
        pass


def test_nested_blocks_each_read_their_own_counter_difference(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(power_w=100.0, clock=clock)
    parts = machine(clock, sensor, tmp_path=tmp_path)
    with MeasuredBlock(machine=parts) as outer:
        clock.advance(1.0)
        with MeasuredBlock(machine=parts) as inner:
            clock.advance(2.0)
        clock.advance(1.0)
    assert inner.energy_j == pytest.approx(200.0)
    assert outer.energy_j == pytest.approx(400.0)  # the inner block's energy is part of it
    assert (inner.duration_s, outer.duration_s) == (pytest.approx(2.0), pytest.approx(4.0))


# ─── The decorator ─────────────────────────────────────────────────────────────────────────


def test_a_decorated_function_is_measured_on_every_call(clock: FakeClock, tmp_path: Path) -> None:
    parts = machine(clock, FakeGpuSensor(power_w=100.0, clock=clock), tmp_path=tmp_path)

    @MeasuredBlock(baseline=20.0, machine=parts)
    def work(seconds: float, *, tag: str) -> str:
        clock.advance(seconds)
        return f"{tag} done"

    assert isinstance(work, MeasuredFunction)
    assert work.last_measurement is None
    assert work(1.0, tag="a") == "a done"
    first = work.last_measurement
    assert work(3.0, tag="b") == "b done"
    second = work.last_measurement
    assert first is not None and second is not None
    assert (first.energy_j, second.energy_j) == (pytest.approx(100.0), pytest.approx(300.0))
    assert second.energy_adjusted_j == pytest.approx(240.0)
    assert work.__name__ == "work"


def test_a_decorated_call_that_raises_records_nothing_and_reraises(
    clock: FakeClock, tmp_path: Path
) -> None:
    sensor = FakeGpuSensor(clock=clock)
    calls = iter([None, ValueError("bad input")])

    @MeasuredBlock(machine=machine(clock, sensor, tmp_path=tmp_path))
    def work() -> None:
        clock.advance(1.0)
        error = next(calls)
        if error is not None:
            raise error

    work()
    assert work.last_measurement is not None
    with pytest.raises(ValueError, match="bad input"):
        work()
    assert work.last_measurement is None  # never the previous call's figures
    assert sensor.closed


def test_a_decorated_coroutine_is_measured_until_it_returns(
    clock: FakeClock, tmp_path: Path
) -> None:
    parts = machine(clock, FakeGpuSensor(power_w=100.0, clock=clock), tmp_path=tmp_path)

    @MeasuredBlock(machine=parts)
    async def work() -> int:
        await asyncio.sleep(0)
        clock.advance(2.0)
        return 7

    assert asyncio.run(work()) == 7
    assert work.last_measurement is not None
    assert work.last_measurement.energy_j == pytest.approx(200.0)


def test_a_decorated_method_keeps_its_last_measurement(clock: FakeClock, tmp_path: Path) -> None:
    parts = machine(clock, FakeGpuSensor(power_w=10.0, clock=clock), tmp_path=tmp_path)

    class Model:
        def __init__(self) -> None:
            self.calls = 0

        @MeasuredBlock(machine=parts)
        def generate(self, seconds: float) -> int:
            self.calls += 1
            clock.advance(seconds)
            return self.calls

    model = Model()
    assert model.generate(5.0) == 1
    measured = model.generate.last_measurement
    assert measured is not None and measured.energy_j == pytest.approx(50.0)
    assert Model.generate.last_measurement is measured


def test_generators_are_refused_with_a_hint() -> None:
    def tokens() -> Iterator[int]:
        yield 1

    with pytest.raises(ConfigError, match="generator"):
        llem.measure()(tokens)


def test_the_public_function_makes_blocks_and_decorators() -> None:
    assert isinstance(llem.measure(), MeasuredBlock)

    @llem.measure
    def bare() -> int:
        return 1

    @llem.measure(gpus=[0])
    def with_arguments() -> int:
        return 2

    assert isinstance(bare, MeasuredFunction) and isinstance(with_arguments, MeasuredFunction)


def test_on_this_machine_a_block_measures_or_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_ENERGY_BACKEND", "none")  # deterministic on any CI machine

    @llem.measure
    def work() -> int:
        return sum(range(1000))

    assert work() == 499500
    measured = work.last_measurement
    assert measured is not None
    assert measured.energy_j is None and measured.not_measured_reason
    assert measured.duration_s >= 0.0


# ─── Device sync without importing torch ───────────────────────────────────────────────────


def fake_torch(initialised: bool, contexts: set[int], log: list[int]) -> Any:
    cuda = SimpleNamespace(
        is_initialized=lambda: initialised,
        device_count=lambda: 3,
        synchronize=log.append,
    )
    return SimpleNamespace(
        cuda=cuda, _C=SimpleNamespace(_cuda_hasPrimaryContext=contexts.__contains__)
    )


def test_devices_are_synced_only_where_torch_already_holds_a_cuda_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[int] = []
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True, {0, 2}, synced))
    TorchCudaIfLoaded().synchronize()
    TorchCudaIfLoaded([2, 1]).synchronize()
    assert synced == [0, 2, 2]

    synced.clear()
    monkeypatch.setitem(sys.modules, "torch", fake_torch(False, {0}, synced))
    TorchCudaIfLoaded().synchronize()
    assert synced == []  # CUDA never initialised: nothing can be queued


def test_measuring_a_block_imports_no_torch() -> None:
    code = (
        "import os, sys\n"
        "os.environ['LLEM_ENERGY_BACKEND'] = 'none'\n"
        "import llenergymeasure as llem\n"
        "with llem.measure() as m:\n"
        "    pass\n"
        "print(m.energy_j)\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
