"""CodeCarbon energy backend: adapter over ``codecarbon.OfflineEmissionsTracker``.

Written against codecarbon 2.3 - 3.x: ``OfflineEmissionsTracker(country_iso_code=..., ...)``,
``start()``, ``stop()`` (returns kg CO2eq) and ``tracker.final_emissions_data`` (an
``EmissionsData`` with ``duration`` in s and ``gpu_energy`` / ``energy_consumed`` in kWh).
The offline tracker makes no network calls. llem reports the GPU energy only (comparable with
the other backends); CodeCarbon's CPU+GPU+RAM total is kept in the notes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from llenergymeasure.energy.base import EnergyMeasurement, distribution_version
from llenergymeasure.exceptions import BackendError

__all__ = ["CodeCarbonEnergyBackend", "codecarbon_importable"]

CODECARBON_INSTALL_HINT = 'pip install "llenergymeasure[codecarbon]"'
J_PER_KWH = 3.6e6


def codecarbon_importable() -> bool:
    """True when ``codecarbon`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("codecarbon") is not None
    except (ImportError, ValueError):
        return False


def _default_tracker_factory(**kwargs: Any) -> Any:
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError as exc:
        raise BackendError("CodeCarbon is not installed", hint=CODECARBON_INSTALL_HINT) from exc
    return OfflineEmissionsTracker(**kwargs)


class CodeCarbonEnergyBackend:
    """Energy from CodeCarbon's offline tracker (GPU energy in kWh -> J).

    ``country_iso_code`` only affects CodeCarbon's own CO2 figure, which llem does not use.
    ``tracker_factory(**kwargs)`` builds the tracker (tests inject a fake); a fresh tracker is
    made for every window because a CodeCarbon tracker cannot be restarted cleanly.
    """

    name = "codecarbon"

    def __init__(
        self,
        country_iso_code: str = "USA",
        *,
        measure_power_secs: float = 1.0,
        gpu_ids: list[int] | None = None,
        tracker_factory: Callable[..., Any] | None = None,
        available: Callable[[], bool] | None = None,
    ) -> None:
        self.country_iso_code = country_iso_code
        self.measure_power_secs = measure_power_secs
        self.gpu_ids = gpu_ids
        self._factory = tracker_factory or _default_tracker_factory
        self._available = available
        self._tracker: Any = None
        self.last_emissions_data: Any = None

    def version(self) -> str | None:
        """Installed CodeCarbon version."""
        return distribution_version("codecarbon")

    def is_available(self) -> bool:
        """CodeCarbon importable (or the injected check)."""
        if self._available is not None:
            return self._available()
        return codecarbon_importable()

    def tracker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments passed to the tracker factory."""
        kwargs: dict[str, Any] = {
            "country_iso_code": self.country_iso_code,
            "measure_power_secs": self.measure_power_secs,
            "project_name": "llem",
            "save_to_file": False,
            "log_level": "error",
        }
        if self.gpu_ids is not None:
            kwargs["gpu_ids"] = self.gpu_ids
        return kwargs

    def begin(self) -> None:
        """Create a tracker and start it."""
        if self._tracker is not None:
            raise BackendError("CodeCarbonEnergyBackend.begin() called twice without end()")
        tracker = self._factory(**self.tracker_kwargs())
        tracker.start()
        self._tracker = tracker

    def end(self) -> EnergyMeasurement:
        """Stop the tracker and convert its kWh figures."""
        if self._tracker is None:
            raise BackendError("CodeCarbonEnergyBackend.end() called without begin()")
        tracker, self._tracker = self._tracker, None
        tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        self.last_emissions_data = data  # its cpu/ram energy, for energy.components
        notes: list[str] = ["CodeCarbon gives no per-device breakdown"]
        if data is None:
            return EnergyMeasurement(
                backend=self.name,
                backend_version=self.version(),
                available=False,
                method="unavailable",
                total_energy_j=None,
                duration_s=0.0,
                notes=[*notes, "CodeCarbon returned no emissions data"],
            )
        gpu_kwh = getattr(data, "gpu_energy", None)
        all_kwh = getattr(data, "energy_consumed", None)
        total = float(gpu_kwh) * J_PER_KWH if gpu_kwh is not None else None
        if all_kwh is not None:
            notes.append(
                f"CodeCarbon energy_consumed (CPU+GPU+RAM): {float(all_kwh) * J_PER_KWH:.3f} J"
            )
        if total == 0.0:
            notes.append("CodeCarbon reported zero GPU energy: did it detect the GPU?")
        return EnergyMeasurement(
            backend=self.name,
            backend_version=self.version(),
            available=total is not None,
            method="codecarbon" if total is not None else "unavailable",
            total_energy_j=total,
            duration_s=float(getattr(data, "duration", 0.0) or 0.0),
            notes=notes,
        )
