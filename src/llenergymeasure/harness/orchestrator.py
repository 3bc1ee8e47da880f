"""Runs one experiment through the measurement protocol.

pre-flight -> environment -> idle baseline -> load -> prompts -> warmup -> thermal floor ->
prompts prepared (tokenised, on the device) -> measurement window (``energy.window``: sync,
energy backend, background sampler, the host's RAPL counters just outside it; inside it only
the engine's ``execute``) -> records -> [prefill-only window, ``measurement.phase_split``] ->
metrics.

The engine, energy backend and GPU sensor are injected (protocols), so tests drive the whole
protocol with fakes; ``default_components`` builds the real ones.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from llenergymeasure.config.catalogue import engine_load_key
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    get_or_measure_baseline,
)
from llenergymeasure.energy.components import host_energy_components
from llenergymeasure.energy.rapl import RaplReader
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow, WindowReading
from llenergymeasure.engines.base import (
    MEASUREMENT_PHASE,
    WARMUP_PHASE,
    InferenceBackend,
    LoadInfo,
    RequestRecord,
)
from llenergymeasure.exceptions import PreFlightError
from llenergymeasure.harness.assemble import CollectedRun, assemble_result, trusts_remote_code
from llenergymeasure.harness.environment import LoadAverageReader, window_closed, window_opened
from llenergymeasure.harness.inputs import PreflightDataset, prompt_length_problems
from llenergymeasure.harness.saving import MeasuredExperiment
from llenergymeasure.harness.settings import MeasurementSettings
from llenergymeasure.harness.warmup import (
    compile_time,
    planned_warmup_runs,
    run_warmup,
    warmup_prompts_for,
)
from llenergymeasure.phase_split.differential import PhaseSplit
from llenergymeasure.phase_split.prefill_window import measure_prefill_window, split_from_windows
from llenergymeasure.results.models import PhaseTimings, WarmupResult

logger = logging.getLogger(__name__)


@dataclass
class _WindowProgress:
    """Progress inside the measurement window, called by the engine between batches.

    At most one line every ``interval_s`` (and one for the last batch): one clock read and a
    comparison per batch otherwise, never a device sync or per-token work. Installed only when
    INFO records are shown (or forwarded) somewhere.
    """

    total: int
    interval_s: float = 2.0
    start: float = field(default_factory=time.perf_counter)
    _last: float = 0.0

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self._last < self.interval_s:
            return
        self._last = now
        logger.info("measuring: %d/%d prompts, %.1f s", done, self.total, now - self.start)


@dataclass
class ExperimentOrchestrator:
    """Drives one experiment through the protocol with injected components."""

    engine: InferenceBackend
    energy_backend: EnergyBackend
    sensor: GpuSensor | None = None
    settings: MeasurementSettings = field(default_factory=MeasurementSettings)
    baseline_cache: BaselineCache | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    # times the warmup runs and the window's duration_s (tests inject a FakeClock)
    timer: Callable[[], float] = time.perf_counter
    dataset_loader: Callable[..., Any] | None = None
    # Host (CPU/DRAM) energy from RAPL around the window; None: the machine's own powercap
    # tree (/sys/class/powercap), read only when it is readable. Tests inject a fake tree.
    rapl_reader: RaplReader | None = None
    # the host's load average at the window's start and end (None: os.getloadavg)
    load_average: LoadAverageReader | None = None
    # Engine reuse (a study's engine group): keep the engine loaded after a run, so the next
    # run with the same engine_load_key skips loading; clear_run_state() before every window.
    keep_engine_loaded: bool = False
    _loaded_key: str | None = field(default=None, init=False, repr=False)
    _loaded_by: str | None = field(default=None, init=False, repr=False)
    _load_info: LoadInfo | None = field(default=None, init=False, repr=False)
    # the dataset read by pre-flight: the prompts the run then uses
    _dataset: PreflightDataset = field(default_factory=PreflightDataset, init=False, repr=False)

    # -- pre-flight -----------------------------------------------------------------------
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """Every problem that would stop the run, collected at once; warnings are not problems.

        The dataset is read and checked here (``harness.inputs``), before the baseline and the
        load, and kept: the run uses these prompts and does not read the file again.
        """
        problems = list(self.engine.preflight(config))
        problems.extend(self._prepare_dataset(config))
        if not self.energy_backend.is_available():
            problems.append(
                f"energy backend '{self.energy_backend.name}' is not available on this machine"
            )
        from llenergymeasure.harness.vram import synthetic_length_problems, vram_problems

        if not self._engine_kept_for(config):  # a kept engine already holds its memory
            problems.extend(vram_problems(self.sensor, config))

        problems.extend(synthetic_length_problems(config))
        return problems

    def _prepare_dataset(self, config: ExperimentConfig) -> list[str]:
        """Read and check the dataset now, before the baseline and the load; keep it for
        the run (a file is read once per run). Returns its problems (none when fine)."""
        self._dataset.clear()
        if self.dataset_loader is not None:
            return []  # an injected loader reads the prompts after the load
        return self._dataset.check(config)

    def _engine_kept_for(self, config: ExperimentConfig) -> bool:
        """Whether a kept (reused) engine is loaded for ``config``'s engine-load fields."""
        return (
            self.keep_engine_loaded
            and self._loaded_key is not None
            and self._loaded_key == engine_load_key(config)
        )

    # -- the protocol ---------------------------------------------------------------------
    def run(self, config: ExperimentConfig, *, run_id: str | None = None) -> MeasuredExperiment:
        """Measure ``config``; raises PreFlightError before doing any work if it cannot run.

        With ``keep_engine_loaded`` the engine stays loaded afterwards (call ``close()`` at the
        end) and a later run whose ``engine_load_key`` is equal reuses it; its result says so
        (``engine_reused``, ``engine_loaded_by`` = the ``run_id`` of the run that loaded it).
        """
        timings = PhaseTimings()
        t_start = time.perf_counter()
        started = datetime.now(timezone.utc)

        logger.info("pre-flight checks")
        t = time.perf_counter()
        problems = self.preflight(config)
        if problems:
            raise PreFlightError(problems)
        if trusts_remote_code(config):
            logger.warning(
                "passthrough_kwargs.trust_remote_code is set: code from the %s repository "
                "runs on this machine",
                config.model,
            )
        timings.preflight_s = time.perf_counter() - t

        t = time.perf_counter()
        from llenergymeasure.harness.environment import capture_environment

        environment = capture_environment(config.backend, self.sensor)
        timings.environment_s = time.perf_counter() - t

        sampler: EnergySampler | None = None
        if self.sensor is not None:
            sampler = self._sampler()
        try:
            return self._measure(config, environment, timings, t_start, started, sampler, run_id)
        finally:
            if sampler is not None and sampler.running:
                sampler.stop()
            if not self.keep_engine_loaded:
                self.engine.unload()

    def close(self) -> None:
        """Unload a kept engine (engine reuse); a no-op when nothing is loaded."""
        if self._loaded_key is not None:
            self._loaded_key = self._loaded_by = self._load_info = None
            self.engine.unload()

    def _sampler(self) -> EnergySampler:
        backend_sampler = getattr(self.energy_backend, "sampler", None)
        if isinstance(backend_sampler, EnergySampler):
            return backend_sampler
        assert self.sensor is not None
        return EnergySampler(
            self.sensor, interval_ms=self.settings.sampling_interval_ms, clock=self.clock
        )

    def _measure(
        self,
        config: ExperimentConfig,
        environment: Any,
        timings: PhaseTimings,
        t_start: float,
        started: datetime,
        sampler: EnergySampler | None,
        run_id: str | None = None,
    ) -> MeasuredExperiment:
        baseline = self._baseline(config, timings, sampler)
        if sampler is not None:
            sampler.set_phase("load")
        load_info, reused_from, run_state_notes = self._load_or_reuse(config, timings, run_id)
        prompts = self._checked_prompts(config, timings)
        warmup = self._warmup(config, prompts, sampler, timings, reused_from)
        self._thermal_floor(config, timings, sampler)

        if self.keep_engine_loaded:
            run_state_notes += list(self.engine.clear_run_state())
        records, window = self._measurement_window(config, prompts, sampler, environment)
        timings.measurement_s = window.duration_s
        read_after = self._read_after_window(config, window)
        split, split_missing = None, None
        if config.measurement.phase_split:
            t = time.perf_counter()
            split, split_missing = self._phase_split(
                config, prompts, records, window.energy, window.duration_s, baseline, sampler
            )
            timings.phase_split_s = time.perf_counter() - t
        if sampler is not None:
            sampler.stop()
            if sampler.error is not None:
                logger.warning("sampler error: %r", sampler.error)

        result = assemble_result(
            CollectedRun(
                config=config,
                environment=environment,
                records=records,
                energy=window.energy,
                baseline=baseline,
                duration_s=window.duration_s,
                window=window.span,
                sampler=sampler,
                warmup=warmup,
                timings=timings,
                started=started,
                parameter_count=load_info.parameter_count,
                draft_parameter_count=load_info.draft_parameter_count,
                phase_split=split,
                phase_split_unavailable=split_missing,
                dataset=self._dataset.provenance(),
                **read_after,
            ),
            self.settings,
        )
        timings.total_s = time.perf_counter() - t_start
        result = result.model_copy(
            update={
                "timing": timings,
                "engine_reused": reused_from is not None,
                "engine_loaded_by": reused_from if reused_from is not None else run_id,
                "run_state_notes": run_state_notes,
            }
        )
        table = sampler.to_table() if sampler is not None and sampler.samples else None
        return MeasuredExperiment(result=result, timeseries=table)

    def _read_after_window(self, config: ExperimentConfig, window: WindowReading) -> dict[str, Any]:
        """What the backend and the engine report about the measurement window (``CollectedRun``
        fields), read before the prefill-only window runs another window and ``generate``."""
        return {
            # the backend's host figures (Zeus, CodeCarbon), before another window replaces them
            "components": host_energy_components(window.energy, window.host, self.energy_backend),
            "peak_memory_bytes": self.engine.peak_memory_bytes(),
            # a copy: its notes grow later
            "effective_parameters": copy.deepcopy(self.engine.effective_parameters(config)),
            "process_results": self.engine.process_results(),
            "record_processes": self.engine.record_process_indices(),
        }

    def _baseline(
        self, config: ExperimentConfig, timings: PhaseTimings, sampler: EnergySampler | None
    ) -> BaselineMeasurement | None:
        """Start the sampler (phase ``baseline``) and take or reuse the idle baseline."""
        if sampler is not None:
            sampler.set_phase("baseline")
            sampler.start()
        if not config.baseline.enabled or self.sensor is None:
            return None
        logger.info("idle baseline (%g s)", config.baseline.duration_seconds)
        t = time.perf_counter()
        baseline = get_or_measure_baseline(
            self.sensor,
            config.baseline.duration_seconds,
            self.settings.sampling_interval_ms,
            cache=self.baseline_cache,
            ttl_s=self.settings.baseline_ttl_s,
        )
        timings.baseline_s = time.perf_counter() - t
        if baseline.from_cache:
            age = baseline.cache_age_s
            logger.info("idle baseline %.1f W (cached, %.0f s old)", baseline.power_w, age)
        else:
            logger.info("idle baseline %.1f W", baseline.power_w)
        return baseline

    def _checked_prompts(self, config: ExperimentConfig, timings: PhaseTimings) -> list[Any]:
        """The run's prompts; ``PreFlightError`` when one exceeds the loaded model's length."""
        t = time.perf_counter()
        prompts = self._load_prompts(config)
        timings.dataset_s = time.perf_counter() - t
        too_long = prompt_length_problems(self.engine, config, prompts)
        if too_long:  # the second half of pre-flight: the limits are known once loaded
            raise PreFlightError(
                too_long, hint="use shorter prompts, a lower max_new_tokens or a longer model"
            )
        return prompts

    def _thermal_floor(
        self, config: ExperimentConfig, timings: PhaseTimings, sampler: EnergySampler | None
    ) -> None:
        """Wait ``warmup.thermal_floor_seconds`` (skipped when no energy is measured)."""
        floor = config.warmup.thermal_floor_seconds
        if floor <= 0:
            return
        if self.energy_backend.name == "none":
            logger.info("thermal floor skipped: no energy is being measured on this machine")
            return
        if sampler is not None:
            sampler.set_phase("thermal_floor")
        logger.info("thermal floor: waiting %g s", floor)
        t = time.perf_counter()
        self.sleep(floor)
        timings.thermal_floor_s = time.perf_counter() - t

    def _measurement_window(
        self,
        config: ExperimentConfig,
        prompts: Sequence[Any],
        sampler: EnergySampler | None,
        environment: Any,
    ) -> tuple[list[RequestRecord], WindowReading]:
        """The measurement window over every prompt: prepared before it opens, the engine's
        ``execute`` alone inside it, the records built after it closes."""
        logger.info("measuring %d prompts", len(prompts))
        prepared = self.engine.prepare(prompts, config, phase=MEASUREMENT_PHASE)
        shown = logger.isEnabledFor(logging.INFO)
        on_batch = _WindowProgress(total=len(prompts)) if shown else None
        window = MeasurementWindow(
            self.energy_backend,
            phase=MEASUREMENT_PHASE,
            sampler=sampler,
            device=self.engine,
            reset_peak_memory=True,
            # the machine's own powercap tree unless a reader was injected (tests)
            host=self.rapl_reader if self.rapl_reader is not None else RaplReader(),
            clock=self.clock,
            timer=self.timer,
            # the host's CPU conditions (load, threads) read just outside the edges
            before_open=lambda: window_opened(environment, self.load_average),
            after_close=lambda: window_closed(environment, self.load_average),
        )
        with window:
            raw = self.engine.execute(prepared, on_batch=on_batch)
        reading = window.reading
        logger.debug(
            "measurement window closed: %.3f s, GPU energy %s J (%s, %s)",
            reading.duration_s,
            reading.energy.total_energy_j,
            reading.energy.backend,
            reading.energy.method,
        )
        return self.engine.records(raw), reading

    # -- where the joules go (issue 16) ------------------------------------------------------
    def _phase_split(
        self,
        config: ExperimentConfig,
        prompts: Sequence[Any],
        records: Sequence[RequestRecord],
        energy: EnergyMeasurement,
        duration: float,
        baseline: BaselineMeasurement | None,
        sampler: EnergySampler | None,
    ) -> tuple[PhaseSplit | None, str | None]:
        """The prefill-only window after the measurement window, and the differential split.

        Same prompts and batching with ``max_new_tokens`` 1, one warmup run of that config
        over the warmup prompts, the same thermal floor rule; run state (prefix caches) is
        cleared first so the prefill window cannot reuse the measurement window's work.
        """
        if energy.total_energy_j is None:
            return None, "the measurement window has no energy figure"
        logger.info("phase split: prefill-only window (max_new_tokens 1)")
        self.engine.clear_run_state()
        floor = config.warmup.thermal_floor_seconds
        try:
            warm = list(self._warmup_prompts(config, prompts).prompts)
            window = measure_prefill_window(
                self.engine,
                self.energy_backend,
                prompts,
                config,
                sampler=sampler if sampler is not None and sampler.running else None,
                warmup_runs=1,
                warmup_prompts=warm or None,
                thermal_floor_s=floor if self.energy_backend.name != "none" else 0.0,
                sleep=self.sleep,
                clock=self.clock,
            )
        except Exception as exc:
            # the measurement window is complete: keep its result, say why the split is missing
            logger.warning("prefill-only window failed: %s", exc)
            return None, f"the prefill-only window failed: {type(exc).__name__}: {exc}"
        return split_from_windows(
            list(records),
            energy.total_energy_j,
            duration,
            window,
            baseline_power_w=baseline.power_w if baseline is not None else None,
        )

    def _load_or_reuse(
        self, config: ExperimentConfig, timings: PhaseTimings, run_id: str | None
    ) -> tuple[LoadInfo, str | None, list[str]]:
        """Load the engine, or reuse the kept one.

        Returns (LoadInfo, run id that loaded it if reused, notes). A reused engine's
        ``begin_reused_run(config)`` hook runs here, before the warmup, so that state which
        would make this run differ from a fresh process's (compiled graphs specialised to an
        earlier run's shapes) is dropped before the warmup rebuilds it; its notes are returned.
        """
        key = engine_load_key(config) if self.keep_engine_loaded else None
        if key is not None and key == self._loaded_key and self._load_info is not None:
            logger.info("engine reused (loaded by run %s)", self._loaded_by)
            timings.load_s = 0.0
            notes = list(self.engine.begin_reused_run(config))
            return self._load_info, self._loaded_by or "an earlier run", notes
        if self._loaded_key is not None:  # a different engine was kept: drop it first
            self.close()
        logger.info("loading %s (%s, %s)", config.model, config.backend, config.precision)
        t = time.perf_counter()
        load_info = self.engine.load(config)
        timings.load_s = time.perf_counter() - t
        timings.load_parts = dict(load_info.timing_parts)
        if key is not None:
            self._loaded_key, self._loaded_by, self._load_info = key, run_id, load_info
        return load_info, None, []

    def _load_prompts(self, config: ExperimentConfig) -> list[Any]:
        if self.dataset_loader is not None:
            dataset: Any = config.dataset
            return list(self.dataset_loader(dataset, config.n, tokenizer=self.engine.tokenizer))
        return list(self._dataset.prepared(config).prompts(self.engine.tokenizer))

    def _warmup(
        self,
        config: ExperimentConfig,
        prompts: Sequence[Any],
        sampler: EnergySampler | None,
        timings: PhaseTimings,
        reused_from: str | None,
    ) -> WarmupResult:
        """The warmup runs (``harness.warmup``); their time, and the compile time they show."""
        wc = config.warmup
        runs, notes = planned_warmup_runs(config, self.engine)
        for note in notes:
            logger.warning("%s", note)
        warm_prompts: list[Any] = []
        source: str | None = None
        if runs > 0:
            warm = self._warmup_prompts(config, prompts)
            warm_prompts, source = list(warm.prompts), warm.source
        if sampler is not None:
            sampler.set_phase(WARMUP_PHASE)
        t0 = time.perf_counter()
        if runs > 0:
            logger.info(
                "warmup: %s%d run(s) of %d prompt(s)",
                "up to " if wc.convergence_detection else "",
                runs,
                len(warm_prompts),
            )
        done = run_warmup(self.engine, warm_prompts, config, runs, timer=self.timer)
        warmup = WarmupResult(
            runs=len(done.latencies_s),
            prompts_per_run=len(warm_prompts),
            duration_s=time.perf_counter() - t0,
            latencies_s=done.latencies_s,
            convergence_detection=wc.convergence_detection,
            converged=done.converged,
            final_cv=done.final_cv,
            thermal_floor_seconds=wc.thermal_floor_seconds,
            notes=notes,
            prompt_source=source,
        )
        if reused_from is not None:
            warmup.notes.append(f"engine reused: loaded by run {reused_from}")
        timings.warmup_s = warmup.duration_s
        if self.engine.compiles_on_first_run(config):
            timings.compile_s = compile_time(warmup.latencies_s)
        return warmup

    def _warmup_prompts(self, config: ExperimentConfig, prompts: Sequence[Any]) -> Any:
        """As many prompts as the run keeps in flight (at most n), never the measured ones."""
        prepared = self._dataset.prepared(config) if self.dataset_loader is None else None
        return warmup_prompts_for(config, prompts, self.engine.tokenizer, prepared)


