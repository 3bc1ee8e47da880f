"""Specification of sensors and energy backends, all driven through injected fakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import llenergymeasure.energy as energy_pkg
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.codecarbon_backend import CodeCarbonEnergyBackend
from llenergymeasure.energy.devices import nvml_available, visible_nvml_indices
from llenergymeasure.energy.null_backend import NULL_BACKEND_NOTE, NullEnergyBackend
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.select import BackendProbes, select_energy_backend
from llenergymeasure.energy.sensors import GpuSensor, NvmlSensor
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.testing.energy import (
    FakeClock,
    FakeCodeCarbonTracker,
    FakeEnergyBackend,
    FakeGpuSensor,
    FakeNvmlDevice,
    FakeNvmlModule,
    FakeZeusMonitor,
)

UUIDS = [
    "GPU-8f3a0000-1111-2222-3333-444444444444",
    "GPU-8f3b0000-1111-2222-3333-444444444444",
    "GPU-c0ffee00-1111-2222-3333-444444444444",
]


# -- import hygiene ---------------------------------------------------------------------------


def test_importing_the_energy_package_imports_no_gpu_or_ml_library() -> None:
    src = Path(energy_pkg.__file__).resolve().parents[2]
    code = (
        "import sys, llenergymeasure.energy, llenergymeasure.testing.energy\n"
        "bad = [m for m in ('pynvml', 'torch', 'zeus', 'codecarbon') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# -- CUDA_VISIBLE_DEVICES mapping -------------------------------------------------------------


def test_unset_cuda_visible_devices_selects_every_device() -> None:
    assert visible_nvml_indices(None, UUIDS) == [0, 1, 2]


def test_empty_cuda_visible_devices_selects_no_device() -> None:
    assert visible_nvml_indices("", UUIDS) == []


def test_integer_cuda_visible_devices_keep_cuda_order() -> None:
    assert visible_nvml_indices("2, 0", UUIDS) == [2, 0]


def test_full_uuid_and_unique_prefix_map_to_nvml_indices() -> None:
    assert visible_nvml_indices(f"{UUIDS[2]},GPU-8f3b", UUIDS) == [2, 1]


def test_uuid_matching_is_case_insensitive() -> None:
    assert visible_nvml_indices("gpu-C0FFEE", UUIDS) == [2]


def test_ambiguous_uuid_prefix_is_an_error() -> None:
    with pytest.raises(BackendError, match="ambiguous"):
        visible_nvml_indices("GPU-8f3", UUIDS)


def test_unknown_uuid_is_an_error() -> None:
    with pytest.raises(BackendError, match="matches no visible GPU"):
        visible_nvml_indices("GPU-deadbeef", UUIDS)


def test_mig_devices_are_reported_as_unsupported() -> None:
    with pytest.raises(BackendError, match="MIG"):
        visible_nvml_indices("MIG-0b3d8c2a-aaaa-bbbb-cccc-dddddddddddd", UUIDS)


def test_negative_index_hides_it_and_every_later_device_like_cuda() -> None:
    assert visible_nvml_indices("1,-1,0", UUIDS) == [1]
    assert visible_nvml_indices("-1", UUIDS) == []


def test_out_of_range_index_and_duplicates_are_errors() -> None:
    with pytest.raises(BackendError, match="NVML sees 3"):
        visible_nvml_indices("7", UUIDS)
    with pytest.raises(BackendError, match="twice"):
        visible_nvml_indices("0,0", UUIDS)


def test_garbage_token_is_an_error() -> None:
    with pytest.raises(BackendError, match="cannot interpret"):
        visible_nvml_indices("first", UUIDS)


def test_mapping_of_uuids_by_index_is_accepted() -> None:
    assert visible_nvml_indices("GPU-c0ffee", {5: UUIDS[0], 9: UUIDS[2]}) == [9]


def test_the_cuda_visible_devices_in_effect_is_the_given_value_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llenergymeasure.energy.devices import effective_cuda_visible_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert effective_cuda_visible_devices() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert effective_cuda_visible_devices() == "1,0"
    assert effective_cuda_visible_devices("2") == "2"
    assert effective_cuda_visible_devices(use_env=False) is None


# -- NvmlSensor over a pynvml-like fake --------------------------------------------------------


def _fake_nvml(n: int = 2) -> FakeNvmlModule:
    return FakeNvmlModule(devices=[FakeNvmlDevice(uuid=UUIDS[i]) for i in range(n)])


def test_nvml_sensor_converts_units_and_reads_every_field() -> None:
    lib = _fake_nvml(1)
    lib.devices[0].power_mw = 215_500
    lib.devices[0].energy_mj = 123_456
    sensor = NvmlSensor(nvml=lib, use_env=False, clock=lambda: 7.0)
    r = sensor.read(0)
    assert (r.t, r.power_w, r.energy_mj) == (7.0, 215.5, 123_456)
    assert (r.temperature_c, r.sm_clock_mhz, r.utilization_pct) == (35.0, 1980, 0.0)
    assert r.memory_used_bytes == 500 * 1024**2


def test_nvml_sensor_turns_each_failing_field_into_none() -> None:
    lib = _fake_nvml(1)
    lib.devices[0].energy_mj = None
    lib.devices[0].temperature_c = None
    r = NvmlSensor(nvml=lib, use_env=False).read(0)
    assert r.energy_mj is None and r.temperature_c is None
    assert r.power_w == 73.0


def test_nvml_sensor_polls_the_instantaneous_power_field_where_the_driver_has_it() -> None:
    # Ampere+ drivers: nvmlDeviceGetPowerUsage is a 1 s average; the instant field is not.
    lib = _fake_nvml(1)
    dev = lib.devices[0]
    dev.power_fields, dev.power_instant_mw, dev.power_mw = True, 412_000, 250_000
    sensor = NvmlSensor(nvml=lib, use_env=False)
    r = sensor.read(0)
    assert (r.power_w, r.power_avg_w) == (412.0, 250.0)
    assert sensor.device_info(0).power_source == "nvml_power_instant"


def test_nvml_sensor_falls_back_to_power_usage_without_field_support() -> None:
    lib = _fake_nvml(1)
    lib.devices[0].power_mw = 180_000
    sensor = NvmlSensor(nvml=lib, use_env=False)
    r = sensor.read(0)
    assert (r.power_w, r.power_avg_w) == (180.0, None)
    assert sensor.device_info(0).power_source == "nvml_power_usage"


def test_nvml_sensor_falls_back_when_the_instant_field_reports_an_error() -> None:
    lib = _fake_nvml(1)
    dev = lib.devices[0]
    dev.power_fields, dev.power_mw = True, 150_000
    sensor = NvmlSensor(nvml=lib, use_env=False)
    dev.power_fields = False  # the field query starts failing after the probe
    assert sensor.read(0).power_w == 150.0


def test_nvml_sensor_without_field_values_in_the_bindings_still_works() -> None:
    lib = _fake_nvml(1)
    lib.nvmlDeviceGetFieldValues = None  # type: ignore[assignment,method-assign]
    sensor = NvmlSensor(nvml=lib, use_env=False)
    assert sensor.read(0).power_w == 73.0
    assert sensor.device_info(0).power_source == "nvml_power_usage"


def test_nvml_sensor_device_info_reports_counter_support_and_limits() -> None:
    lib = _fake_nvml(2)
    lib.devices[1].energy_mj = None
    sensor = NvmlSensor(nvml=lib, use_env=False)
    info0, info1 = sensor.device_info(0), sensor.device_info(1)
    assert info0.uuid == UUIDS[0] and info0.power_limit_w == 700.0
    assert info0.persistence_mode is True and info0.total_memory_bytes == 80 * 1024**3
    assert info0.supports_energy_counter and not info1.supports_energy_counter


def test_nvml_sensor_selects_devices_from_cuda_visible_devices() -> None:
    lib = _fake_nvml(3)
    sensor = NvmlSensor(nvml=lib, cuda_visible_devices="GPU-c0ffee,0")
    assert sensor.device_count() == 2
    assert sensor.nvml_indices == [2, 0]
    info = sensor.device_info(0)
    assert (info.index, info.nvml_index, info.uuid) == (0, 2, UUIDS[2])


def test_nvml_sensor_reads_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sensor = NvmlSensor(nvml=_fake_nvml(3))
    assert sensor.nvml_indices == [1]


def test_nvml_sensor_explicit_devices_override_the_environment() -> None:
    sensor = NvmlSensor(devices=[1], nvml=_fake_nvml(2), cuda_visible_devices="0")
    assert sensor.nvml_indices == [1]
    with pytest.raises(BackendError, match="out of range"):
        NvmlSensor(devices=[4], nvml=_fake_nvml(2))


def test_nvml_sensor_init_failure_is_a_backend_error_with_a_hint() -> None:
    with pytest.raises(BackendError, match="NVML initialisation failed") as info:
        NvmlSensor(nvml=FakeNvmlModule(init_error=True))
    assert info.value.hint is not None and "GPU" in info.value.hint


def test_nvml_sensor_initialises_once_and_shuts_down_once() -> None:
    lib = _fake_nvml(1)
    sensor = NvmlSensor(nvml=lib, use_env=False)
    sensor.read(0)
    sensor.close()
    sensor.close()
    assert (lib.init_calls, lib.shutdown_calls) == (1, 1)


def test_nvml_sensor_satisfies_the_gpu_sensor_protocol() -> None:
    assert isinstance(NvmlSensor(nvml=_fake_nvml(1), use_env=False), GpuSensor)
    assert isinstance(FakeGpuSensor(), GpuSensor)


def test_nvml_available_needs_init_and_at_least_one_device() -> None:
    assert nvml_available(_fake_nvml(1))
    assert not nvml_available(_fake_nvml(0))
    assert not nvml_available(FakeNvmlModule(init_error=True))


# -- NVML energy backend ------------------------------------------------------------------------


def _run_window(
    sensor: FakeGpuSensor,
    clock: FakeClock,
    *,
    seconds: float = 10.0,
    step: float = 0.1,
    sampler: EnergySampler | None = None,
) -> EnergyMeasurement:
    """Sample every ``step`` s; the window opens after the first sample and closes
    before the last one, as it does with a running sampler."""
    sampler = sampler if sampler is not None else EnergySampler(sensor, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    sampler.sample_now()
    clock.advance(step / 2)
    backend.begin()
    t_end = clock() + seconds
    while clock() + step <= t_end + 1e-9:
        clock.advance(step)
        sampler.sample_now()
    clock.advance(t_end - clock())
    result = backend.end()
    clock.advance(step / 2)
    sampler.sample_now()
    return result


def test_counter_delta_gives_the_energy_and_poll_is_kept_as_cross_check() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_w=200.0, clock=clock)
    m = _run_window(sensor, clock, seconds=10.0)
    assert m.method == "nvml_counter" and m.available
    assert m.total_energy_j == pytest.approx(2000.0)
    assert m.poll_energy_j == pytest.approx(2000.0)
    assert m.counter_vs_poll_diff_pct == pytest.approx(0.0, abs=1e-6)
    assert m.duration_s == pytest.approx(10.0)
    d = m.devices[0]
    assert (d.device_uuid, d.method) == (sensor.uuids[0], "nvml_counter")
    assert d.counter_energy_j == pytest.approx(2000.0)


def test_multi_gpu_total_is_the_sum_of_devices_and_keeps_the_list() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 300.0], clock=clock)
    m = _run_window(sensor, clock, seconds=5.0)
    assert [d.energy_j for d in m.devices] == pytest.approx([500.0, 1500.0])
    assert m.total_energy_j == pytest.approx(2000.0)
    assert [d.device_index for d in m.devices] == [0, 1]


def test_fallback_to_polled_power_when_the_counter_is_unsupported() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_w=150.0, supports_energy_counter=False, clock=clock)
    m = _run_window(sensor, clock, seconds=4.0)
    assert m.method == "nvml_power_integration"
    assert m.total_energy_j == pytest.approx(600.0)
    assert m.devices[0].counter_energy_j is None
    assert m.counter_vs_poll_diff_pct is None
    assert any("no NVML energy counter" in n for n in m.notes)


def test_fallback_to_polled_power_when_a_counter_read_fails() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_w=100.0, energy_script={0: [1_000, None]}, clock=clock)
    m = _run_window(sensor, clock, seconds=2.0)
    assert m.method == "nvml_power_integration"
    assert m.total_energy_j == pytest.approx(200.0)
    assert any("read failed" in n for n in m.notes)


def test_counter_reset_during_the_window_falls_back_to_polling() -> None:
    clock = FakeClock(0.0)
    # reads: sampler, begin, sampler..., end: begin sees 9e9 mJ, end sees 5 mJ
    sensor = FakeGpuSensor(
        power_w=100.0, energy_script={0: [9_000_000_000, 9_000_000_000, 5]}, clock=clock
    )
    sampler = EnergySampler(sensor, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    sampler.sample_now()
    backend.begin()
    clock.advance(1.0)
    sampler.sample_now()
    m = backend.end()
    assert m.method == "nvml_power_integration"
    assert m.total_energy_j == pytest.approx(100.0)
    assert any("reset" in n for n in m.notes)


def test_counter_wrap_within_the_window_is_measured_modularly() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(energy_script={0: [2**64 - 500, 1_500]}, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor)
    backend.begin()
    clock.advance(2.0)
    m = backend.end()
    assert m.total_energy_j == pytest.approx(2.0)
    assert m.method == "nvml_counter"


def test_counter_vs_poll_disagreement_is_reported_in_percent() -> None:
    clock = FakeClock(0.0)
    # counter says 1000 J over 10 s; polled power says 110 W -> 1100 J: poll is 10 % higher
    sensor = FakeGpuSensor(
        power_w=110.0, energy_script={0: [0, 0, *([500_000] * 100), 1_000_000]}, clock=clock
    )
    sampler = EnergySampler(sensor, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    sampler.sample_now()  # counter 0
    backend.begin()  # counter 0
    for _ in range(100):
        clock.advance(0.1)
        sampler.sample_now()
    m = backend.end()  # counter 1_000_000 mJ
    assert m.total_energy_j == pytest.approx(1000.0)
    assert m.poll_energy_j == pytest.approx(1100.0)
    assert m.counter_vs_poll_diff_pct == pytest.approx(10.0)


def test_the_poll_cross_check_names_its_power_reading_and_integrates_the_average_too() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(
        power_w=200.0,
        power_avg_script={0: [150.0]},
        power_source="nvml_power_instant",
        clock=clock,
    )
    m = _run_window(sensor, clock, seconds=10.0)
    assert m.poll_power_source == "nvml_power_instant"
    d = m.devices[0]
    assert d.poll_power_source == "nvml_power_instant"
    assert d.poll_energy_j == pytest.approx(2000.0)
    assert d.poll_avg_energy_j == pytest.approx(1500.0)


def test_missing_power_samples_are_bridged_in_the_poll_integral() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(
        supports_energy_counter=False, power_script={0: [100.0, None, None, 100.0]}, clock=clock
    )
    sampler = EnergySampler(sensor, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    sampler.sample_now()
    backend.begin()  # reads power too (None), but the poll integral uses sampler rows
    clock.advance(3.0)
    sampler.sample_now()
    m = backend.end()
    assert m.total_energy_j == pytest.approx(300.0)


def test_without_counter_or_sampler_energy_is_unavailable_not_zero() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(supports_energy_counter=False, clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor)
    backend.begin()
    clock.advance(5.0)
    m = backend.end()
    assert m.total_energy_j is None and not m.available
    assert m.method == "unavailable"
    assert m.devices[0].energy_j is None


def test_total_is_withheld_when_one_device_has_no_energy() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=2, supports_energy_counter=[True, False], clock=clock)
    backend = NvmlEnergyBackend(sensor=sensor)
    backend.begin()
    clock.advance(5.0)
    m = backend.end()
    assert m.total_energy_j is None
    assert m.devices[0].energy_j == pytest.approx(500.0)
    assert any("device(s) [1]" in n for n in m.notes)


def test_short_window_is_flagged_in_the_notes() -> None:
    clock = FakeClock(0.0)
    backend = NvmlEnergyBackend(sensor=FakeGpuSensor(clock=clock))
    backend.begin()
    clock.advance(0.2)
    assert any("short" in n for n in backend.end().notes)


def test_end_without_begin_is_an_error() -> None:
    with pytest.raises(BackendError, match="without begin"):
        NvmlEnergyBackend(sensor=FakeGpuSensor()).end()


def test_nvml_backend_availability_follows_the_injected_sensor() -> None:
    assert NvmlEnergyBackend(sensor=FakeGpuSensor()).is_available()
    assert not NvmlEnergyBackend(sensor=FakeGpuSensor(n_devices=0)).is_available()


def test_measurement_model_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError):
        EnergyMeasurement(
            backend="x",
            available=True,
            method="nvml_counter",
            total_energy_j=1.0,
            duration_s=1.0,
            surprise=1,
        )


def test_measurement_round_trips_through_json() -> None:
    clock = FakeClock(0.0)
    m = _run_window(FakeGpuSensor(n_devices=2, clock=clock), clock, seconds=2.0)
    assert EnergyMeasurement.model_validate_json(m.model_dump_json()) == m


# -- Zeus adapter -----------------------------------------------------------------------------


def test_zeus_adapter_sums_gpu_energy_of_one_window() -> None:
    made: list[FakeZeusMonitor] = []

    def factory(gpu_indices: list[int] | None) -> FakeZeusMonitor:
        made.append(FakeZeusMonitor(gpu_indices, energy_j={0: 120.0, 1: 80.0}, time_s=4.0))
        return made[0]

    backend = ZeusEnergyBackend([0, 1], monitor_factory=factory)
    backend.begin()
    m = backend.end()
    assert made[0].gpu_indices == [0, 1]
    assert m.method == "zeus" and m.available and m.backend == "zeus"
    assert m.total_energy_j == pytest.approx(200.0)
    assert m.duration_s == 4.0
    assert [(d.device_index, d.energy_j) for d in m.devices] == [(0, 120.0), (1, 80.0)]
    assert [c[0] for c in made[0].calls] == ["begin", "end"]
    assert all(sync is False for _, _, sync in made[0].calls)


def test_zeus_monitor_is_reused_across_windows() -> None:
    made: list[FakeZeusMonitor] = []

    def factory(gpu_indices: list[int] | None) -> FakeZeusMonitor:
        made.append(FakeZeusMonitor(gpu_indices))
        return made[-1]

    backend = ZeusEnergyBackend(monitor_factory=factory)
    for _ in range(2):
        backend.begin()
        backend.end()
    assert len(made) == 1


def test_zeus_zero_energy_is_flagged() -> None:
    backend = ZeusEnergyBackend(monitor_factory=lambda g: FakeZeusMonitor(g, energy_j={0: 0.0}))
    backend.begin()
    assert any("zero energy" in n for n in backend.end().notes)


def test_zeus_window_misuse_is_an_error() -> None:
    backend = ZeusEnergyBackend(monitor_factory=lambda g: FakeZeusMonitor(g))
    with pytest.raises(BackendError):
        backend.end()
    backend.begin()
    with pytest.raises(BackendError):
        backend.begin()


# -- CodeCarbon adapter -----------------------------------------------------------------------


def test_codecarbon_adapter_reports_gpu_energy_in_joules() -> None:
    made: list[FakeCodeCarbonTracker] = []

    def factory(**kwargs: object) -> FakeCodeCarbonTracker:
        made.append(FakeCodeCarbonTracker(gpu_kwh=0.001, total_kwh=0.002, duration_s=3.0, **kwargs))
        return made[-1]

    backend = CodeCarbonEnergyBackend("FRA", tracker_factory=factory)
    backend.begin()
    m = backend.end()
    tracker = made[0]
    assert tracker.started and tracker.stopped
    assert tracker.kwargs["country_iso_code"] == "FRA"
    assert tracker.kwargs["save_to_file"] is False
    assert m.method == "codecarbon" and m.available
    assert m.total_energy_j == pytest.approx(3600.0)
    assert m.duration_s == 3.0
    assert any("7200.000 J" in n for n in m.notes)  # CPU+GPU+RAM kept as a note


def test_codecarbon_uses_a_fresh_tracker_per_window() -> None:
    made: list[FakeCodeCarbonTracker] = []

    def factory(**kwargs: object) -> FakeCodeCarbonTracker:
        made.append(FakeCodeCarbonTracker(**kwargs))
        return made[-1]

    backend = CodeCarbonEnergyBackend(tracker_factory=factory)
    for _ in range(2):
        backend.begin()
        backend.end()
    assert len(made) == 2


def test_codecarbon_without_emissions_data_is_unavailable() -> None:
    class NoData(FakeCodeCarbonTracker):
        def stop(self) -> float:
            return 0.0

    backend = CodeCarbonEnergyBackend(tracker_factory=lambda **kw: NoData(**kw))
    backend.begin()
    m = backend.end()
    assert m.total_energy_j is None and m.method == "unavailable"


# -- null backend -----------------------------------------------------------------------------


def test_null_backend_measures_no_energy_and_says_so() -> None:
    clock = FakeClock(0.0)
    backend = NullEnergyBackend(clock=clock)
    assert backend.is_available()
    backend.begin()
    clock.advance(2.5)
    m = backend.end()
    assert m.method == "unavailable" and m.total_energy_j is None
    assert m.duration_s == pytest.approx(2.5)
    assert m.notes == [NULL_BACKEND_NOTE]


@pytest.mark.parametrize(
    "backend",
    [
        NvmlEnergyBackend(sensor=FakeGpuSensor()),
        ZeusEnergyBackend(monitor_factory=lambda g: FakeZeusMonitor(g)),
        CodeCarbonEnergyBackend(tracker_factory=lambda **kw: FakeCodeCarbonTracker(**kw)),
        NullEnergyBackend(),
        FakeEnergyBackend(),
    ],
    ids=lambda b: type(b).__name__,
)
def test_every_backend_satisfies_the_energy_backend_protocol(backend: object) -> None:
    assert isinstance(backend, EnergyBackend)


# -- selection --------------------------------------------------------------------------------


def _probes(*, zeus: bool, codecarbon: bool, gpu: bool) -> BackendProbes:
    return BackendProbes(
        zeus_importable=lambda: zeus,
        codecarbon_importable=lambda: codecarbon,
        gpu_available=lambda: gpu,
    )


@pytest.mark.parametrize(
    ("zeus", "gpu", "codecarbon", "expected"),
    [
        (True, True, True, ZeusEnergyBackend),
        (False, True, True, NvmlEnergyBackend),
        (True, False, True, CodeCarbonEnergyBackend),
        (False, False, True, CodeCarbonEnergyBackend),
        (True, False, False, NullEnergyBackend),
        (False, False, False, NullEnergyBackend),
    ],
)
def test_auto_selection_order(zeus: bool, gpu: bool, codecarbon: bool, expected: type) -> None:
    probes = _probes(zeus=zeus, codecarbon=codecarbon, gpu=gpu)
    assert isinstance(select_energy_backend("auto", probes=probes), expected)


def test_auto_with_an_injected_sensor_uses_it_for_gpu_presence() -> None:
    probes = _probes(zeus=False, codecarbon=False, gpu=False)
    sensor = FakeGpuSensor()
    sampler = EnergySampler(sensor)
    backend = select_energy_backend("auto", sensor=sensor, sampler=sampler, probes=probes)
    assert isinstance(backend, NvmlEnergyBackend)
    assert backend.sensor is sensor and backend.sampler is sampler


def test_explicit_choices_return_their_backend_when_available() -> None:
    probes = _probes(zeus=True, codecarbon=True, gpu=True)
    assert isinstance(select_energy_backend("nvml", probes=probes), NvmlEnergyBackend)
    assert isinstance(select_energy_backend("zeus", probes=probes), ZeusEnergyBackend)
    assert isinstance(select_energy_backend("codecarbon", probes=probes), CodeCarbonEnergyBackend)
    assert isinstance(select_energy_backend("none", probes=probes), NullEnergyBackend)


def test_explicit_nvml_without_gpu_names_the_problem() -> None:
    with pytest.raises(BackendError, match=r"'nvml'.*no NVIDIA GPU/driver visible"):
        select_energy_backend("nvml", probes=_probes(zeus=True, codecarbon=True, gpu=False))


def test_explicit_zeus_not_installed_names_the_install_command() -> None:
    with pytest.raises(BackendError, match="'zeus'") as info:
        select_energy_backend("zeus", probes=_probes(zeus=False, codecarbon=True, gpu=True))
    assert 'pip install -e ".[zeus]"' in str(info.value)


def test_explicit_zeus_without_gpu_names_the_problem() -> None:
    with pytest.raises(BackendError, match="no NVIDIA GPU/driver visible"):
        select_energy_backend("zeus", probes=_probes(zeus=True, codecarbon=True, gpu=False))


def test_explicit_codecarbon_not_installed_names_the_install_command() -> None:
    with pytest.raises(BackendError, match="'codecarbon'") as info:
        select_energy_backend("codecarbon", probes=_probes(zeus=True, codecarbon=False, gpu=True))
    assert 'pip install -e ".[codecarbon]"' in str(info.value)


def test_unknown_choice_is_a_config_error_listing_valid_values() -> None:
    with pytest.raises(ConfigError, match="auto, nvml, zeus, codecarbon, none"):
        select_energy_backend("rapl", probes=_probes(zeus=False, codecarbon=False, gpu=False))


def test_selection_on_this_machine_without_probes_never_raises_for_auto() -> None:
    backend = select_energy_backend("auto")
    assert isinstance(backend, EnergyBackend)
