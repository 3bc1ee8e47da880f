"""The ``EnergyBackend`` protocol and the result models every backend returns."""

from __future__ import annotations

from importlib import metadata
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

__all__ = [
    "DeviceEnergy",
    "EnergyBackend",
    "EnergyMeasurement",
    "EnergyMethod",
    "distribution_version",
]

EnergyMethod = Literal[
    "nvml_counter", "nvml_power_integration", "zeus", "codecarbon", "unavailable"
]


class DeviceEnergy(BaseModel):
    """Energy of one device over the measurement window.

    ``energy_j`` is the value used for the total (counter where it worked, else the poll
    integral); ``counter_energy_j`` and ``poll_energy_j`` keep both estimates when known.
    ``method`` is an ``EnergyMethod`` value. ``poll_power_source`` says which power reading
    was integrated (``DeviceInfo.power_source``); ``poll_avg_energy_j`` integrates NVML's 1 s
    averaged reading too, where the driver gives both, to show how much its lag costs.
    """

    model_config = {"extra": "forbid"}

    device_index: int = Field(description="NVML index of the device.")
    device_uuid: str | None = Field(None, description="GPU UUID.")
    device_name: str | None = Field(None, description="GPU model name.")
    energy_j: float | None = Field(
        description=(
            "Energy of this device over the window, J (counter where it worked, else the poll "
            "integral)."
        )
    )
    method: str = Field(
        description=(
            "How energy_j was obtained (nvml_counter, nvml_power_integration, zeus, codecarbon, "
            "unavailable)."
        )
    )
    counter_energy_j: float | None = Field(
        None, description="Total-energy counter difference over the window, J."
    )
    poll_energy_j: float | None = Field(
        None, description="Integral of the polled power over the window, J."
    )
    poll_power_source: str | None = Field(
        None, description="Which NVML power reading was polled (instantaneous or 1 s average)."
    )
    poll_avg_energy_j: float | None = Field(
        None,
        description=(
            "Integral of NVML's 1 s averaged power reading, J, where the driver gives both "
            "readings (shows the lag's cost)."
        ),
    )


class EnergyMeasurement(BaseModel):
    """What an energy backend measured between ``begin()`` and ``end()``.

    ``total_energy_j`` sums the devices (``None`` when energy was not measured for every
    device; ``not_measured_reason`` then says why). ``counter_vs_poll_diff_pct`` = (poll -
    counter) / counter x 100 over the devices that have both. A backend never reports 0 J for
    a device it cannot see: that is "not measured", not a measurement of zero.
    """

    model_config = {"extra": "forbid"}

    backend: str
    backend_version: str | None = None
    available: bool
    method: EnergyMethod
    total_energy_j: float | None
    duration_s: float
    devices: list[DeviceEnergy] = Field(default_factory=list)
    poll_energy_j: float | None = None
    counter_vs_poll_diff_pct: float | None = None
    poll_power_source: str | None = None
    notes: list[str] = Field(default_factory=list)
    not_measured_reason: str | None = None


@runtime_checkable
class EnergyBackend(Protocol):
    """Structural interface of an energy backend: ``begin()`` then ``end()`` per window."""

    name: str

    def version(self) -> str | None:
        """Version of the underlying library, if any."""
        ...

    def is_available(self) -> bool:
        """Whether this backend can measure on this machine now."""
        ...

    def begin(self) -> None:
        """Open the measurement window."""
        ...

    def end(self) -> EnergyMeasurement:
        """Close the window and return its measurement."""
        ...


def distribution_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` that is installed, else ``None``."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