def default_components(
    config: ExperimentConfig, settings: MeasurementSettings
) -> tuple[InferenceBackend, EnergyBackend, GpuSensor | None]:
    """The real engine, energy backend and NVML sensor (None on a machine without NVML)."""
    from llenergymeasure.energy.devices import nvml_available
    from llenergymeasure.energy.sensors import NvmlSensor
    from llenergymeasure.engines.factory import create_engine

    engine = create_engine(config.backend, config)
    sensor: GpuSensor | None = None
    if nvml_available():
        # only the GPUs the engine says it uses (None: every visible one)
        in_use = engine.metered_nvml_indices(config)
        sensor = NvmlSensor(devices=in_use or None)
    return engine, energy_backend_for(settings, sensor), sensor


def energy_backend_for(settings: MeasurementSettings, sensor: GpuSensor | None) -> EnergyBackend:
    """A fresh energy backend (with its own sampler) over ``sensor``: one per measured run,
    since a sampler starts only once (a reused engine's runs each get a new one)."""
    from llenergymeasure.energy.select import select_energy_backend

    sampler = (
        EnergySampler(sensor, interval_ms=settings.sampling_interval_ms)
        if sensor is not None
        else None
    )
    return select_energy_backend(cast(Any, settings.energy_backend), sensor=sensor, sampler=sampler)
