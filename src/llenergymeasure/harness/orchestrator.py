"""Runs one experiment through the measurement protocol (SPEC 4).

pre-flight -> environment -> idle baseline -> load -> prompts -> warmup -> thermal floor ->
measurement window (energy backend + background sampler, device sync before close) -> metrics.

The engine, energy backend and GPU sensor are injected (protocols), so tests drive the whole
protocol with fakes; ``default_components`` builds the real ones.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from llenergymeasure._version import __version__
from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig, SyntheticDatasetConfig
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    get_or_measure_baseline,
)
from llenergymeasure.energy.maths import adjusted_energy_j
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.engines.base import InferenceBackend, RequestRecord
from llenergymeasure.exceptions import ExperimentError, PreFlightError
from llenergymeasure.harness import metrics as m
from llenergymeasure.harness.parallel import ProcessReporter
from llenergymeasure.results.models import (
    EnergyBreakdown,
    ExperimentResult,
    PhaseTimings,
    RequestResult,
    WarmupResult,
)

Progress = Callable[[str], None]


@dataclass
class MeasurementSettings:
    """Machine-level settings that shape a measurement (from the user config / env)."""

    sampling_interval_ms: int = 100
    carbon_intensity_gco2_kwh: float | None = None
    carbon_intensity_source: str = "not configured"
    datacenter_pue: float = 1.0
    datacenter_pue_source: str = "default"
    datacenter_location: str | None = None
    baseline_ttl_s: float = 3600.0

    @classmethod
    def from_user_config(cls) -> MeasurementSettings:
        """Effective settings: env > user config file > defaults."""
        from llenergymeasure.config.user_config import effective_settings

        s = effective_settings()
        intensity = s["measurement.carbon_intensity_gco2_kwh"]
        pue = s["measurement.datacenter_pue"]
        return cls(
            sampling_interval_ms=int(s["measurement.sampling_interval_ms"].value),
            carbon_intensity_gco2_kwh=intensity.value,
            carbon_intensity_source=intensity.source
            if intensity.value is not None
            else "not configured",
            datacenter_pue=float(pue.value),
            datacenter_pue_source=pue.source,
            datacenter_location=s["measurement.datacenter_location"].value,
        )


@dataclass
class MeasuredExperiment:
    """A result and its timeseries (pyarrow table, or None when nothing was sampled)."""

    result: ExperimentResult
    timeseries: Any = None

    def save(self, directory: Path, *, export_csv: bool = False) -> Path:
        """Write ``result.json`` (+ ``timeseries.parquet``, ``result.csv``) into ``directory``."""
        from llenergymeasure.results.io import write_table_parquet

        directory.mkdir(parents=True, exist_ok=True)
        result = self.result.model_copy(update={"output_dir": str(directory)})
        if self.timeseries is not None:
            write_table_parquet(self.timeseries, directory / "timeseries.parquet")
        if export_csv:
            result.to_csv(directory / "result.csv")
        result.to_json(directory / "result.json")
        self.result = result
        return directory / "result.json"


def _noop(_: str) -> None:
    pass


@dataclass
class ExperimentOrchestrator:
    """Drives one experiment through the protocol with injected components."""

    engine: InferenceBackend
    energy_backend: EnergyBackend
    sensor: GpuSensor | None = None
    settings: MeasurementSettings = field(default_factory=MeasurementSettings)
    baseline_cache: BaselineCache | None = None
    progress: Progress = _noop
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    dataset_loader: Callable[..., Any] | None = None

    # -- pre-flight -----------------------------------------------------------------------
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """Every problem that would stop the run, collected at once; warnings are not problems."""
        problems = list(self.engine.preflight(config))
        dataset = config.dataset
        if isinstance(dataset, str) and dataset.endswith(".jsonl") and not Path(dataset).is_file():
            problems.append(f"dataset file not found: {dataset}")
        if not self.energy_backend.is_available():
            problems.append(
                f"energy backend '{self.energy_backend.name}' is not available on this machine"
            )
        problems.extend(self._vram_problems(config))
        return problems

    def _vram_problems(self, config: ExperimentConfig) -> list[str]:
        """Estimated weights + KV cache vs free memory of the first GPU (when both are known)."""
        if self.sensor is None or self.sensor.device_count() == 0:
            return []
        from llenergymeasure.harness.vram import estimate_config_vram

        estimate = estimate_config_vram(config)
        info = self.sensor.device_info(0)
        used = self.sensor.read(0).memory_used_bytes
        if estimate is None or info.total_memory_bytes is None or used is None:
            return []
        free_gib = (info.total_memory_bytes - used) / 1024**3
        if estimate.total_gib > free_gib:
            return [
                f"estimated GPU memory {estimate.total_gib:.1f} GiB (weights "
                f"{estimate.weights_gib:.1f} + KV cache {estimate.kv_cache_gib:.1f}) exceeds the "
                f"{free_gib:.1f} GiB free on {info.name}"
            ]
        return []

    # -- the protocol ---------------------------------------------------------------------
    def run(self, config: ExperimentConfig) -> MeasuredExperiment:
        """Measure ``config``; raises PreFlightError before doing any work if it cannot run."""
        timings = PhaseTimings()
        t_start = time.perf_counter()
        started = datetime.now(timezone.utc)
        say = self.progress

        say("pre-flight checks")
        t = time.perf_counter()
        problems = self.preflight(config)
        if problems:
            raise PreFlightError(problems)
        timings.preflight_s = time.perf_counter() - t

        t = time.perf_counter()
        from llenergymeasure.harness.environment import capture_environment

        environment = capture_environment(config.backend, self.sensor)
        timings.environment_s = time.perf_counter() - t

        sampler: EnergySampler | None = None
        if self.sensor is not None:
            sampler = self._sampler()
        try:
            return self._measure(config, environment, timings, t_start, started, sampler)
        finally:
            if sampler is not None and sampler.running:
                sampler.stop()
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
    ) -> MeasuredExperiment:
        say = self.progress
        if sampler is not None:
            sampler.set_phase("baseline")
            sampler.start()
        baseline: BaselineMeasurement | None = None
        if config.baseline.enabled and self.sensor is not None:
            say(f"idle baseline ({config.baseline.duration_seconds:g} s)")
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
                say(
                    f"idle baseline {baseline.power_w:.1f} W "
                    f"(cached, {baseline.cache_age_s:.0f} s old)"
                )
            else:
                say(f"idle baseline {baseline.power_w:.1f} W")

        if sampler is not None:
            sampler.set_phase("load")

        say(f"loading {config.model} ({config.backend}, {config.precision})")
        t = time.perf_counter()
        load_info = self.engine.load(config)
        timings.load_s = time.perf_counter() - t
        timings.load_parts = dict(getattr(load_info, "timing_parts", None) or {})

        t = time.perf_counter()
        prompts = self._load_prompts(config)
        timings.dataset_s = time.perf_counter() - t

        warmup = self._warmup(config, prompts, sampler)
        timings.warmup_s = warmup.duration_s
        if _torch_compile_requested(config):
            timings.compile_s = _compile_time(warmup.latencies_s)

        if config.warmup.thermal_floor_seconds > 0 and self.energy_backend.name == "none":
            say("thermal floor skipped: no energy is being measured on this machine")
        elif config.warmup.thermal_floor_seconds > 0:
            if sampler is not None:
                sampler.set_phase("thermal_floor")
            say(f"thermal floor: waiting {config.warmup.thermal_floor_seconds:g} s")
            t = time.perf_counter()
            self.sleep(config.warmup.thermal_floor_seconds)
            timings.thermal_floor_s = time.perf_counter() - t

        say(f"measuring {len(prompts)} prompts")
        if sampler is not None:
            sampler.set_phase("measurement")
            sampler.sample_now()
        self.engine.reset_peak_memory()
        self.engine.synchronize()
        self.energy_backend.begin()
        w0 = self.clock()
        p0 = time.perf_counter()
        records = self.engine.generate(prompts, config, phase="measurement")
        self.engine.synchronize()
        p1 = time.perf_counter()
        w1 = self.clock()
        energy = self.energy_backend.end()
        duration = p1 - p0
        timings.measurement_s = duration
        if sampler is not None:
            sampler.set_phase("cooldown")
            sampler.sample_now()
            sampler.stop()
            if sampler.error is not None:
                say(f"warning: sampler error: {sampler.error!r}")
        peak = self.engine.peak_memory_bytes()
        effective = self.engine.effective_parameters()

        result = self._assemble(
            config=config,
            environment=environment,
            records=records,
            energy=energy,
            baseline=baseline,
            duration=duration,
            window=(w0, w1),
            sampler=sampler,
            warmup=warmup,
            timings=timings,
            started=started,
            parameter_count=load_info.parameter_count,
            draft_parameter_count=load_info.draft_parameter_count,
            peak=peak,
            effective=effective,
        )
        timings.total_s = time.perf_counter() - t_start
        result = result.model_copy(update={"timing": timings})
        table = sampler.to_table() if sampler is not None and sampler.samples else None
        return MeasuredExperiment(result=result, timeseries=table)

    def _load_prompts(self, config: ExperimentConfig) -> list[Any]:
        loader = self.dataset_loader
        if loader is None:
            from llenergymeasure.datasets import load_prompts

            loader = load_prompts
        dataset: Any = config.dataset
        return list(loader(dataset, config.n, tokenizer=self.engine.tokenizer))

    def _warmup(
        self, config: ExperimentConfig, prompts: Sequence[Any], sampler: EnergySampler | None
    ) -> WarmupResult:
        wc = config.warmup
        batch = run_concurrency(config)
        warm_prompts = list(prompts[: max(1, min(batch, len(prompts)))])
        runs = wc.max_prompts if wc.convergence_detection else wc.n_warmup
        notes: list[str] = []
        if runs == 0 and _torch_compile_requested(config):
            # compilation happens in the first generate: keep it out of the measurement window
            runs = 1
            notes.append(
                "n_warmup=0 with pytorch.torch_compile: one warmup run forced so that "
                "compilation happens before the measurement window"
            )
            self.progress("warning: " + notes[-1])
        latencies: list[float] = []
        converged: bool | None = None
        cv: float | None = None
        if sampler is not None:
            sampler.set_phase("warmup")
        t0 = time.perf_counter()
        if runs > 0:
            self.progress(
                f"warmup: {'up to ' if wc.convergence_detection else ''}{runs} run(s) of "
                f"{len(warm_prompts)} prompt(s)"
            )
        for i in range(runs):
            s = time.perf_counter()
            self.engine.generate(warm_prompts, config, phase="warmup")
            self.engine.synchronize()
            latencies.append(time.perf_counter() - s)
            if wc.convergence_detection and len(latencies) >= max(3, wc.n_warmup):
                window = latencies[-3:]
                mean = statistics.fmean(window)
                cv = statistics.pstdev(window) / mean if mean > 0 else 0.0
                if cv <= wc.cv_target:
                    converged = True
                    break
            if wc.convergence_detection and i == runs - 1:
                converged = False
        return WarmupResult(
            runs=len(latencies),
            prompts_per_run=len(warm_prompts),
            duration_s=time.perf_counter() - t0,
            latencies_s=latencies,
            convergence_detection=wc.convergence_detection,
            converged=converged,
            final_cv=cv,
            thermal_floor_seconds=wc.thermal_floor_seconds,
            notes=notes,
        )

    def _assemble(
        self,
        *,
        config: ExperimentConfig,
        environment: Any,
        records: list[RequestRecord],
        energy: EnergyMeasurement,
        baseline: BaselineMeasurement | None,
        duration: float,
        window: tuple[float, float],
        sampler: EnergySampler | None,
        warmup: WarmupResult,
        timings: PhaseTimings,
        started: datetime,
        parameter_count: int,
        peak: int | None,
        effective: dict[str, Any],
        draft_parameter_count: int = 0,
    ) -> ExperimentResult:
        if len(records) != config.n:
            raise ExperimentError(
                f"engine returned {len(records)} request records for {config.n} prompts"
            )
        w0, w1 = window
        out_tokens = sum(r.output_tokens for r in records)
        in_tokens = sum(r.input_tokens for r in records)
        samples = sampler.samples if sampler is not None else []
        window_samples = [s for s in samples if w0 <= s.t <= w1]
        n_devices = len({s.device_index for s in samples})

        poll_j = energy.poll_energy_j
        if poll_j is None and sampler is not None and n_devices:
            parts = [sampler.poll_energy_j(w0, w1, d) for d in sampler.device_indices()]
            poll_j = (
                math.fsum(p for p in parts if p is not None)
                if all(p is not None for p in parts)
                else None
            )
        poll_source = energy.poll_power_source
        if poll_source is None and poll_j is not None and sampler is not None:
            poll_source = sampler.sensor.device_info(0).power_source
        counter_j = (
            math.fsum(d.counter_energy_j for d in energy.devices if d.counter_energy_j is not None)
            if any(d.counter_energy_j is not None for d in energy.devices)
            else None
        )
        diff_pct = energy.counter_vs_poll_diff_pct
        reference = counter_j if counter_j is not None else energy.total_energy_j
        if (
            diff_pct is None
            and reference
            and poll_j is not None
            and energy.method != "nvml_power_integration"
        ):
            diff_pct = (poll_j - reference) / reference * 100.0

        total = energy.total_energy_j if energy.available else None
        baseline_power = baseline.power_w if baseline is not None else None
        baseline_j = baseline_power * duration if baseline_power is not None else None
        adjusted = (
            adjusted_energy_j(total, baseline_power, duration)
            if total is not None and baseline_power is not None
            else None
        )
        notes = list(energy.notes)
        if adjusted is not None and adjusted < 0:
            notes.append(
                "energy_adjusted_j is negative: the idle baseline exceeded the measured draw"
            )

        breakdown = EnergyBreakdown(
            available=energy.available and total is not None,
            backend=energy.backend,
            backend_version=energy.backend_version,
            method=energy.method,
            total_j=total,
            per_device=energy.devices,
            counter_energy_j=counter_j,
            poll_energy_j=poll_j,
            counter_vs_poll_diff_pct=diff_pct,
            poll_power_source=poll_source,
            baseline=baseline,
            baseline_power_w=baseline_power,
            baseline_energy_j=baseline_j,
            adjusted_j=adjusted,
            notes=notes,
        )
        ttfts = [r.ttft_s for r in records if r.ttft_s is not None]
        itls = [x for r in records for x in r.itl_s]
        flops = (
            m.estimate_flops(
                parameter_count,
                in_tokens,
                out_tokens,
                draft_parameter_count=draft_parameter_count,
            )
            if parameter_count > 0
            else None
        )
        process_results: list[dict[str, Any]] = []
        owners = [0] * len(records)
        if isinstance(self.engine, ProcessReporter):
            process_results = self.engine.process_results()
            reported = self.engine.record_process_indices()
            if len(reported) == len(records):
                owners = reported
        carbon = m.estimate_carbon(
            total,
            intensity=self.settings.carbon_intensity_gco2_kwh,
            intensity_source=self.settings.carbon_intensity_source,
            pue=self.settings.datacenter_pue,
            pue_source=self.settings.datacenter_pue_source,
            location=self.settings.datacenter_location,
        )
        warnings = m.measurement_warnings(
            duration_s=duration,
            window_samples=window_samples,
            n_devices=n_devices,
            energy_available=breakdown.available,
            persistence_mode=environment.persistence_mode,
            counter_vs_poll_diff_pct=diff_pct,
            thermal_floor_seconds=config.warmup.thermal_floor_seconds,
        )
        from llenergymeasure.datasets import describe_dataset

        dataset_info: dict[str, Any]
        if isinstance(config.dataset, SyntheticDatasetConfig):
            dataset_info = {"kind": "synthetic", **config.dataset.model_dump()}
        else:
            try:
                dataset_info = describe_dataset(config.dataset)
            except Exception as exc:  # provenance is best-effort; the run already happened
                dataset_info = {"kind": "unknown", "name": str(config.dataset), "error": str(exc)}

        return ExperimentResult(
            llem_version=__version__,
            experiment_id=uuid.uuid4().hex[:12],
            started_at_utc=started,
            finished_at_utc=datetime.now(timezone.utc),
            config=config,
            measurement_config_hash=measurement_config_hash(config),
            effective_parameters=effective,
            dataset=dataset_info,
            energy_total_j=total,
            energy_adjusted_j=adjusted,
            energy_per_output_token_j=total / out_tokens
            if total is not None and out_tokens
            else None,
            energy_per_output_token_adjusted_j=(
                adjusted / out_tokens if adjusted is not None and out_tokens else None
            ),
            mean_power_w=total / duration if total is not None and duration > 0 else None,
            tokens_per_second=out_tokens / duration if duration > 0 else 0.0,
            requests_per_second=len(records) / duration if duration > 0 else 0.0,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            n_requests=len(records),
            duration_s=duration,
            latency=m.distribution([r.latency_s for r in records]),
            ttft=m.distribution(ttfts),
            itl=m.distribution(itls),
            peak_memory_bytes=peak,
            energy=breakdown,
            flops=flops,
            carbon=carbon,
            environment=environment,
            warmup=warmup,
            timing=timings,
            measurement_warnings=warnings,
            measurement_methodology="total",
            steady_state_window=m.steady_state_window(samples, w0, w1),
            warmup_excluded_samples=len([s for s in samples if s.phase == "warmup"]),
            timeseries_samples=len(samples),
            requests=[
                RequestResult(
                    index=r.index,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    latency_s=r.latency_s,
                    ttft_s=r.ttft_s,
                    batch_index=r.batch_index,
                    process_index=owner,
                )
                for r, owner in zip(records, owners, strict=True)
            ],
            process_results=process_results,
        )


def _torch_compile_requested(config: ExperimentConfig) -> bool:
    return bool(config.backend == "pytorch" and config.pytorch and config.pytorch.torch_compile)


def _compile_time(latencies: Sequence[float]) -> float | None:
    """First warmup run's excess over the median later run (all of it when it ran alone)."""
    if not latencies:
        return None
    if len(latencies) == 1:
        return latencies[0]
    return max(0.0, latencies[0] - statistics.median(latencies[1:]))


