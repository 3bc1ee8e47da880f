"""Choose the energy backend from the machine-level setting ``measurement.energy_backend``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

from llenergymeasure.energy.base import EnergyBackend
from llenergymeasure.energy.codecarbon_backend import (
    CODECARBON_INSTALL_HINT,
    CodeCarbonEnergyBackend,
    codecarbon_importable,
)
from llenergymeasure.energy.devices import nvml_available
from llenergymeasure.energy.null_backend import NullEnergyBackend
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.zeus_backend import (
    ZEUS_INSTALL_HINT,
    ZeusEnergyBackend,
    zeus_importable,
)
from llenergymeasure.exceptions import BackendError, ConfigError

__all__ = ["BackendProbes", "EnergyBackendChoice", "select_energy_backend"]

EnergyBackendChoice = Literal["auto", "nvml", "zeus", "codecarbon", "none"]

NO_GPU_MESSAGE = "no NVIDIA GPU/driver visible"


@dataclass(frozen=True)
class BackendProbes:
    """Availability checks used by ``select_energy_backend`` (inject fakes in tests)."""

    zeus_importable: Callable[[], bool] = field(default=zeus_importable)
    codecarbon_importable: Callable[[], bool] = field(default=codecarbon_importable)
    gpu_available: Callable[[], bool] = field(default=nvml_available)


def select_energy_backend(
    choice: EnergyBackendChoice = "auto",
    *,
    sensor: GpuSensor | None = None,
    sampler: EnergySampler | None = None,
    probes: BackendProbes | None = None,
) -> EnergyBackend:
    """Return the backend for ``choice``.

    ``auto``: Zeus if importable and a GPU is present, else NVML if a GPU is present, else
    CodeCarbon if importable, else the null backend (energy not measured). An explicit
    choice that cannot work raises ``BackendError`` naming the backend and the fix. With an
    injected ``sensor``, "a GPU is present" means the sensor has at least one device.
    """
    if choice not in get_args(EnergyBackendChoice):
        raise ConfigError(
            f"unknown energy backend {choice!r}; valid values: "
            + ", ".join(get_args(EnergyBackendChoice))
        )
    p = probes or BackendProbes()

    def gpu() -> bool:
        if sensor is not None:
            try:
                return sensor.device_count() >= 1
            except Exception:
                return False
        return p.gpu_available()

    if choice == "none":
        return NullEnergyBackend()
    if choice == "nvml":
        if not gpu():
            raise BackendError(f"energy backend 'nvml' is not available: {NO_GPU_MESSAGE}")
        return NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    if choice == "zeus":
        if not p.zeus_importable():
            raise BackendError(
                "energy backend 'zeus' is not available: Zeus is not installed",
                hint=ZEUS_INSTALL_HINT,
            )
        if not gpu():
            raise BackendError(f"energy backend 'zeus' is not available: {NO_GPU_MESSAGE}")
        return ZeusEnergyBackend()
    if choice == "codecarbon":
        if not p.codecarbon_importable():
            raise BackendError(
                "energy backend 'codecarbon' is not available: CodeCarbon is not installed",
                hint=CODECARBON_INSTALL_HINT,
            )
        return CodeCarbonEnergyBackend()

    # auto
    has_gpu = gpu()
    if has_gpu and p.zeus_importable():
        return ZeusEnergyBackend()
    if has_gpu:
        return NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    if p.codecarbon_importable():
        return CodeCarbonEnergyBackend()
    return NullEnergyBackend()
