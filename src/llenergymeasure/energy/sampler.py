"""Background power/energy sampler: one daemon thread polling a ``GpuSensor``.

The thread never raises into the caller: an exception stops sampling and is kept in
``EnergySampler.error``. ``to_parquet`` writes the timeseries sidecar atomically.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure.energy.maths import integrate_power_j
from llenergymeasure.energy.sensors import GpuSensor

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TIMESERIES_COLUMNS", "EnergySampler", "Sample", "next_tick"]

TIMESERIES_COLUMNS: tuple[str, ...] = (
    "t_s",
    "timestamp_utc",
    "device_index",
    "device_uuid",
    "phase",
    "power_w",
    "power_avg_w",
    "energy_mj",
    "temperature_c",
    "sm_clock_mhz",
    "utilization_pct",
    "memory_used_bytes",
)


@dataclass(frozen=True)
class Sample:
    """One sampled row: sensor time ``t`` (monotonic s), device, phase label, sensor fields."""

    t: float
    device_index: int
    device_uuid: str | None
    phase: str
    power_w: float | None
    energy_mj: int | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    utilization_pct: float | None
    memory_used_bytes: int | None
    power_avg_w: float | None = None  # NVML's 1 s averaged power, where read separately


def next_tick(deadline: float, now: float, interval_s: float) -> float:
    """The sampler's next deadline after ``deadline``: one interval on, or, when that has
    already passed at ``now`` (the thread fell behind), one interval from now, so missed ticks
    are skipped, not bunched."""
    deadline += interval_s
    return now + interval_s if deadline < now else deadline


class EnergySampler:
    """Poll every selected device of ``sensor`` each ``interval_ms`` in a daemon thread.

    ``devices``: sensor positions to poll (default: all). ``clock`` must be the sensor's clock
    (``time.monotonic`` for NVML); it anchors ``t_s`` in the sidecar. The schedule is
    drift-corrected (deadlines advance by the interval, missed ticks are skipped, not
    bunched). A final reading is taken when the thread stops, so windows ending just before
    ``stop()`` are bracketed by samples.
    """

    def __init__(
        self,
        sensor: GpuSensor,
        *,
        interval_ms: float = 100.0,
        devices: Sequence[int] | None = None,
        phase: str = "idle",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.sensor = sensor
        self.interval_s = float(interval_ms) / 1000.0
        self._devices = list(devices) if devices is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[Sample] = []
        self._phase = phase
        self._phase_marks: list[tuple[float, str]] = []
        self._uuids: dict[int, str | None] = {}
        self._resolved: list[int] | None = None
        self.error: BaseException | None = None
        self.stop_timed_out = False
        self.start_t: float | None = None
        self.start_utc: datetime | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> EnergySampler:
        """Start the thread (returns at once). Starting twice is an error."""
        if self._thread is not None:
            raise RuntimeError("EnergySampler already started")
        self.start_t = self._clock()
        self.start_utc = datetime.now(timezone.utc)
        with self._lock:
            self._phase_marks.append((self.start_t, self._phase))
        self._thread = threading.Thread(target=self._run, name="llem-energy-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Signal the thread and join it for at most ``timeout_s``; never raises its errors."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            self.stop_timed_out = thread.is_alive()

    @property
    def running(self) -> bool:
        """True while the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EnergySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_phase(self, phase: str) -> None:
        """Label subsequent samples with ``phase`` ("warmup", "measurement", ...)."""
        with self._lock:
            self._phase = phase
            self._phase_marks.append((self._clock(), phase))

    @property
    def phase(self) -> str:
        """Current phase label."""
        with self._lock:
            return self._phase

    @property
    def phase_marks(self) -> list[tuple[float, str]]:
        """``(t, phase)`` for the start and every ``set_phase`` call."""
        with self._lock:
            return list(self._phase_marks)

    # -- thread ---------------------------------------------------------------------------

    def _resolve_devices(self) -> list[int]:
        with self._lock:
            if self._resolved is not None:
                return self._resolved
        devices = (
            self._devices if self._devices is not None else list(range(self.sensor.device_count()))
        )
        uuids: dict[int, str | None] = {}
        for i in devices:
            try:
                uuids[i] = self.sensor.device_info(i).uuid
            except Exception:
                uuids[i] = None
        with self._lock:
            self._uuids.update(uuids)
            self._resolved = devices
        return devices

    def sample_now(self) -> None:
        """Take one reading of every device synchronously, in the caller's thread."""
        self._sample_once(self._resolve_devices())

    def _run(self) -> None:
        try:
            devices = self._resolve_devices()
            next_deadline = time.monotonic()
            while True:
                self._sample_once(devices)
                if self._stop_event.is_set():
                    break
                now = time.monotonic()
                next_deadline = next_tick(next_deadline, now, self.interval_s)
                if self._stop_event.wait(next_deadline - now):
                    self._sample_once(devices)  # final reading brackets the window end
                    break
        except BaseException as exc:  # kept for the caller, never raised in the thread
            self.error = exc

    def _sample_once(self, devices: Sequence[int]) -> None:
        rows = []
        phase = self.phase
        for i in devices:
            r = self.sensor.read(i)
            rows.append(
                Sample(
                    t=r.t,
                    device_index=i,
                    device_uuid=self._uuids.get(i),
                    phase=phase,
                    power_w=r.power_w,
                    energy_mj=r.energy_mj,
                    power_avg_w=r.power_avg_w,
                    temperature_c=r.temperature_c,
                    sm_clock_mhz=r.sm_clock_mhz,
                    utilization_pct=r.utilization_pct,
                    memory_used_bytes=r.memory_used_bytes,
                )
            )
        with self._lock:
            self._samples.extend(rows)

    # -- access ---------------------------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        """Snapshot of every sample so far."""
        with self._lock:
            return list(self._samples)

    def samples_between(self, t0: float, t1: float, device: int | None = None) -> list[Sample]:
        """Samples with ``t0 <= t <= t1`` (optionally of one device), in time order."""
        return [
            s
            for s in self.samples
            if t0 <= s.t <= t1 and (device is None or s.device_index == device)
        ]

    def device_indices(self) -> list[int]:
        """Device positions seen in the samples so far."""
        return sorted({s.device_index for s in self.samples})

    def poll_energy_j(
        self, t0: float, t1: float, device: int, *, averaged: bool = False
    ) -> float | None:
        """Integrated polled power of ``device`` over ``[t0, t1]`` (J), clipped at the edges.

        Uses every sample of the device so that the edges interpolate between the samples
        either side of the window. ``averaged`` integrates NVML's 1 s averaged reading
        (``power_avg_w``) instead of ``power_w``. ``None`` when no sample has that reading.
        """
        rows = [s for s in self.samples if s.device_index == device]
        powers = [s.power_avg_w if averaged else s.power_w for s in rows]
        return integrate_power_j([s.t for s in rows], powers, t0=t0, t1=t1)

    # -- export ---------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """The timeseries as a ``pyarrow.Table`` (columns ``TIMESERIES_COLUMNS``)."""
        import pyarrow as pa

        rows = self.samples
        t_ref = self.start_t if self.start_t is not None else (rows[0].t if rows else 0.0)
        utc_ref = self.start_utc or datetime.now(timezone.utc)
        schema = pa.schema(
            [
                ("t_s", pa.float64()),
                ("timestamp_utc", pa.timestamp("us", tz="UTC")),
                ("device_index", pa.int32()),
                ("device_uuid", pa.string()),
                ("phase", pa.string()),
                ("power_w", pa.float64()),
                ("power_avg_w", pa.float64()),
                ("energy_mj", pa.int64()),
                ("temperature_c", pa.float64()),
                ("sm_clock_mhz", pa.int32()),
                ("utilization_pct", pa.float64()),
                ("memory_used_bytes", pa.int64()),
            ]
        )
        rel = [s.t - t_ref for s in rows]
        columns = {
            "t_s": rel,
            "timestamp_utc": [utc_ref + timedelta(seconds=x) for x in rel],
            "device_index": [s.device_index for s in rows],
            "device_uuid": [s.device_uuid for s in rows],
            "phase": [s.phase for s in rows],
            "power_w": [s.power_w for s in rows],
            "power_avg_w": [s.power_avg_w for s in rows],
            "energy_mj": [s.energy_mj for s in rows],
            "temperature_c": [s.temperature_c for s in rows],
            "sm_clock_mhz": [s.sm_clock_mhz for s in rows],
            "utilization_pct": [s.utilization_pct for s in rows],
            "memory_used_bytes": [s.memory_used_bytes for s in rows],
        }
        return pa.Table.from_pydict(columns, schema=schema)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write the timeseries sidecar through the one write path (``llenergymeasure.files``)."""
        from llenergymeasure.files import write_table

        return write_table(Path(path), self.to_table())