def default_components(
    config: ExperimentConfig, settings: MeasurementSettings
) -> tuple[InferenceBackend, EnergyBackend, GpuSensor | None]:
    """The real engine, energy backend and NVML sensor (None on a machine without NVML)."""
    from llenergymeasure.config.user_config import setting
    from llenergymeasure.energy.select import select_energy_backend
    from llenergymeasure.energy.sensors import NvmlSensor, nvml_available
    from llenergymeasure.engines.factory import create_engine

    engine = create_engine(config.backend, config)
    sensor: GpuSensor | None = None
    if nvml_available():
        from llenergymeasure.harness.parallel import data_parallel_nvml_indices

        # pytorch: measure exactly the GPUs its process(es) use - the first num_processes
        # visible ones, mapped by UUID - not idle GPUs that happen to be visible
        in_use = data_parallel_nvml_indices(config) if config.backend == "pytorch" else None
        sensor = NvmlSensor(devices=in_use or None)
    sampler = (
        EnergySampler(sensor, interval_ms=settings.sampling_interval_ms)
        if sensor is not None
        else None
    )
    choice = os.environ.get("LLEM_ENERGY_BACKEND") or setting("measurement.energy_backend")
    energy = select_energy_backend(cast(Any, choice), sensor=sensor, sampler=sampler)
    return engine, energy, sensor
