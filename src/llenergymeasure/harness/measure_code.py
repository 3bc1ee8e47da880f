"""Measure any code through the same energy window as llem's runs: ``llem.measure()``.

::

    with llem.measure() as m:
        outputs = model.generate(**inputs)
    m.energy_j, m.duration_s, m.per_token(n_new_tokens)

    @llem.measure(gpus=[0], baseline="measure")
    def generate(batch): ...
    generate(batch)
    generate.last_measurement.energy_adjusted_j

A block goes through the parts of an offline run, in this order:

1. the GPU sensor is opened: NVML over the GPUs this process sees (``CUDA_VISIBLE_DEVICES``
   honoured), numbered by CUDA ordinal as torch and Zeus number them, only ``gpus`` when given;
   the energy backend is chosen as runs choose it (``measurement.energy_backend`` of the user
   settings, ``energy_backend_for``); the background sampler starts;
2. with ``baseline="measure"`` the idle baseline is taken (``get_or_measure_baseline``, the
   runs' code, cached in this process for ``baseline_ttl_s`` under its own idle state);
3. ``energy.window.MeasurementWindow`` opens: the sampler's label ``measurement`` and one
   sample, the host's RAPL counters, a device sync (only where torch is already imported and
   has initialised CUDA: this module never imports torch), the backend's ``begin()``, the
   clocks;
4. the block runs;
5. the window closes (sync, clocks, ``end()``, RAPL, label ``cooldown`` and one sample); the
   sampler stops and the sensor closes; the figures are computed by the code that builds a
   run's result (``assemble.energy_breakdown``, ``energy.components.host_energy_components``).

A block that raises closes the window (the backend's errors then ignored), records nothing and
re-raises. Figures are read after the block: reading one earlier raises
``MeasurementNotReadyError``. Where energy cannot be measured (no GPU, no sensor, the ``none``
backend) ``energy_j`` is ``None`` and ``not_measured_reason`` says why; it is never 0 J.

Nesting and concurrency: allowed with the NVML and Zeus backends. Each block opens its own
sensor, sampler and backend (a Zeus backend has its own ``ZeusMonitor``); energy counters are
read at the edges, never reset, so blocks that overlap in time each get their own difference.
A block measures its GPUs, not its code: an inner block's energy is part of the outer block's,
and so is any other process's work on those GPUs. CodeCarbon 2.7 - 2.x refuses a second
tracker running at once on a machine (a lock file); with that backend, do not nest.

What a block measured is a ``Measurement`` (``harness.block_measurement``); what it reads of the
machine, a ``Machine`` (``harness.block_machine``).
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

from llenergymeasure.config import bounds as B
from llenergymeasure.config.models import BaselineConfig
from llenergymeasure.energy.base import DeviceEnergy, EnergyBackend
from llenergymeasure.energy.baseline import (
    BaselineMeasurement,
    get_or_measure_baseline,
    measure_idle_baseline,
)
from llenergymeasure.energy.codecarbon_backend import CodeCarbonEnergyBackend
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.energy.rapl import RaplReader
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.harness.block_machine import Machine, SelectedGpus, TorchCudaIfLoaded
from llenergymeasure.harness.block_measurement import (
    Measurement,
    MeasurementNotReadyError,
    OpenBlock,
    block_figures,
)
from llenergymeasure.harness.settings import MeasurementSettings

__all__ = [
    "BASELINE_CONTEXT",
    "Baseline",
    "MeasuredBlock",
    "MeasuredFunction",
    "measure",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: The sampler's label inside a measured block (as in a run's measurement window).
MEASURE_PHASE = "measurement"
#: The idle state a ``baseline="measure"`` baseline is cached under: whatever the user's
#: process holds, never interchanged with a run's baseline (taken before its engine loads).
BASELINE_CONTEXT = "llem.measure()"
#: Seconds of idle polling for ``baseline="measure"``: a run's default.
DEFAULT_BASELINE_SECONDS = BaselineConfig().duration_seconds

#: What ``baseline=`` accepts: watts, ``"measure"``, a measured baseline, or nothing.
Baseline = float | Literal["measure"] | BaselineMeasurement | None


# ─── Arguments ───────────────────────────────────────────────────────────────────────────


def _checked_gpus(gpus: int | Sequence[int] | None) -> list[int] | None:
    if gpus is None:
        return None
    values = [gpus] if isinstance(gpus, int) else gpus
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(
            f"measure(gpus={gpus!r}): gpus is a CUDA ordinal or a list of them",
            hint="e.g. gpus=0 or gpus=[0, 1]; leave it out to measure every visible GPU",
        )
    out: list[int] = []
    for g in values:
        if isinstance(g, bool) or not isinstance(g, int) or not B.GPU_INDEX.contains(g):
            raise ConfigError(
                f"measure(gpus={gpus!r}): {g!r} is not a CUDA ordinal ({B.GPU_INDEX.explain()})"
            )
        if g in out:
            raise ConfigError(f"measure(gpus={gpus!r}): GPU {g} is listed twice")
        out.append(g)
    if not out:
        raise ConfigError(
            "measure(gpus=[]): no GPU to measure",
            hint="leave gpus out to measure every visible GPU",
        )
    return out


def _checked_baseline(baseline: Baseline, seconds: float) -> Baseline:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigError(f"measure(baseline_seconds={seconds!r}): a number of seconds")
    if not B.BASELINE_SECONDS.contains(seconds):
        raise ConfigError(
            f"measure(baseline_seconds={seconds!r}) is out of range: {B.BASELINE_SECONDS.explain()}"
        )
    if baseline is None or baseline == "measure" or isinstance(baseline, BaselineMeasurement):
        return baseline
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ConfigError(
            f"measure(baseline={baseline!r}): the baseline is idle power in watts, "
            '"measure", a BaselineMeasurement, or None',
            hint='baseline="measure" polls idle power before the block',
        )
    if not math.isfinite(baseline) or baseline < 0:
        raise ConfigError(f"measure(baseline={baseline!r}): idle power is finite watts >= 0")
    return float(baseline)


# ─── The block ───────────────────────────────────────────────────────────────────────────


class _FromMeasurement(Generic[T]):
    """A block attribute that reads the finished ``Measurement``'s field of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, block: None, owner: type) -> _FromMeasurement[T]: ...
    @overload
    def __get__(self, block: MeasuredBlock, owner: type) -> T: ...
    def __get__(self, block: MeasuredBlock | None, owner: type) -> Any:
        if block is None:
            return self
        return getattr(block.measurement, self.name)


