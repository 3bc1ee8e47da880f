"""GPU sensors: the ``GpuSensor`` protocol and its NVML implementation.

A sensor exposes the *selected* devices as positions ``0 .. device_count() - 1``. For
``NvmlSensor`` built from ``CUDA_VISIBLE_DEVICES`` that position is the CUDA ordinal the
inference engine sees (``cuda:0`` is the first visible device), which is also what Zeus calls
a GPU index. ``DeviceInfo.nvml_index`` keeps the physical NVML index.

``pynvml`` (package ``nvidia-ml-py``) is imported lazily, inside functions.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from llenergymeasure.energy.devices import (
    effective_cuda_visible_devices,
    import_pynvml,
    nvml_str,
    visible_nvml_indices,
)
from llenergymeasure.exceptions import BackendError

__all__ = [
    "DeviceInfo",
    "GpuSensor",
    "NvmlSensor",
    "SensorReading",
]

_T = TypeVar("_T")


@dataclass(frozen=True)
class DeviceInfo:
    """Static facts about one selected device.

    ``index`` is the sensor position (the value passed to ``read``), ``nvml_index`` the
    physical NVML index where known. ``power_limit_w`` is the enforced power limit.
    ``power_source`` names what ``SensorReading.power_w`` is: ``"nvml_power_instant"`` (the
    instantaneous power field) or ``"nvml_power_usage"`` (``nvmlDeviceGetPowerUsage``, which on
    Ampere and newer is a 1 s trailing average).
    """

    index: int
    uuid: str
    name: str
    total_memory_bytes: int | None
    power_limit_w: float | None
    supports_energy_counter: bool
    persistence_mode: bool | None
    nvml_index: int | None = None
    power_source: str = "nvml_power_usage"


@dataclass(frozen=True)
class SensorReading:
    """One reading of one device. ``t`` is ``time.monotonic()`` seconds (or the fake clock).

    Every field is ``None`` when the driver could not read it. ``energy_mj`` is the
    device's total-energy counter in millijoules (monotonic since driver load). ``power_w`` is
    the most immediate power reading the driver offers (see ``DeviceInfo.power_source``);
    ``power_avg_w`` is NVML's 1 s averaged power where the driver reports it separately.
    """

    t: float
    power_w: float | None = None
    power_avg_w: float | None = None
    energy_mj: int | None = None
    temperature_c: float | None = None
    sm_clock_mhz: int | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None


@runtime_checkable
class GpuSensor(Protocol):
    """Structural interface of a GPU sensor (NVML in production, fakes in tests)."""

    def device_count(self) -> int:
        """Number of selected devices."""
        ...

    def device_info(self, i: int) -> DeviceInfo:
        """Static information about selected device ``i``."""
        ...

    def read(self, i: int) -> SensorReading:
        """Read every live field of selected device ``i``; unreadable fields are ``None``."""
        ...

    def close(self) -> None:
        """Release the driver handle. Idempotent."""
        ...


# ---------------------------------------------------------------------------------------------
# NVML


class NvmlSensor:
    """``GpuSensor`` over NVML (``pynvml``).

    ``devices``: NVML indices to measure, in order. ``None`` selects the devices named by
    ``CUDA_VISIBLE_DEVICES`` (every device when unset), see ``visible_nvml_indices``.
    ``nvml`` lets tests pass a pynvml-like fake module. ``nvmlInit`` runs once, in the
    constructor; ``close()`` calls ``nvmlShutdown``.
    """

    def __init__(
        self,
        devices: Sequence[int] | None = None,
        *,
        nvml: Any | None = None,
        cuda_visible_devices: str | None = None,
        use_env: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml if nvml is not None else self._load()
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            raise BackendError(
                f"NVML initialisation failed: {exc}",
                hint="no NVIDIA GPU/driver visible; check `nvidia-smi`",
            ) from exc
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            if devices is None:
                uuids = [
                    nvml_str(self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(count)
                ]
                env = effective_cuda_visible_devices(cuda_visible_devices, use_env=use_env)
                selected = visible_nvml_indices(env, uuids)
            else:
                selected = list(devices)
                for idx in selected:
                    if not 0 <= idx < count:
                        raise BackendError(
                            f"NVML device index {idx} out of range (found {count} device(s))"
                        )
            self._nvml_indices = selected
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in selected]
            self._power_fields = [self._probe_power_fields(h) for h in self._handles]
        except BaseException:
            self.close()
            raise
        self._info: dict[int, DeviceInfo] = {}

    def _probe_power_fields(self, handle: Any) -> tuple[int, ...]:
        """The power field ids this device answers: (instant, average), (instant,) or ().

        ``nvmlDeviceGetPowerUsage`` is a 1 s trailing average on Ampere and newer, so integrating
        it lags every change of load; the instantaneous field (NVML_FI_DEV_POWER_INSTANT) does
        not. Drivers without field support fall back to ``nvmlDeviceGetPowerUsage``.
        """
        instant = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", _FI_POWER_INSTANT)
        average = getattr(self._nvml, "NVML_FI_DEV_POWER_AVERAGE", _FI_POWER_AVERAGE)
        try:
            values = self._nvml.nvmlDeviceGetFieldValues(handle, [instant, average])
        except Exception:  # NVMLError, or bindings/driver without field values
            return ()
        if _field_mw(values[0]) is None:
            return ()
        return (instant, average) if _field_mw(values[1]) is not None else (instant,)

    @staticmethod
    def _load() -> Any:
        try:
            return import_pynvml()
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a hard dependency
            raise BackendError(
                "pynvml is not importable", hint='pip install "nvidia-ml-py"'
            ) from exc

    @property
    def nvml_indices(self) -> list[int]:
        """Physical NVML indices of the selected devices, in sensor order."""
        return list(self._nvml_indices)

    def device_count(self) -> int:
        """Number of selected devices."""
        return len(self._handles)

    def device_info(self, i: int) -> DeviceInfo:
        """Static facts of selected device ``i`` (cached)."""
        if i in self._info:
            return self._info[i]
        lib, handle = self._nvml, self._handles[i]
        mem = self._try(lambda: lib.nvmlDeviceGetMemoryInfo(handle))
        limit_mw = self._try(lambda: lib.nvmlDeviceGetEnforcedPowerLimit(handle))
        persistence = self._try(lambda: lib.nvmlDeviceGetPersistenceMode(handle))
        counter = self._try(lambda: lib.nvmlDeviceGetTotalEnergyConsumption(handle))
        info = DeviceInfo(
            index=i,
            uuid=nvml_str(self._try(lambda: lib.nvmlDeviceGetUUID(handle)) or f"nvml-{i}"),
            name=nvml_str(self._try(lambda: lib.nvmlDeviceGetName(handle)) or "unknown"),
            total_memory_bytes=int(mem.total) if mem is not None else None,
            power_limit_w=float(limit_mw) / 1000.0 if limit_mw is not None else None,
            supports_energy_counter=counter is not None,
            persistence_mode=bool(persistence) if persistence is not None else None,
            nvml_index=self._nvml_indices[i],
            power_source="nvml_power_instant" if self._power_fields[i] else "nvml_power_usage",
        )
        self._info[i] = info
        return info

    def read(self, i: int) -> SensorReading:
        """Read all live fields of selected device ``i``; NVML errors give ``None`` fields."""
        lib, handle = self._nvml, self._handles[i]
        t = self._clock()
        energy = self._try(lambda: lib.nvmlDeviceGetTotalEnergyConsumption(handle))
        power_mw: float | None = None
        avg_mw: float | None = None
        fields = self._power_fields[i]
        if fields:
            values = self._try(lambda: lib.nvmlDeviceGetFieldValues(handle, list(fields)))
            if values is not None:
                power_mw = _field_mw(values[0])
                avg_mw = _field_mw(values[1]) if len(fields) > 1 else None
        if power_mw is None:
            power_mw = self._try(lambda: lib.nvmlDeviceGetPowerUsage(handle))
        temp = self._try(lambda: lib.nvmlDeviceGetTemperature(handle, lib.NVML_TEMPERATURE_GPU))
        clock = self._try(lambda: lib.nvmlDeviceGetClockInfo(handle, lib.NVML_CLOCK_SM))
        util = self._try(lambda: lib.nvmlDeviceGetUtilizationRates(handle))
        mem = self._try(lambda: lib.nvmlDeviceGetMemoryInfo(handle))
        return SensorReading(
            t=t,
            power_w=float(power_mw) / 1000.0 if power_mw is not None else None,
            power_avg_w=float(avg_mw) / 1000.0 if avg_mw is not None else None,
            energy_mj=int(energy) if energy is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            sm_clock_mhz=int(clock) if clock is not None else None,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
        )

    def close(self) -> None:
        """Shut NVML down (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlSensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _try(self, fn: Callable[[], _T]) -> _T | None:
        try:
            return fn()
        except self._nvml.NVMLError:
            return None


#: NVML field ids (nvml.h) for when the bindings predate them.
_FI_POWER_AVERAGE = 185
_FI_POWER_INSTANT = 186

#: c_nvmlFieldValue_t.valueType -> member of its ``value`` union.
_VALUE_MEMBERS = dict(enumerate(["dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal"]))


def _field_mw(value: Any) -> float | None:
    """A power field's reading (mW), or ``None`` where the driver returned an error for it."""
    if getattr(value, "nvmlReturn", 1) != 0:
        return None
    member = _VALUE_MEMBERS.get(int(getattr(value, "valueType", 1)), "uiVal")
    reading = getattr(value.value, member, None)
    return float(reading) if reading is not None else None
