"""Specification of ``EnergySampler``: a background thread that never disturbs the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.energy.sampler import TIMESERIES_COLUMNS, EnergySampler, next_tick
from llenergymeasure.energy.sensors import DeviceInfo, SensorReading
from llenergymeasure.testing.energy import FakeClock, FakeGpuSensor


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise AssertionError("condition not reached in time")


def test_sampler_polls_every_device_in_the_background() -> None:
    sensor = FakeGpuSensor(n_devices=2)
    with EnergySampler(sensor, interval_ms=5) as sampler:
        _wait_for(lambda: len(sampler.samples) >= 10)
    assert {s.device_index for s in sampler.samples} == {0, 1}
    assert sampler.error is None
    assert not sampler.running


def test_stop_wakes_the_wait_at_once() -> None:
    # an hour between samples: only a stop that wakes the wait ends the thread within the join
    # (60 s: a hang guard, far above the milliseconds it takes)
    sampler = EnergySampler(FakeGpuSensor(), interval_ms=3_600_000)
    sampler.start()
    _wait_for(lambda: len(sampler.samples) >= 1)
    sampler.stop(timeout_s=60)
    assert not sampler.stop_timed_out and not sampler.running
    assert len(sampler.samples) == 2  # the first reading and the final one at the stop


def test_samples_carry_device_uuid_and_all_sensor_fields() -> None:
    sensor = FakeGpuSensor(power_w=150.0)
    with EnergySampler(sensor, interval_ms=5) as sampler:
        _wait_for(lambda: len(sampler.samples) >= 2)
    s = sampler.samples[0]
    assert s.device_uuid == sensor.uuids[0]
    assert s.power_w == 150.0
    assert s.energy_mj is not None
    assert (s.temperature_c, s.sm_clock_mhz, s.utilization_pct) == (40.0, 1980, 50.0)
    assert s.memory_used_bytes == 1024**3


def test_the_schedule_advances_by_the_interval_and_skips_missed_ticks() -> None:
    assert next_tick(10.0, 10.004, 0.02) == pytest.approx(10.02)  # on time
    assert next_tick(10.0, 10.015, 0.02) == pytest.approx(10.02)  # late, the tick still ahead
    # fell 3.5 intervals behind: the missed ticks are skipped, not taken back to back
    assert next_tick(10.0, 10.07, 0.02) == pytest.approx(10.09)


def test_the_sampler_keeps_polling_until_stopped() -> None:
    with EnergySampler(FakeGpuSensor(), interval_ms=20) as sampler:
        _wait_for(lambda: len(sampler.samples) >= 5, timeout_s=60)
    times = [s.t for s in sampler.samples]
    assert not sampler.running and len(times) >= 5
    assert times == sorted(times)


def test_phase_labels_are_applied_to_subsequent_samples() -> None:
    sampler = EnergySampler(FakeGpuSensor(), interval_ms=2, phase="warmup")
    with sampler:
        _wait_for(lambda: len(sampler.samples) >= 2)
        sampler.set_phase("measurement")
        n_before = len(sampler.samples)
        _wait_for(lambda: len(sampler.samples) >= n_before + 3)
    phases = [s.phase for s in sampler.samples]
    assert phases[0] == "warmup"
    assert phases[-1] == "measurement"
    # once switched, never back
    first_meas = phases.index("measurement")
    assert set(phases[first_meas:]) == {"measurement"}
    assert [p for _, p in sampler.phase_marks] == ["warmup", "measurement"]


def test_a_final_sample_is_taken_when_the_sampler_stops() -> None:
    clock = FakeClock()
    sensor = FakeGpuSensor(clock=clock)
    sampler = EnergySampler(sensor, interval_ms=10_000, clock=clock).start()
    _wait_for(lambda: len(sampler.samples) >= 1)
    clock.advance(3.0)
    sampler.stop()
    times = [s.t for s in sampler.samples]
    assert times[-1] == pytest.approx(times[0] + 3.0)


def test_samples_between_selects_by_time_and_device() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=2, clock=clock)
    sampler = EnergySampler(sensor, clock=clock)
    for _ in range(5):
        sampler.sample_now()
        clock.advance(1.0)
    assert [s.t for s in sampler.samples_between(1.0, 3.0, device=1)] == [1.0, 2.0, 3.0]
    assert len(sampler.samples_between(1.0, 3.0)) == 6


def test_poll_energy_integrates_one_device_over_a_window() -> None:
    clock = FakeClock(0.0)
    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 300.0], clock=clock)
    sampler = EnergySampler(sensor, clock=clock)
    for _ in range(11):
        sampler.sample_now()
        clock.advance(0.1)
    assert sampler.poll_energy_j(0.25, 0.75, device=0) == pytest.approx(50.0)
    assert sampler.poll_energy_j(0.25, 0.75, device=1) == pytest.approx(150.0)


def test_exception_in_the_sensor_is_captured_not_raised() -> None:
    error = RuntimeError("NVML went away")
    sensor = FakeGpuSensor(fail_after_reads=3, error=error)
    sampler = EnergySampler(sensor, interval_ms=2).start()
    _wait_for(lambda: not sampler.running)
    sampler.stop()  # does not raise
    assert sampler.error is error
    assert len(sampler.samples) == 3


class _BlockingSensor(FakeGpuSensor):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def read(self, i: int) -> SensorReading:
        self.release.wait(60.0)  # a hang guard: the test releases it
        return super().read(i)


def test_stop_gives_up_after_its_timeout_when_the_sensor_hangs() -> None:
    sensor = _BlockingSensor()
    sampler = EnergySampler(sensor, interval_ms=5).start()
    sampler.stop(timeout_s=0.05)
    # stop returned while the thread is still stuck in the read: it gave up waiting
    assert sampler.stop_timed_out and sampler.running
    sensor.release.set()
    _wait_for(lambda: not sampler.running, timeout_s=60)


def test_starting_twice_is_an_error() -> None:
    sampler = EnergySampler(FakeGpuSensor(), interval_ms=5).start()
    try:
        with pytest.raises(RuntimeError):
            sampler.start()
    finally:
        sampler.stop()


def test_non_positive_interval_is_rejected() -> None:
    with pytest.raises(ValueError):
        EnergySampler(FakeGpuSensor(), interval_ms=0)


def test_sampler_polls_only_the_selected_devices() -> None:
    clock = FakeClock()
    sampler = EnergySampler(FakeGpuSensor(n_devices=3, clock=clock), devices=[2], clock=clock)
    sampler.sample_now()
    assert [s.device_index for s in sampler.samples] == [2]


def test_parquet_sidecar_round_trips_with_the_documented_columns(tmp_path: Path) -> None:
    clock = FakeClock(50.0)
    sensor = FakeGpuSensor(n_devices=2, clock=clock, power_script={0: [100.0, None, 120.0]})
    sampler = EnergySampler(sensor, clock=clock)
    sampler.set_phase("measurement")
    for _ in range(3):
        sampler.sample_now()
        clock.advance(0.1)

    path = sampler.to_parquet(tmp_path / "run" / "timeseries.parquet")
    table = pq.read_table(path)

    assert tuple(table.column_names) == TIMESERIES_COLUMNS
    assert table.num_rows == 6
    rows = table.to_pylist()
    dev0 = [r for r in rows if r["device_index"] == 0]
    assert [r["power_w"] for r in dev0] == [100.0, None, 120.0]
    assert [r["t_s"] for r in dev0] == pytest.approx([0.0, 0.1, 0.2])
    assert {r["phase"] for r in rows} == {"measurement"}
    assert {r["device_uuid"] for r in rows} == set(sensor.uuids)
    assert rows[0]["timestamp_utc"].tzinfo is not None
    assert rows[0]["timestamp_utc"].utcoffset() == timezone.utc.utcoffset(None)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_parquet_write_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "timeseries.parquet"
    target.write_bytes(b"old")
    clock = FakeClock()
    sampler = EnergySampler(FakeGpuSensor(clock=clock), clock=clock)
    sampler.sample_now()
    sampler.to_parquet(target)
    assert pq.read_table(target).num_rows == 1


def test_empty_sampler_writes_an_empty_table_with_the_schema(tmp_path: Path) -> None:
    sampler = EnergySampler(FakeGpuSensor())
    table = pq.read_table(sampler.to_parquet(tmp_path / "t.parquet"))
    assert table.num_rows == 0
    assert tuple(table.column_names) == TIMESERIES_COLUMNS


def test_device_info_failure_leaves_uuid_empty_but_keeps_sampling() -> None:
    class NoInfo(FakeGpuSensor):
        def device_info(self, i: int) -> DeviceInfo:
            raise RuntimeError("no info")

    clock = FakeClock()
    sampler = EnergySampler(NoInfo(clock=clock), clock=clock)
    sampler.sample_now()
    assert sampler.samples[0].device_uuid is None
