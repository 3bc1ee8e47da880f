"""Test doubles for the energy layer, injected through the protocols (no deep patching).

Importable without any GPU library: ``FakeGpuSensor`` (a ``GpuSensor``), ``FakeClock``,
``FakeNvmlModule`` (a pynvml-like module for ``NvmlSensor(nvml=...)``), ``FakeZeusMonitor``,
``FakeCodeCarbonTracker`` and ``FakeEnergyBackend`` (an ``EnergyBackend``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from llenergymeasure.energy.base import DeviceEnergy, EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.sensors import DeviceInfo, SensorReading

__all__ = [
    "FakeClock",
    "FakeCodeCarbonTracker",
    "FakeEnergyBackend",
    "FakeGpuSensor",
    "FakeNvmlModule",
    "FakeZeusMeasurement",
    "FakeZeusMonitor",
]


class FakeClock:
    """A manual clock: ``clock()`` / ``monotonic()`` / ``time()`` read it, ``sleep`` advances."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def monotonic(self) -> float:
        """Current fake time."""
        return self()

    def time(self) -> float:
        """Current fake time (wall-clock flavour)."""
        return self()

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Advance instead of sleeping."""
        self.advance(max(0.0, seconds))


class _Script:
    """Yields scripted values in order, repeating the last one when exhausted."""

    def __init__(self, values: Sequence[Any]) -> None:
        if not values:
            raise ValueError("a script needs at least one value")
        self._values = list(values)
        self._pos = 0

    def next(self) -> Any:
        value = self._values[min(self._pos, len(self._values) - 1)]
        self._pos += 1
        return value


class FakeGpuSensor:
    """Scriptable ``GpuSensor``.

    By default each device draws a constant ``power_w`` and its energy counter is exactly
    ``energy_offset_mj + power * (t - t_start) * 1000`` (so counter and poll agree).
    ``power_script[i]`` / ``energy_script[i]`` / ``power_avg_script[i]`` replace those with
    values returned one per ``read(i)`` (the last repeats; ``power_avg_w`` is None without one).
    ``supports_energy_counter=False`` makes ``energy_mj`` None.
    ``fail_after_reads=n`` makes every read after the n-th raise ``error``. ``clock`` defaults
    to ``time.monotonic``; pass a ``FakeClock`` for deterministic times.
    """

    def __init__(
        self,
        n_devices: int = 1,
        *,
        power_w: float | Sequence[float] = 100.0,
        clock: Callable[[], float] = time.monotonic,
        supports_energy_counter: bool | Sequence[bool] = True,
        energy_offset_mj: int = 5_000_000,
        power_script: Mapping[int, Sequence[float | None]] | None = None,
        energy_script: Mapping[int, Sequence[int | None]] | None = None,
        power_avg_script: Mapping[int, Sequence[float | None]] | None = None,
        power_source: str = "nvml_power_usage",
        uuids: Sequence[str] | None = None,
        name: str = "Fake GPU 80GB",
        power_limit_w: float | None = 700.0,
        persistence_mode: bool | None = True,
        temperature_c: float = 40.0,
        fail_after_reads: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.n_devices = n_devices
        self._power = _per_device(power_w, n_devices)
        self._counter = _per_device(supports_energy_counter, n_devices)
        self.clock = clock
        self.t_start = clock()
        self.energy_offset_mj = energy_offset_mj
        self._power_script = {i: _Script(v) for i, v in (power_script or {}).items()}
        self._energy_script = {i: _Script(v) for i, v in (energy_script or {}).items()}
        self._power_avg_script = {i: _Script(v) for i, v in (power_avg_script or {}).items()}
        self.power_source = power_source
        self.uuids = (
            list(uuids)
            if uuids is not None
            else [f"GPU-fake{i:04d}-0000-0000-0000-000000000000" for i in range(n_devices)]
        )
        self.name = name
        self.power_limit_w = power_limit_w
        self.persistence_mode = persistence_mode
        self.temperature_c = temperature_c
        self.fail_after_reads = fail_after_reads
        self.error = error or RuntimeError("fake sensor failure")
        self.reads: list[tuple[int, float]] = []
        self.closed = False
        self._lock = threading.Lock()

    def device_count(self) -> int:
        """Number of fake devices."""
        return self.n_devices

    def device_info(self, i: int) -> DeviceInfo:
        """Static facts of fake device ``i``."""
        self._check(i)
        return DeviceInfo(
            index=i,
            uuid=self.uuids[i],
            name=self.name,
            total_memory_bytes=80 * 1024**3,
            power_limit_w=self.power_limit_w,
            supports_energy_counter=bool(self._counter[i]),
            persistence_mode=self.persistence_mode,
            nvml_index=i,
            power_source=self.power_source,
        )

    def read(self, i: int) -> SensorReading:
        """Scripted or constant-power reading of device ``i`` at ``clock()``."""
        self._check(i)
        with self._lock:
            if self.fail_after_reads is not None and len(self.reads) >= self.fail_after_reads:
                raise self.error
            t = self.clock()
            self.reads.append((i, t))
            if i in self._power_script:
                power = self._power_script[i].next()
            else:
                power = float(self._power[i])
            power_avg = self._power_avg_script[i].next() if i in self._power_avg_script else None
            energy: int | None
            if not self._counter[i]:
                energy = None
            elif i in self._energy_script:
                energy = self._energy_script[i].next()
            else:
                energy = self.energy_offset_mj + round(
                    float(self._power[i]) * (t - self.t_start) * 1000.0
                )
        return SensorReading(
            t=t,
            power_w=power,
            power_avg_w=power_avg,
            energy_mj=energy,
            temperature_c=self.temperature_c,
            sm_clock_mhz=1980,
            utilization_pct=50.0,
            memory_used_bytes=1024**3,
        )

    def close(self) -> None:
        """Mark closed."""
        self.closed = True

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n_devices:
            raise IndexError(f"fake device {i} out of range")


def _per_device(value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} per-device values, got {len(value)}")
        return list(value)
    return [value] * n


# ---------------------------------------------------------------------------------------------
# pynvml-like module


class FakeNVMLError(Exception):
    """Stand-in for ``pynvml.NVMLError``."""


@dataclass
class FakeNvmlDevice:
    """One device of ``FakeNvmlModule``; a field set to ``None`` raises ``NVMLError``."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int | None = 1_000_000
    power_mw: int | None = 73_000
    temperature_c: int | None = 35
    sm_clock_mhz: int | None = 1980
    utilization_pct: int | None = 0
    memory_used: int | None = 500 * 1024**2
    memory_total: int = 80 * 1024**3
    power_limit_mw: int | None = 700_000
    persistence: int | None = 1
    #: Answer NVML_FI_DEV_POWER_INSTANT / _AVERAGE field queries (as Ampere+ drivers do).
    power_fields: bool = False
    power_instant_mw: int | None = None  # instant field; defaults to power_mw


