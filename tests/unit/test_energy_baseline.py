"""Specification of the idle-power baseline and its TTL cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    default_baseline_cache,
    get_or_measure_baseline,
    measure_idle_baseline,
)
from llenergymeasure.energy.sensors import GpuSensor, SensorReading
from llenergymeasure.exceptions import BackendError
from llenergymeasure.testing.energy import FakeClock, FakeGpuSensor


def _measure(
    sensor: FakeGpuSensor,
    clock: FakeClock,
    duration_s: float = 1.0,
    devices: Sequence[int] | None = None,
) -> BaselineMeasurement:
    return measure_idle_baseline(sensor, duration_s, 100.0, devices, clock=clock, sleep=clock.sleep)


# -- measurement ------------------------------------------------------------------------------


def test_baseline_is_the_mean_idle_power_over_the_duration() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_script={0: [70.0, 74.0, 72.0, 76.0]}, clock=clock)
    b = measure_idle_baseline(sensor, 0.3, 100.0, clock=clock, sleep=clock.sleep)
    assert b.n_samples == 4  # t = 0, 0.1, 0.2, 0.3
    assert b.power_w == pytest.approx(73.0)
    assert b.duration_s == pytest.approx(0.3)
    assert b.method == "nvml_power_poll"
    assert not b.from_cache and b.cache_age_s is None


def test_multi_gpu_baseline_sums_the_per_device_means() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=2, power_w=[70.0, 80.0], clock=clock)
    b = _measure(sensor, clock)
    assert b.per_device_power_w == pytest.approx([70.0, 80.0])
    assert b.power_w == pytest.approx(150.0)
    assert b.device_uuids == sensor.uuids


def test_baseline_measures_only_the_selected_devices() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=3, power_w=[70.0, 80.0, 90.0], clock=clock)
    b = _measure(sensor, clock, devices=[2])
    assert b.per_device_power_w == pytest.approx([90.0])
    assert {i for i, _ in sensor.reads} == {2}


def test_missing_power_readings_are_skipped_in_the_mean() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_script={0: [70.0, None, 80.0, None]}, clock=clock)
    b = measure_idle_baseline(sensor, 0.3, 100.0, clock=clock, sleep=clock.sleep)
    assert b.power_w == pytest.approx(75.0)


def test_a_device_without_any_power_reading_is_an_error() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_script={0: [None]}, clock=clock)
    with pytest.raises(BackendError, match="no power reading"):
        _measure(sensor, clock)


def test_baseline_sampling_keeps_its_schedule_when_reads_are_slow() -> None:
    clock = FakeClock(0.0)

    class SlowSensor(FakeGpuSensor):
        def read(self, i: int) -> SensorReading:
            r = super().read(i)
            clock.advance(0.03)  # each read takes 30 ms
            return r

    b = measure_idle_baseline(SlowSensor(clock=clock), 1.0, 100.0, clock=clock, sleep=clock.sleep)
    assert b.n_samples == 11  # not fewer: sleeps are shortened by the read time


def test_baseline_with_no_devices_is_an_error() -> None:
    clock = FakeClock(0.0)
    with pytest.raises(BackendError):
        _measure(FakeGpuSensor(n_devices=0, clock=clock), clock)


# -- cache ------------------------------------------------------------------------------------


def _baseline(power_w: float = 73.0) -> BaselineMeasurement:
    clock = FakeClock(0.0)
    return _measure(FakeGpuSensor(power_w=power_w, clock=clock), clock)


def test_cache_miss_then_hit_with_provenance_and_age() -> None:
    clock = FakeClock(10_000.0)
    cache = BaselineCache(ttl_s=3600, clock=clock)
    assert cache.get(["GPU-a"], 30.0) is None
    cache.put(["GPU-a"], 30.0, _baseline(73.0))
    clock.advance(120.0)
    hit = cache.get(["GPU-a"], 30.0)
    assert hit is not None
    assert hit.from_cache and hit.cache_age_s == pytest.approx(120.0)
    assert hit.power_w == pytest.approx(73.0)


def test_cache_entry_expires_after_the_ttl() -> None:
    clock = FakeClock(0.0)
    cache = BaselineCache(ttl_s=60, clock=clock)
    cache.put(["GPU-a"], 30.0, _baseline())
    clock.advance(60.0)
    assert cache.get(["GPU-a"], 30.0) is not None
    clock.advance(0.001)
    assert cache.get(["GPU-a"], 30.0) is None


def test_ttl_can_be_overridden_per_lookup() -> None:
    clock = FakeClock(0.0)
    cache = BaselineCache(ttl_s=3600, clock=clock)
    cache.put(["GPU-a"], 30.0, _baseline())
    clock.advance(100.0)
    assert cache.get(["GPU-a"], 30.0, ttl_s=50.0) is None


def test_cache_is_keyed_by_devices_and_duration() -> None:
    clock = FakeClock(0.0)
    cache = BaselineCache(clock=clock)
    cache.put(["GPU-a"], 30.0, _baseline())
    assert cache.get(["GPU-b"], 30.0) is None
    assert cache.get(["GPU-a"], 10.0) is None
    assert cache.get(["GPU-a", "GPU-b"], 30.0) is None


def test_cache_persists_to_a_json_file_shared_by_processes(tmp_path: Path) -> None:
    clock = FakeClock(5_000.0)
    path = tmp_path / "cache" / "baseline.json"
    BaselineCache(path=path, clock=clock).put(["GPU-a"], 30.0, _baseline(71.0))
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    clock.advance(10.0)
    other_process = BaselineCache(path=path, clock=clock)
    hit = other_process.get(["GPU-a"], 30.0)
    assert hit is not None and hit.power_w == pytest.approx(71.0)
    assert hit.cache_age_s == pytest.approx(10.0)


def test_corrupt_cache_file_counts_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text("{not json")
    cache = BaselineCache(path=path)
    assert cache.get(["GPU-a"], 30.0) is None
    cache.put(["GPU-a"], 30.0, _baseline())  # and is overwritten cleanly
    assert BaselineCache(path=path).get(["GPU-a"], 30.0) is not None


def test_clear_forgets_entries_and_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    cache = BaselineCache(path=path)
    cache.put(["GPU-a"], 30.0, _baseline())
    cache.clear()
    assert cache.get(["GPU-a"], 30.0) is None and not path.exists()


# -- get_or_measure ---------------------------------------------------------------------------


class _CountingMeasure:
    def __init__(self, clock: FakeClock) -> None:
        self.calls = 0
        self.clock = clock

    def __call__(
        self,
        sensor: GpuSensor,
        duration_s: float,
        interval_ms: float,
        devices: Sequence[int] | None,
    ) -> BaselineMeasurement:
        self.calls += 1
        return measure_idle_baseline(
            sensor, duration_s, interval_ms, devices, clock=self.clock, sleep=self.clock.sleep
        )


def test_get_or_measure_measures_once_then_reuses_within_the_ttl() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(power_w=73.0, clock=clock)
    measure = _CountingMeasure(clock)
    cache = BaselineCache(ttl_s=3600, clock=clock)

    first = get_or_measure_baseline(sensor, 1.0, cache=cache, measure=measure)
    clock.advance(30.0)
    second = get_or_measure_baseline(sensor, 1.0, cache=cache, measure=measure)

    assert measure.calls == 1
    assert not first.from_cache
    assert second.from_cache and second.cache_age_s is not None and second.cache_age_s > 0
    assert second.power_w == first.power_w


def test_get_or_measure_remeasures_after_expiry() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(clock=clock)
    measure = _CountingMeasure(clock)
    cache = BaselineCache(ttl_s=10, clock=clock)
    get_or_measure_baseline(sensor, 1.0, cache=cache, measure=measure)
    clock.advance(11.0)
    again = get_or_measure_baseline(sensor, 1.0, cache=cache, measure=measure)
    assert measure.calls == 2 and not again.from_cache


def test_default_cache_is_one_per_process() -> None:
    assert default_baseline_cache() is default_baseline_cache()
