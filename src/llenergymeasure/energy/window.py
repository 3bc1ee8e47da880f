"""The energy window: the one place that opens and closes an energy measurement.

Every window llem measures (an offline run's measurement window, the prefill-only window of
``measurement.phase_split``, an online run's load) goes through ``MeasurementWindow``; no other
module calls an energy backend's ``begin()`` or ``end()`` (``tests/unit/test_window.py``
checks the source). Opening, in this order (``docs/methodology.md``, section 1, step 8):

1. the sampler's phase label is set (``"measurement"``, ``"prefill_window"``) and one sample
   of every device is taken at once, so the window is bracketed by samples;
2. the device's peak-memory counter is reset (where asked);
3. the host's RAPL counters are read (where a reader is given and the machine exposes them);
4. the device is synchronised (queued work from before the window finishes outside it);
5. the energy backend's ``begin()`` reads the energy counters;
6. the clocks start: the sampler's clock (``time.monotonic`` unless injected) and
   ``time.perf_counter``.

Closing, in this order: the device is synchronised again; the clocks stop; ``end()`` reads the
counters; the RAPL counters are read; the sampler's label becomes ``"cooldown"`` and one more
sample is taken. ``duration_s`` is the ``perf_counter`` time from just after ``begin()`` to the
end of the closing synchronisation; ``span`` the same instants on the sampler's clock.

Nothing else runs inside: the caller puts exactly the engine's run (or the online load) in the
``with`` block. Used as a context manager, a block that raises still closes the backend (its
errors then ignored) and re-raises; ``open()``/``close()`` serve callers whose window edges are
callbacks (the online load driver).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.rapl import HostEnergyMeasurement, RaplReader
from llenergymeasure.energy.sampler import EnergySampler

__all__ = ["COOLDOWN_PHASE", "MeasurementWindow", "WindowDevice", "WindowReading"]

#: The sampler's label after a window closes.
COOLDOWN_PHASE = "cooldown"


class WindowDevice(Protocol):
    """What the window needs of the device that does the work (an inference engine)."""

    def synchronize(self) -> None:
        """Wait for queued device work."""
        ...

    def reset_peak_memory(self) -> None:
        """Reset the device's peak-memory counter."""
        ...


@dataclass(frozen=True)
class WindowReading:
    """What one window measured.

    ``energy``: the backend's measurement; ``duration_s``: ``perf_counter`` seconds from just
    after ``begin()`` to the end of the closing synchronisation; ``span``: those instants on
    the sampler's clock; ``host``: the RAPL counters around the window (None where no reader
    was given).
    """

    energy: EnergyMeasurement
    duration_s: float
    span: tuple[float, float]
    host: HostEnergyMeasurement | None = None


class MeasurementWindow:
    """Opens and closes one energy window (see the module docstring for the exact order).

    ``energy_backend``: what measures the energy. ``phase``: the sampler's label inside the
    window. ``sampler``: the running background sampler (None: nothing to label). ``device``:
    synchronised at both edges (None: the work runs elsewhere, e.g. an online server).
    ``reset_peak_memory``: reset the device's peak-memory counter before opening. ``host``: a
    RAPL reader read just outside the window (None: host counters not read). ``clock``: the
    sampler's clock. ``timer``: the clock of ``duration_s`` (``time.perf_counter``; tests
    inject a fake). ``before_open`` / ``after_close``: called first in ``open`` and last in
    ``close``, outside the energy edges (the harness reads the host's load there).
    """

    def __init__(
        self,
        energy_backend: EnergyBackend,
        *,
        phase: str = "measurement",
        sampler: EnergySampler | None = None,
        device: WindowDevice | None = None,
        reset_peak_memory: bool = False,
        host: RaplReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        before_open: Callable[[], None] | None = None,
        after_close: Callable[[], None] | None = None,
    ) -> None:
        self.energy_backend = energy_backend
        self.before_open = before_open
        self.after_close = after_close
        self.phase = phase
        self.sampler = sampler
        self.device = device
        self.reset_peak_memory = reset_peak_memory
        self.host = host
        self.clock = clock
        self.timer = timer
        self._host_reader: RaplReader | None = None
        self._host_missing: str | None = None
        self._open = False
        self._t0 = 0.0
        self._p0 = 0.0
        self._reading: WindowReading | None = None

    @property
    def reading(self) -> WindowReading:
        """The closed window's measurement (``RuntimeError`` before it closed)."""
        if self._reading is None:
            raise RuntimeError("the measurement window has not been closed")
        return self._reading

    def open(self) -> None:
        """Label, sample, reset the peak counter, read RAPL, sync, ``begin()``, start clocks."""
        if self._open or self._reading is not None:
            raise RuntimeError("a MeasurementWindow opens once")
        if self.before_open is not None:
            self.before_open()
        if self.sampler is not None:
            self.sampler.set_phase(self.phase)
            self.sampler.sample_now()
        if self.device is not None and self.reset_peak_memory:
            self.device.reset_peak_memory()
        self._host_begin()
        if self.device is not None:
            self.device.synchronize()
        self.energy_backend.begin()
        self._open = True
        self._t0 = self.clock()
        self._p0 = self.timer()

    def close(self) -> None:
        """Sync, stop the clocks, ``end()``, read RAPL, label ``cooldown`` and sample; the
        measurement is then ``reading``."""
        if not self._open:
            raise RuntimeError("the measurement window is not open")
        if self.device is not None:
            self.device.synchronize()
        p1 = self.timer()
        t1 = self.clock()
        self._open = False
        energy = self.energy_backend.end()
        host = self._host_end()
        self._after()
        self._reading = WindowReading(
            energy=energy, duration_s=p1 - self._p0, span=(self._t0, t1), host=host
        )
        if self.after_close is not None:
            self.after_close()

    def abort(self) -> None:
        """Close an open window after a failure inside it, ignoring errors (nothing recorded)."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(Exception):
            self.energy_backend.end()
        if self._host_reader is not None:
            with contextlib.suppress(Exception):
                self._host_reader.end()
        with contextlib.suppress(Exception):
            self._after()

    def __enter__(self) -> MeasurementWindow:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ─── Host counters (never fail the run: an error is the reason they are missing) ───
    def _host_begin(self) -> None:
        reader = self.host
        if reader is None:
            return
        try:
            ok, why = reader.available()
            if not ok:
                self._host_missing = why
                return
            reader.begin()
        except Exception as exc:  # host energy is an extra: a broken reader never stops a run
            self._host_missing = f"RAPL reader failed: {type(exc).__name__}: {exc}"
            return
        self._host_reader = reader

    def _host_end(self) -> HostEnergyMeasurement | None:
        if self.host is None:
            return None
        reader, self._host_reader = self._host_reader, None
        if reader is None:
            return HostEnergyMeasurement(available=False, reason=self._host_missing, duration_s=0.0)
        try:
            return reader.end()
        except Exception as exc:  # see _host_begin
            return HostEnergyMeasurement(
                available=False,
                reason=f"RAPL reader failed: {type(exc).__name__}: {exc}",
                duration_s=0.0,
            )

    def _after(self) -> None:
        if self.sampler is not None:
            self.sampler.set_phase(COOLDOWN_PHASE)
            self.sampler.sample_now()