@dataclass
class FakeNvmlModule:
    """The subset of pynvml that ``NvmlSensor`` and ``nvml_available`` use."""

    devices: list[FakeNvmlDevice] = field(default_factory=list)
    init_error: bool = False
    init_calls: int = 0
    shutdown_calls: int = 0

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FI_DEV_POWER_AVERAGE = 185
    NVML_FI_DEV_POWER_INSTANT = 186

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError("Driver Not Loaded")
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeNvmlDevice:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, h: FakeNvmlDevice) -> str:
        return h.uuid

    def nvmlDeviceGetName(self, h: FakeNvmlDevice) -> str:
        return h.name

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeNvmlDevice) -> int:
        return _or_raise(h.energy_mj)

    def nvmlDeviceGetPowerUsage(self, h: FakeNvmlDevice) -> int:
        return _or_raise(h.power_mw)

    def nvmlDeviceGetFieldValues(self, h: FakeNvmlDevice, field_ids: list[int]) -> list[Any]:
        if not h.power_fields:
            raise FakeNVMLError("Function Not Found")
        readings = {
            self.NVML_FI_DEV_POWER_INSTANT: (
                h.power_instant_mw if h.power_instant_mw is not None else h.power_mw
            ),
            self.NVML_FI_DEV_POWER_AVERAGE: h.power_mw,
        }
        out = []
        for fid in field_ids:
            value = readings.get(fid)
            out.append(
                SimpleNamespace(
                    fieldId=fid,
                    nvmlReturn=0 if value is not None else 3,  # 3: NVML_ERROR_NOT_SUPPORTED
                    valueType=1,
                    value=SimpleNamespace(uiVal=value or 0),
                )
            )
        return out

    def nvmlDeviceGetTemperature(self, h: FakeNvmlDevice, sensor: int) -> int:
        return _or_raise(h.temperature_c)

    def nvmlDeviceGetClockInfo(self, h: FakeNvmlDevice, clock_type: int) -> int:
        return _or_raise(h.sm_clock_mhz)

    def nvmlDeviceGetUtilizationRates(self, h: FakeNvmlDevice) -> Any:
        return SimpleNamespace(gpu=_or_raise(h.utilization_pct), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: FakeNvmlDevice) -> Any:
        used = _or_raise(h.memory_used)
        return SimpleNamespace(total=h.memory_total, used=used, free=h.memory_total - used)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeNvmlDevice) -> int:
        return _or_raise(h.power_limit_mw)

    def nvmlDeviceGetPersistenceMode(self, h: FakeNvmlDevice) -> int:
        return _or_raise(h.persistence)