class MeasuredBlock:
    """The energy window of one ``with llem.measure(...) as m:`` block, and its figures.

    A block runs once. Its figures (``energy_j``, ``duration_s``, ...; ``measurement`` is all of
    them as a ``Measurement``) are read after it; earlier, or after the block raised, they raise
    ``MeasurementNotReadyError``. Used as a decorator it measures every call of the function
    in a fresh block (``MeasuredFunction``).
    """

    energy_j = _FromMeasurement[float | None]()
    duration_s = _FromMeasurement[float]()
    energy_adjusted_j = _FromMeasurement[float | None]()
    baseline_power_w = _FromMeasurement[float | None]()
    baseline = _FromMeasurement[BaselineMeasurement | None]()
    gpus = _FromMeasurement[list[int]]()
    devices = _FromMeasurement[list[DeviceEnergy]]()
    counter_energy_j = _FromMeasurement[float | None]()
    poll_energy_j = _FromMeasurement[float | None]()
    counter_vs_poll_diff_pct = _FromMeasurement[float | None]()
    components = _FromMeasurement[EnergyComponents]()
    host_energy_j = _FromMeasurement[float | None]()
    not_measured_reason = _FromMeasurement[str | None]()
    warnings = _FromMeasurement[list[str]]()
    notes = _FromMeasurement[list[str]]()

    def __init__(
        self,
        gpus: int | Sequence[int] | None = None,
        baseline: Baseline = None,
        *,
        baseline_seconds: float = DEFAULT_BASELINE_SECONDS,
        machine: Machine | None = None,
    ) -> None:
        self._gpus = _checked_gpus(gpus)
        self._baseline = _checked_baseline(baseline, baseline_seconds)
        self._baseline_seconds = float(baseline_seconds)
        self.machine = machine or Machine()
        self._state: Literal["new", "open", "done", "failed"] = "new"
        self._open: OpenBlock | None = None
        self._measurement: Measurement | None = None
        self._failure: str | None = None

    def fresh(self) -> MeasuredBlock:
        """A new, unopened block with the same arguments (one per call of a decorated function)."""
        return MeasuredBlock(
            self._gpus,
            self._baseline,
            baseline_seconds=self._baseline_seconds,
            machine=self.machine,
        )

    @property
    def measurement(self) -> Measurement:
        """Every figure of the finished block (``MeasurementNotReadyError`` before it ends)."""
        if self._measurement is not None:
            return self._measurement
        if self._state == "failed":
            raise MeasurementNotReadyError(f"{self._failure}: nothing was recorded")
        raise MeasurementNotReadyError(
            "measure(): figures are read after the block ends",
            hint="read m.energy_j (and the rest) after the `with llem.measure() as m:` block",
        )

    def per_token(self, n: int, *, adjusted: bool = False) -> float | None:
        """Joules per token for ``n`` tokens (see ``Measurement.per_token``)."""
        return self.measurement.per_token(n, adjusted=adjusted)

    def __repr__(self) -> str:
        if self._measurement is not None:
            return f"<llem.measure: {self._measurement}>"
        return f"<llem.measure: {self._state}>"

    # ── context manager ──
    def __enter__(self) -> MeasuredBlock:
        if self._state != "new":
            raise ConfigError(
                "a measure() block runs once",
                hint="call llem.measure() again for another block",
            )
        self._state = "open"
        sensor: GpuSensor | None = None
        sampler: EnergySampler | None = None
        try:
            settings = self.machine.settings or MeasurementSettings.from_user_config()
            sensor, gpus = self._sensor()
            energy = self._energy_backend(settings, sensor, gpus)
            sampler = self._sampler(energy, sensor, settings)
            if sampler is not None:
                sampler.set_phase("baseline" if self._baseline == "measure" else "idle")
                sampler.start()
            baseline, baseline_w, source, notes = self._take_baseline(sensor, settings)
            window = MeasurementWindow(
                energy,
                phase=MEASURE_PHASE,
                sampler=sampler,
                device=self.machine.device or TorchCudaIfLoaded(self._gpus),
                host=self.machine.rapl if self.machine.rapl is not None else RaplReader(),
                clock=self.machine.clock,
                timer=self.machine.timer,
            )
            self._open = OpenBlock(
                sensor, energy, sampler, window, gpus, baseline, baseline_w, source
            )
            if sensor is None and self._gpus is not None:
                notes.append(f"gpus={self._gpus} not measured: this process sees no GPU")
            self._open.notes.extend(notes)
            window.open()
        except BaseException as error:
            self._state = "failed"
            self._failure = f"the window did not open ({type(error).__name__}: {error})"
            _release(sensor, sampler)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._open
        if held is None:
            return
        self._open = None
        try:
            if exc_type is not None:
                self._state = "failed"
                self._failure = f"the measured block raised {exc_type.__name__}: {exc}"
                held.window.abort()
                return
            try:
                held.window.close()
            except BaseException as close_error:
                self._state = "failed"
                self._failure = f"closing the window failed ({close_error!r})"
                raise
            if held.sampler is not None:
                held.sampler.stop()
            self._measurement = block_figures(held)
            self._state = "done"
        finally:
            _release(held.sensor, held.sampler)

    # ── decorator ──
    def __call__(self, fn: Callable[P, R]) -> MeasuredFunction[P, R]:
        """Measure every call of ``fn`` (see ``MeasuredFunction``)."""
        return MeasuredFunction(fn, self)

    # ── opening ──
    def _sensor(self) -> tuple[GpuSensor | None, list[int]]:
        """The sensor over the GPUs to measure, and their CUDA ordinals."""
        sensor = self.machine.open_sensor()
        if sensor is None:
            return None, []
        try:
            visible = sensor.device_count()
            if visible < 1:
                sensor.close()
                return None, []
            if self._gpus is None:
                return sensor, list(range(visible))
            missing = [g for g in self._gpus if g >= visible]
            if missing:
                raise ConfigError(
                    f"measure(gpus={self._gpus}): this process sees {visible} GPU(s), CUDA "
                    f"ordinals 0..{visible - 1}; {missing} not among them",
                    hint="gpus counts the GPUs this process sees (after CUDA_VISIBLE_DEVICES)",
                )
            return SelectedGpus(sensor, self._gpus), list(self._gpus)
        except BaseException:
            sensor.close()
            raise

    def _energy_backend(
        self, settings: MeasurementSettings, sensor: GpuSensor | None, gpus: list[int]
    ) -> EnergyBackend:
        """The backend a run would use on this machine, limited to ``gpus`` when given."""
        energy = self.machine.choose_backend(settings, sensor)
        if self._gpus is not None and sensor is not None:
            if isinstance(energy, ZeusEnergyBackend):
                energy.gpu_indices = list(gpus)  # Zeus numbers GPUs by CUDA ordinal too
            elif isinstance(energy, CodeCarbonEnergyBackend):
                raise ConfigError(
                    f"measure(gpus={self._gpus}): the codecarbon energy backend measures every "
                    "GPU it tracks, with no per-device figure, so it cannot measure only these",
                    hint="set measurement.energy_backend to auto, nvml or zeus, or leave gpus out",
                )
        return energy

    def _sampler(
        self, energy: EnergyBackend, sensor: GpuSensor | None, settings: MeasurementSettings
    ) -> EnergySampler | None:
        """The backend's own sampler (NVML), else one over the sensor (as a run's)."""
        own = getattr(energy, "sampler", None)
        if isinstance(own, EnergySampler):
            return own
        if sensor is None:
            return None
        return EnergySampler(
            sensor, interval_ms=settings.sampling_interval_ms, clock=self.machine.clock
        )

    def _take_baseline(
        self, sensor: GpuSensor | None, settings: MeasurementSettings
    ) -> tuple[BaselineMeasurement | None, float | None, str | None, list[str]]:
        """(measurement, watts, source, notes) of the baseline to subtract."""
        wanted = self._baseline
        if wanted is None:
            return None, None, None, []
        if isinstance(wanted, float):
            return None, wanted, "given", []
        if isinstance(wanted, BaselineMeasurement):
            _check_same_devices(wanted, sensor)
            return wanted, wanted.power_w, "passed", []
        if sensor is None:
            return None, None, None, ["idle baseline not taken: no GPU sensor on this machine"]
        measured = get_or_measure_baseline(
            sensor,
            self._baseline_seconds,
            settings.sampling_interval_ms,
            cache=self.machine.baseline_cache,
            ttl_s=settings.baseline_ttl_s,
            measure=functools.partial(
                measure_idle_baseline, clock=self.machine.clock, sleep=self.machine.sleep
            ),
            context=BASELINE_CONTEXT,
        )
        source = "cached" if measured.from_cache else "measured"
        return measured, measured.power_w, source, []


