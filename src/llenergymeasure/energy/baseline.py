"""Idle power baseline: measure it, and cache it per process (optionally on disk) with a TTL."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.exceptions import BackendError

__all__ = [
    "DEFAULT_BASELINE_TTL_S",
    "BaselineCache",
    "BaselineMeasurement",
    "default_baseline_cache",
    "get_or_measure_baseline",
    "measure_idle_baseline",
]

DEFAULT_BASELINE_TTL_S = 3600.0


class BaselineMeasurement(BaseModel):
    """Idle power before the model is loaded.

    ``power_w`` is the sum over devices of each device's mean polled power.
    ``from_cache``/``cache_age_s`` record whether this value was reused (provenance).
    """

    model_config = {"extra": "forbid"}

    power_w: float = Field(
        description="Idle power, W: sum over devices of each device's mean polled power."
    )
    per_device_power_w: list[float] = Field(description="Mean idle power of each device, W.")
    device_uuids: list[str] = Field(
        default_factory=list, description="UUIDs of the devices, in order."
    )
    duration_s: float = Field(description="Seconds of polling.")
    interval_ms: float = Field(description="Polling interval, milliseconds.")
    n_samples: int = Field(description="Power samples taken.")
    method: Literal["nvml_power_poll"] = Field(
        "nvml_power_poll", description="How idle power was measured."
    )
    measured_at_utc: datetime = Field(description="When it was measured (UTC).")
    from_cache: bool = Field(
        False,
        description="True when reused from the baseline cache instead of measured for this run.",
    )
    cache_age_s: float | None = Field(
        None, description="Age of the cached value when reused, seconds."
    )


def measure_idle_baseline(
    sensor: GpuSensor,
    duration_s: float,
    interval_ms: float = 100.0,
    devices: Sequence[int] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BaselineMeasurement:
    """Poll power of ``devices`` (default all) for ``duration_s`` and average it (blocking).

    Per device: arithmetic mean of its valid power samples (uniform sampling). Total: sum of
    the per-device means. ``clock``/``sleep`` are injectable so tests run instantly. Raises
    ``BackendError`` if a device gives no power reading at all.
    """
    if duration_s < 0 or interval_ms <= 0:
        raise ValueError("duration_s must be >= 0 and interval_ms > 0")
    idx = list(devices) if devices is not None else list(range(sensor.device_count()))
    if not idx:
        raise BackendError("idle baseline: no GPU to measure")
    uuids = [sensor.device_info(i).uuid for i in idx]
    interval = interval_ms / 1000.0
    powers: dict[int, list[float]] = {i: [] for i in idx}
    n_samples = 0
    eps = 1e-9 + interval * 1e-6  # float slack so 0.1 * 3 still counts as 0.3
    start = clock()
    deadline = start + duration_s
    tick = 0
    while True:
        for i in idx:
            p = sensor.read(i).power_w
            if p is not None:
                powers[i].append(p)
        n_samples += 1
        tick += 1
        next_tick = start + tick * interval
        now = clock()
        if next_tick > deadline + eps or now > deadline + eps:
            break
        if next_tick > now:
            sleep(next_tick - now)
    missing = [i for i in idx if not powers[i]]
    if missing:
        raise BackendError(f"idle baseline: no power reading from device(s) {missing}")
    per_device = [sum(powers[i]) / len(powers[i]) for i in idx]
    return BaselineMeasurement(
        power_w=sum(per_device),
        per_device_power_w=per_device,
        device_uuids=uuids,
        duration_s=clock() - start,
        interval_ms=interval_ms,
        n_samples=n_samples,
        measured_at_utc=datetime.now(timezone.utc),
    )


class _Entry(BaseModel):
    model_config = {"extra": "forbid"}

    key: str
    stored_at: float
    measurement: BaselineMeasurement


class _CacheFile(BaseModel):
    model_config = {"extra": "forbid"}

    entries: list[_Entry] = Field(default_factory=list)


class BaselineCache:
    """Baselines keyed by (device UUIDs, requested duration), valid for ``ttl_s`` seconds.

    In memory by default; with ``path`` the cache is also a JSON file (read on every lookup,
    written atomically on every store) so that separate processes of a study share it. A
    missing or corrupt file counts as empty. ``clock`` is wall time (``time.time``) so that
    ages are comparable across processes.
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_BASELINE_TTL_S,
        *,
        path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            # Its folder is made now, not at each save: a folder that vanishes later (a study's
            # directory deleted mid-study) is not recreated by a cache write.
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @staticmethod
    def key(device_uuids: Sequence[str], duration_s: float, context: str = "") -> str:
        """Cache key of a device set, requested duration and idle state (``context``).

        ``context`` names what was up while the devices idled (``""``: nothing of llem's,
        before an engine loads; an online run names its server): baselines of different idle
        states are never interchanged.
        """
        key = f"{','.join(device_uuids)}|{float(duration_s):.3f}"
        return f"{key}|{context}" if context else key

    def get(
        self,
        device_uuids: Sequence[str],
        duration_s: float,
        *,
        ttl_s: float | None = None,
        context: str = "",
    ) -> BaselineMeasurement | None:
        """The cached baseline marked ``from_cache=True`` with its age, or ``None``."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        k = self.key(device_uuids, duration_s, context)
        with self._lock:
            if self.path is not None:
                self._load()
            entry = self._entries.get(k)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        if age > ttl or age < 0:
            return None
        return entry.measurement.model_copy(update={"from_cache": True, "cache_age_s": age})

    def put(
        self,
        device_uuids: Sequence[str],
        duration_s: float,
        measurement: BaselineMeasurement,
        *,
        context: str = "",
    ) -> None:
        """Store a fresh measurement (saved to ``path`` when set)."""
        fresh = measurement.model_copy(update={"from_cache": False, "cache_age_s": None})
        entry = _Entry(
            key=self.key(device_uuids, duration_s, context),
            stored_at=self._clock(),
            measurement=fresh,
        )
        with self._lock:
            if self.path is not None:
                self._load()
            self._entries[entry.key] = entry
            if self.path is not None:
                self._save()

    def clear(self) -> None:
        """Forget every entry (and delete the file, if any)."""
        with self._lock:
            self._entries.clear()
            if self.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = _CacheFile.model_validate_json(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError):
            return
        for e in data.entries:
            current = self._entries.get(e.key)
            if current is None or e.stored_at >= current.stored_at:
                self._entries[e.key] = e

    def _save(self) -> None:
        """Write the cache file (its folder must exist: a vanished study folder is not
        recreated); a cache that cannot be written costs a baseline later, not the run."""
        from llenergymeasure.exceptions import UnsafeWriteError
        from llenergymeasure.files import write_json

        assert self.path is not None
        payload = _CacheFile(entries=list(self._entries.values())).model_dump(mode="json")
        with contextlib.suppress(OSError, UnsafeWriteError):
            write_json(self.path, payload, base=self.path.parent)


_DEFAULT_CACHE = BaselineCache()


def default_baseline_cache() -> BaselineCache:
    """The per-process default cache used by ``get_or_measure_baseline``."""
    return _DEFAULT_CACHE


def get_or_measure_baseline(
    sensor: GpuSensor,
    duration_s: float,
    interval_ms: float = 100.0,
    devices: Sequence[int] | None = None,
    *,
    cache: BaselineCache | None = None,
    ttl_s: float | None = None,
    measure: Callable[..., BaselineMeasurement] = measure_idle_baseline,
    context: str = "",
) -> BaselineMeasurement:
    """Cached baseline for these devices and duration if younger than the TTL, else measure.

    ``cache`` defaults to the per-process cache; ``ttl_s`` overrides the cache's TTL for this
    lookup. ``measure`` is called as ``measure(sensor, duration_s, interval_ms, devices)``.
    ``context`` names the idle state (see ``BaselineCache.key``): only a baseline of the same
    state is reused.
    """
    store = cache if cache is not None else _DEFAULT_CACHE
    idx = list(devices) if devices is not None else list(range(sensor.device_count()))
    uuids = [sensor.device_info(i).uuid for i in idx]
    hit = store.get(uuids, duration_s, ttl_s=ttl_s, context=context)
    if hit is not None:
        return hit
    fresh = measure(sensor, duration_s, interval_ms, idx)
    store.put(uuids, duration_s, fresh, context=context)
    return fresh
