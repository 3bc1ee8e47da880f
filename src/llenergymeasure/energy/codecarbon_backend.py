"""CodeCarbon energy backend: adapter over ``codecarbon.OfflineEmissionsTracker``.

Written against codecarbon 2.3 - 3.x: ``OfflineEmissionsTracker(country_iso_code=..., ...)``,
``start()``, ``stop()`` (returns kg CO2eq) and ``tracker.final_emissions_data`` (an
``EmissionsData`` with ``duration`` in s and ``gpu_energy`` / ``energy_consumed`` in kWh).
The offline tracker makes no network calls. llem reports the GPU energy only (comparable with
the other backends); CodeCarbon's CPU+GPU+RAM total is kept in the notes.

CodeCarbon's own logging: it prints INFO lines through its own stderr handler, some of them
before its ``log_level`` takes effect. The tracker is therefore built with the ``codecarbon``
logger at ERROR, and afterwards its handler is removed and its records propagate to the
application's handlers (the ``llem`` command's stderr and log file).

CodeCarbon reports ``gpu_energy`` 0 for GPUs it does not track (a CPU-only machine: its
``EmissionsData.gpu_count`` is 0). That zero is not a measurement: the window's GPU energy is
then "not measured" (``total_energy_j`` None, with the reason), and CodeCarbon's CPU and RAM
estimates still reach ``energy.components`` (``last_emissions_data``), marked estimated.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from llenergymeasure.energy.base import EnergyMeasurement, distribution_version
from llenergymeasure.exceptions import BackendError
from llenergymeasure.install import extra_install_hint

__all__ = ["CodeCarbonEnergyBackend", "codecarbon_importable"]

CODECARBON_INSTALL_HINT = extra_install_hint("codecarbon")
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
    codecarbon_logger = logging.getLogger("codecarbon")
    codecarbon_logger.setLevel(logging.ERROR)  # its constructor logs before applying log_level
    try:
        return OfflineEmissionsTracker(**kwargs)
    finally:
        _route_codecarbon_logger(codecarbon_logger)


def _route_codecarbon_logger(codecarbon_logger: logging.Logger) -> None:
    """Drop the stderr handler CodeCarbon installs (again in every tracker's constructor) and
    let its records reach the application's handlers instead."""
    for handler in list(codecarbon_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            codecarbon_logger.removeHandler(handler)
    codecarbon_logger.propagate = True


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
                not_measured_reason="CodeCarbon returned no emissions data",
            )
        all_kwh = getattr(data, "energy_consumed", None)
        if all_kwh is not None:
            notes.append(
                f"CodeCarbon energy_consumed (CPU+GPU+RAM): {float(all_kwh) * J_PER_KWH:.3f} J"
            )
        total, missing = _gpu_energy_j(data)
        duration = float(getattr(data, "duration", 0.0) or 0.0)
        if missing is not None:
            return EnergyMeasurement(
                backend=self.name,
                backend_version=self.version(),
                available=False,
                method="unavailable",
                total_energy_j=None,
                duration_s=duration,
                notes=[*notes, missing],
                not_measured_reason=missing,
            )
        return EnergyMeasurement(
            backend=self.name,
            backend_version=self.version(),
            available=True,
            method="codecarbon",
            total_energy_j=total,
            duration_s=duration,
            notes=notes,
        )


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _gpu_energy_j(data: Any) -> tuple[float, None] | tuple[None, str]:
    """CodeCarbon's GPU energy in J, or why it is not a measurement.

    Not a measurement: no ``gpu_energy``; ``gpu_count`` 0 (CodeCarbon tracked no GPU); or
    exactly 0 kWh (a GPU that ran for the window uses energy: a zero is CodeCarbon not
    tracking it, or a window shorter than the energy counter's update period).
    """
    kwh = _number(getattr(data, "gpu_energy", None))
    gpu_count = _number(getattr(data, "gpu_count", None))
    host_kept = "its CPU and RAM estimates are kept in energy.components"
    if gpu_count is not None and gpu_count <= 0:
        return None, (
            "CodeCarbon tracked no GPU (gpu_count 0): its zero GPU energy is not a reading; "
            f"{host_kept}"
        )
    if kwh is None:
        return None, f"CodeCarbon reported no GPU energy; {host_kept}"
    if kwh <= 0:
        return None, (
            "CodeCarbon reported zero GPU energy (GPU not tracked, or a window shorter than "
            f"its energy counter's update period): not a reading; {host_kept}"
        )
    return kwh * J_PER_KWH, None