def _check_same_devices(baseline: BaselineMeasurement, sensor: GpuSensor | None) -> None:
    """A passed baseline must be of the GPUs measured (where both are known)."""
    if sensor is None or not baseline.device_uuids:
        return
    uuids = [sensor.device_info(i).uuid for i in range(sensor.device_count())]
    if list(baseline.device_uuids) != uuids:
        raise ConfigError(
            f"measure(baseline=...): the baseline was measured on {baseline.device_uuids}, "
            f"the block measures {uuids}",
            hint="pass a baseline of the same GPUs, or use gpus= to measure the baseline's GPUs",
        )


def _release(sensor: GpuSensor | None, sampler: EnergySampler | None) -> None:
    if sampler is not None and sampler.running:
        sampler.stop()
    if sensor is not None:
        sensor.close()


# ─── The decorator ───────────────────────────────────────────────────────────────────────


class MeasuredFunction(Generic[P, R]):
    """A function whose every call is measured in a fresh ``measure()`` block.

    Calls return what the function returns; ``last_measurement`` is the latest call's
    ``Measurement`` (None before the first call, and after a call that raised: a failed call
    records nothing). Coroutine functions are measured until the awaited call returns.
    Concurrent calls each get their own block; ``last_measurement`` is then the last to end.
    """

    def __init__(self, fn: Callable[P, R], block: MeasuredBlock) -> None:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigError(
                f"@llem.measure cannot measure the generator {fn.__qualname__}: its body "
                "runs while it is iterated, outside the call",
                hint="measure the loop that consumes it with `with llem.measure() as m:`",
            )
        self.__wrapped__ = fn
        self.block = block
        self.last_measurement: Measurement | None = None
        functools.update_wrapper(self, fn)
        if inspect.iscoroutinefunction(fn) and hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        fn = self.__wrapped__
        if inspect.iscoroutinefunction(fn):
            return cast(R, self._measure_awaited(fn, *args, **kwargs))
        block = self.block.fresh()
        self.last_measurement = None
        with block:
            result = fn(*args, **kwargs)
        self.last_measurement = block.measurement
        return result

    async def _measure_awaited(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        block = self.block.fresh()
        self.last_measurement = None
        with block:
            result = await fn(*args, **kwargs)
        self.last_measurement = block.measurement
        return result

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        # as a method: bound like a function; the bound method reads last_measurement here
        if obj is None:
            return self
        return types.MethodType(self, obj)


# ─── The public function ─────────────────────────────────────────────────────────────────


@overload
def measure(gpus: Callable[P, R], /) -> MeasuredFunction[P, R]: ...
@overload
def measure(
    gpus: int | Sequence[int] | None = None,
    baseline: Baseline = None,
    *,
    baseline_seconds: float = DEFAULT_BASELINE_SECONDS,
) -> MeasuredBlock: ...
def measure(
    gpus: Any = None,
    baseline: Baseline = None,
    *,
    baseline_seconds: float = DEFAULT_BASELINE_SECONDS,
) -> Any:
    """Measure the energy of a block of code (or of every call of a function).

    ``with llem.measure() as m: ...`` then ``m.energy_j``, ``m.duration_s``, ``m.devices``,
    ``m.energy_adjusted_j``, ``m.per_token(n)``; ``@llem.measure()`` (or ``@llem.measure``) on
    a function measures each call and keeps the latest in ``fn.last_measurement``.

    ``gpus``: CUDA ordinals to measure (an int or a list; default every GPU this process
    sees). ``baseline``: idle power to subtract, in watts; ``"measure"`` to poll it for
    ``baseline_seconds`` before the block (reused in this process for the settings' baseline
    TTL); or a ``BaselineMeasurement`` (e.g. ``m.baseline`` of an earlier block). The energy
    backend is the one runs use (``measurement.energy_backend`` of the user settings).
    """
    if callable(gpus):
        return MeasuredBlock()(gpus)
    return MeasuredBlock(gpus, baseline, baseline_seconds=baseline_seconds)