def _or_raise(value: Any) -> Any:
    if value is None:
        raise FakeNVMLError("Not Supported")
    return value


# ---------------------------------------------------------------------------------------------
# Zeus and CodeCarbon


@dataclass
class FakeZeusMeasurement:
    """Mirror of ``zeus.monitor.energy.Measurement`` (time in s, gpu_energy index -> J)."""

    time: float
    gpu_energy: dict[int, float]


class FakeZeusMonitor:
    """Mirror of ``ZeusMonitor``'s window API; returns scripted measurements."""

    def __init__(
        self,
        gpu_indices: list[int] | None = None,
        *,
        energy_j: Mapping[int, float] | None = None,
        time_s: float = 2.0,
    ) -> None:
        self.gpu_indices = gpu_indices if gpu_indices is not None else [0]
        self.energy_j = (
            dict(energy_j) if energy_j is not None else {i: 100.0 for i in self.gpu_indices}
        )
        self.time_s = time_s
        self.open_windows: dict[str, bool] = {}
        self.calls: list[tuple[str, str, bool]] = []

    def begin_window(self, key: str, sync_execution: bool = True) -> None:
        if key in self.open_windows:
            raise ValueError(f"Measurement window '{key}' already exists")
        self.open_windows[key] = True
        self.calls.append(("begin", key, sync_execution))

    def end_window(
        self, key: str, sync_execution: bool = True, cancel: bool = False
    ) -> FakeZeusMeasurement:
        if self.open_windows.pop(key, None) is None:
            raise ValueError(f"Measurement window '{key}' does not exist")
        self.calls.append(("end", key, sync_execution))
        return FakeZeusMeasurement(time=self.time_s, gpu_energy=dict(self.energy_j))


@dataclass
class FakeEmissionsData:
    """The ``EmissionsData`` fields the adapter reads (energies in kWh).

    ``gpu_count``: GPUs CodeCarbon tracked (0 on a machine where it sees none; it then
    reports ``gpu_energy`` 0).
    """

    duration: float
    gpu_energy: float
    energy_consumed: float
    cpu_energy: float = 0.0
    ram_energy: float = 0.0
    gpu_count: int = 1


