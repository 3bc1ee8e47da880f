"""Zeus energy backend: adapter over ``zeus.monitor.ZeusMonitor``.

Written against the Zeus API of 0.10 - 0.16 (``zeus/monitor/energy.py`` in ml-energy/zeus):
``ZeusMonitor(gpu_indices=[...])``, ``begin_window(key, sync_execution=True)`` and
``end_window(key, sync_execution=True, cancel=False) -> Measurement`` where
``Measurement.time`` is seconds and ``Measurement.gpu_energy`` maps GPU index -> joules.
GPU indices are CUDA ordinals (after ``CUDA_VISIBLE_DEVICES``), like ``GpuSensor`` positions.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from llenergymeasure.energy.base import DeviceEnergy, EnergyMeasurement, distribution_version
from llenergymeasure.energy.devices import nvml_available
from llenergymeasure.exceptions import BackendError
from llenergymeasure.install import extra_install_hint

__all__ = ["ZeusEnergyBackend", "zeus_importable"]

ZEUS_INSTALL_HINT = extra_install_hint("zeus")


def zeus_importable() -> bool:
    """True when the ``zeus`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("zeus") is not None
    except (ImportError, ValueError):
        return False


def _default_monitor_factory(gpu_indices: list[int] | None) -> Any:
    try:
        from zeus.monitor import ZeusMonitor
    except ImportError as exc:
        raise BackendError("Zeus is not installed", hint=ZEUS_INSTALL_HINT) from exc
    return ZeusMonitor(gpu_indices=gpu_indices)


class ZeusEnergyBackend:
    """Energy from Zeus' ``ZeusMonitor`` measurement window (one window per begin/end).

    ``gpu_indices``: CUDA ordinals to measure (``None``: all visible GPUs). ``monitor_factory``
    builds the monitor (tests inject a fake). ``sync_execution`` is passed to Zeus; it is off
    by default because the harness synchronises the device itself before closing the window.
    """

    name = "zeus"

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        *,
        monitor_factory: Callable[[list[int] | None], Any] | None = None,
        window_name: str = "llem_measurement",
        sync_execution: bool = False,
        available: Callable[[], bool] | None = None,
    ) -> None:
        self.gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self._factory = monitor_factory or _default_monitor_factory
        self._window = window_name
        self._sync = sync_execution
        self._available = available
        self._monitor: Any = None
        self._open = False
        self.last_window: Any = None

    def version(self) -> str | None:
        """Installed Zeus version (distribution ``zeus``, formerly ``zeus-ml``)."""
        return distribution_version("zeus", "zeus-ml")

    def is_available(self) -> bool:
        """Zeus importable and an NVIDIA GPU visible (or the injected check)."""
        if self._available is not None:
            return self._available()
        return zeus_importable() and nvml_available()

    def begin(self) -> None:
        """Create the monitor on first use and open the window."""
        if self._monitor is None:
            self._monitor = self._factory(self.gpu_indices)
        if self._open:
            raise BackendError("ZeusEnergyBackend.begin() called twice without end()")
        self._monitor.begin_window(self._window, sync_execution=self._sync)
        self._open = True

    def end(self) -> EnergyMeasurement:
        """Close the window; per-GPU joules from ``Measurement.gpu_energy``."""
        if not self._open:
            raise BackendError("ZeusEnergyBackend.end() called without begin()")
        self._open = False
        m = self._monitor.end_window(self._window, sync_execution=self._sync)
        self.last_window = m  # Zeus' Measurement, for its cpu/dram energy (energy.components)
        gpu_energy: dict[int, float] = dict(getattr(m, "gpu_energy", {}) or {})
        devices = [
            DeviceEnergy(device_index=int(i), energy_j=float(e), method="zeus")
            for i, e in sorted(gpu_energy.items())
        ]
        notes: list[str] = []
        total: float | None = sum(d.energy_j or 0.0 for d in devices) if devices else None
        if total is None:
            notes.append("Zeus returned no GPU energy")
        elif any(d.energy_j == 0.0 for d in devices):
            notes.append(
                "Zeus measured zero energy on a GPU: the window was probably shorter than "
                "the energy counter's update period"
            )
        return EnergyMeasurement(
            backend=self.name,
            backend_version=self.version(),
            available=total is not None,
            method="zeus" if total is not None else "unavailable",
            total_energy_j=total,
            duration_s=float(m.time),
            devices=devices,
            notes=notes,
        )
