"""The null energy backend: CPU runs, or energy measurement switched off."""

from __future__ import annotations

import time
from collections.abc import Callable

from llenergymeasure.energy.base import EnergyMeasurement

__all__ = ["NULL_BACKEND_NOTE", "NullEnergyBackend"]

NULL_BACKEND_NOTE = "no GPU energy sensor in use"


class NullEnergyBackend:
    """Always available; measures only the window duration, never energy."""

    name = "none"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0: float | None = None

    def version(self) -> str | None:
        """No underlying library."""
        return None

    def is_available(self) -> bool:
        """Always true."""
        return True

    def begin(self) -> None:
        """Note the start time."""
        self._t0 = self._clock()

    def end(self) -> EnergyMeasurement:
        """A measurement with ``method="unavailable"`` and no energy."""
        duration = 0.0 if self._t0 is None else max(0.0, self._clock() - self._t0)
        self._t0 = None
        return EnergyMeasurement(
            backend=self.name,
            backend_version=None,
            available=False,
            method="unavailable",
            total_energy_j=None,
            duration_s=duration,
            notes=[NULL_BACKEND_NOTE],
            not_measured_reason=NULL_BACKEND_NOTE,
        )