class FakeCodeCarbonTracker:
    """Mirror of ``OfflineEmissionsTracker``: ``start()``, ``stop()``, ``final_emissions_data``."""

    def __init__(
        self,
        *,
        gpu_kwh: float = 0.001,
        total_kwh: float = 0.0015,
        duration_s: float = 3.0,
        gpu_count: int = 1,
        cpu_kwh: float = 0.0,
        ram_kwh: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.kwargs = kwargs
        self._data = FakeEmissionsData(
            duration=duration_s,
            gpu_energy=gpu_kwh,
            energy_consumed=total_kwh,
            cpu_energy=cpu_kwh,
            ram_energy=ram_kwh,
            gpu_count=gpu_count,
        )
        self.final_emissions_data: FakeEmissionsData | None = None
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> float:
        self.stopped = True
        self.final_emissions_data = self._data
        return 0.0001


# ---------------------------------------------------------------------------------------------
# EnergyBackend


class FakeEnergyBackend:
    """An ``EnergyBackend`` returning a fixed measurement; counts its calls."""

    def __init__(
        self,
        total_energy_j: float | None = 500.0,
        *,
        duration_s: float = 5.0,
        name: str = "fake",
        available: bool = True,
        per_device_j: Sequence[float] | None = None,
    ) -> None:
        self.name = name
        self.total_energy_j = total_energy_j
        self.duration_s = duration_s
        self._available = available
        self.per_device_j = (
            list(per_device_j)
            if per_device_j is not None
            else ([total_energy_j] if total_energy_j is not None else [])
        )
        self.begin_calls = 0
        self.end_calls = 0

    def version(self) -> str | None:
        return "0.0-fake"

    def is_available(self) -> bool:
        return self._available

    def begin(self) -> None:
        self.begin_calls += 1

    def end(self) -> EnergyMeasurement:
        self.end_calls += 1
        return EnergyMeasurement(
            backend=self.name,
            backend_version=self.version(),
            available=self.total_energy_j is not None,
            method="nvml_counter" if self.total_energy_j is not None else "unavailable",
            total_energy_j=self.total_energy_j,
            duration_s=self.duration_s,
            devices=[
                DeviceEnergy(device_index=i, energy_j=e, method="nvml_counter")
                for i, e in enumerate(self.per_device_j)
            ],
        )


class SwitchingSensor:
    """Devices draw ``idle_w`` until ``load()`` and ``busy_w`` until ``idle()``.

    The energy counter integrates the drawn power exactly, like NVML's total-energy counter.
    """

    def __init__(self, n_devices: int = 2, idle_w: float = 50.0, busy_w: float = 250.0) -> None:
        self.n = n_devices
        self.idle_w, self.busy_w = idle_w, busy_w
        self.power = idle_w
        self._lock = threading.Lock()
        self._t = time.monotonic()
        self._energy_j = [1000.0] * n_devices

    def _advance(self) -> float:
        now = time.monotonic()
        for i in range(self.n):
            self._energy_j[i] += self.power * (now - self._t)
        self._t = now
        return now

    def load(self) -> None:
        with self._lock:
            self._advance()
            self.power = self.busy_w

    def idle(self) -> None:
        with self._lock:
            self._advance()
            self.power = self.idle_w

    def device_count(self) -> int:
        return self.n

    def device_info(self, i: int) -> DeviceInfo:
        return DeviceInfo(
            index=i,
            uuid=f"GPU-switch-{i}",
            name="Switching GPU",
            total_memory_bytes=80 << 30,
            power_limit_w=700.0,
            supports_energy_counter=True,
            persistence_mode=True,
        )

    def read(self, i: int) -> SensorReading:
        with self._lock:
            t = self._advance()
            return SensorReading(
                t=t,
                power_w=self.power,
                energy_mj=round(self._energy_j[i] * 1000),
                temperature_c=45.0,
                sm_clock_mhz=1500,
                utilization_pct=90.0,
                memory_used_bytes=1 << 30,
            )

    def close(self) -> None:
        pass


def idle_baseline(power_w: float = 50.0) -> BaselineMeasurement:
    """A one-device idle baseline of ``power_w`` watts, measured now (1 s, 10 samples)."""
    return BaselineMeasurement(
        power_w=power_w,
        per_device_power_w=[power_w],
        duration_s=1.0,
        interval_ms=100.0,
        n_samples=10,
        measured_at_utc=datetime.now(timezone.utc),
    )
