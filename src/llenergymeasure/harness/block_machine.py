"""What a ``measure()`` block reads of the machine (``Machine``: injected fakes in tests): the
GPUs this process sees, the energy backend runs would choose, and the device sync at the
window's edges."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from llenergymeasure.energy.base import EnergyBackend
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.energy.rapl import RaplReader
from llenergymeasure.energy.sensors import DeviceInfo, GpuSensor, SensorReading
from llenergymeasure.energy.window import WindowDevice
from llenergymeasure.harness.settings import MeasurementSettings

__all__ = [
    "Machine",
    "SelectedGpus",
    "TorchCudaIfLoaded",
    "open_visible_gpus",
    "runs_energy_backend",
]


def open_visible_gpus() -> GpuSensor | None:
    """NVML over the GPUs this process sees (CUDA ordinal order), or None without NVML."""
    from llenergymeasure.energy.devices import nvml_available
    from llenergymeasure.energy.sensors import NvmlSensor

    return NvmlSensor() if nvml_available() else None


def runs_energy_backend(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
    """The energy backend a run would use: ``harness.orchestrator.energy_backend_for``."""
    from llenergymeasure.harness.orchestrator import energy_backend_for

    return energy_backend_for(settings, sensor)


@dataclass(frozen=True)
class Machine:
    """What a ``measure()`` block reads of the machine; tests inject fakes.

    ``open_sensor``: opens the sensor over every visible GPU, position = CUDA ordinal (None:
    no GPU); the block closes it. ``choose_backend``: the energy backend over the sensor, as
    runs choose it. ``settings``: the machine-level settings (None: the user's
    effective settings at the block's start). ``rapl``: the host's RAPL reader (None: the
    machine's powercap tree). ``device``: synchronised at the window's edges (None: torch's
    CUDA devices, where torch already initialised CUDA). ``clock``: the sampler's clock;
    ``timer``: the clock of ``duration_s``; ``sleep``: the idle baseline's waits.
    ``baseline_cache``: where ``baseline="measure"`` keeps its baseline (None: this process's).
    """

    open_sensor: Callable[[], GpuSensor | None] = open_visible_gpus
    choose_backend: Callable[[MeasurementSettings, GpuSensor | None], EnergyBackend] = (
        runs_energy_backend
    )
    settings: MeasurementSettings | None = None
    rapl: RaplReader | None = None
    device: WindowDevice | None = None
    clock: Callable[[], float] = time.monotonic
    timer: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    baseline_cache: BaselineCache | None = None


class SelectedGpus:
    """A ``GpuSensor`` over some positions of another: position ``k`` is ``positions[k]``."""

    def __init__(self, sensor: GpuSensor, positions: Sequence[int]) -> None:
        self.sensor = sensor
        self.positions = list(positions)

    def device_count(self) -> int:
        return len(self.positions)

    def device_info(self, i: int) -> DeviceInfo:
        return replace(self.sensor.device_info(self.positions[i]), index=i)

    def read(self, i: int) -> SensorReading:
        return self.sensor.read(self.positions[i])

    def close(self) -> None:
        self.sensor.close()


class TorchCudaIfLoaded:
    """Syncs torch's CUDA devices, only where the process already imported torch and
    initialised CUDA (work queued elsewhere cannot be waited for; torch is never imported).

    ``ordinals``: the devices to sync (None: every device torch sees); a device on which torch
    holds no context is skipped, so that the sync never creates one.
    """

    def __init__(self, ordinals: Sequence[int] | None = None) -> None:
        self.ordinals = list(ordinals) if ordinals is not None else None

    def synchronize(self) -> None:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None) if torch is not None else None
        if torch is None or cuda is None or not cuda.is_initialized():
            return
        ordinals = self.ordinals if self.ordinals is not None else range(cuda.device_count())
        has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
        for i in ordinals:
            if has_context is None or has_context(i):
                cuda.synchronize(i)

    def reset_peak_memory(self) -> None:
        """Not used by a block (nothing of its memory is reported)."""
