"""Measure one ``mode: online`` experiment with this machine's components; see ``measure_online``.

How an online run is represented: as an ``ExperimentResult`` like every other run, with
``online`` (``results.online.OnlineResult``: the load's setup, latency, goodput and energy per
request) filled in. One result type keeps ``llem run``, ``run_experiment``, studies (manifest,
statistics across cycles), ``results.parquet`` (the ``online_*`` columns) and ``llem report``
working unchanged; the headline fields hold the same window's figures:

- ``energy_*``, ``mean_power_w``: the energy backend over the window (first request sent to last
  token received) on the metered GPUs, adjusted by the idle baseline measured with the server up
  and idle before the load;
- ``n_requests`` = requests sent; ``requests``, ``output_tokens``, ``tokens_per_second``,
  ``requests_per_second``, ``latency``/``ttft``/``itl`` (seconds) count the successful requests;
  ``input_tokens`` is the servers' ``usage.prompt_tokens`` (0 when it does not report them);
- ``warmup``: the warmup requests, one at a time; ``timing.load_s``: the server's start until
  ready; ``flops``, ``peak_memory_bytes``: not known (the model runs in the server).

Beside ``result.json`` the run keeps ``server.log`` (a started server's output) and
``online_requests.json`` (every request record, warmup ones included), written by
``MeasuredExperiment.save``. With ``work_dir`` the server log is written there as the run goes,
so a failed run leaves it (and ``online_requests.json`` when every request failed) behind.

Online mode itself lives in ``online/`` (pre-flight, the server, the client, the load, the
metrics, the run); this module is the harness's side of it: the measurement settings, the
energy backend, the environment, the dataset's pre-flight and the result's assembly are the
harness's, shared with offline runs, so ``online/`` (which may not import the harness) leaves
them here.

Engine reuse does not apply: each online run starts and stops its own server (or uses the
endpoint), and nothing stays loaded in this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.energy.maths import energy_per
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.exceptions import PreFlightError
from llenergymeasure.gguf_files import gguf_model
from llenergymeasure.harness import metrics as m
from llenergymeasure.harness.assemble import (
    carbon_estimate,
    dataset_provenance,
    energy_breakdown,
)
from llenergymeasure.harness.environment import window_closed, window_opened
from llenergymeasure.harness.orchestrator import energy_backend_for
from llenergymeasure.harness.saving import MeasuredExperiment
from llenergymeasure.harness.settings import MeasurementSettings
from llenergymeasure.online.gpus import default_sensor, meter_server_gpus
from llenergymeasure.online.measured_run import baseline_step, run_with_files
from llenergymeasure.online.preflight import online_preflight
from llenergymeasure.online.run_result import OnlineRunResult
from llenergymeasure.online.server import ManagedServer, builtin_model_source
from llenergymeasure.results.models import EnergyBreakdown, PhaseTimings

__all__ = ["measure_online", "online_result"]

logger = logging.getLogger(__name__)


def _prepare_dataset(config: ExperimentConfig) -> tuple[Any, list[str]]:
    """The dataset read and checked once, in pre-flight (a ``PreparedDataset``), or its
    problems."""
    from llenergymeasure.exceptions import ConfigError
    from llenergymeasure.harness.inputs import dataset_problem, prepare_run_dataset

    try:
        return prepare_run_dataset(config), []
    except ConfigError as exc:
        return None, [dataset_problem(exc)]


def _prompts(config: ExperimentConfig, prepared: Any, model_source: str | None) -> list[Prompt]:
    tokenizer: Any = None
    if prepared.rows is None or prepared.chat_template:
        from transformers import AutoTokenizer  # synthetic prompts are sized in tokens

        gguf = gguf_model(config.model, config.passthrough_kwargs)
        if gguf is not None:
            tokenizer = AutoTokenizer.from_pretrained(gguf.source, gguf_file=gguf.filename)
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_source or config.model)
    return prepared.prompts(tokenizer)


def _result_warnings(
    run: OnlineRunResult,
    breakdown: EnergyBreakdown,
    environment: Any,
    sampler: EnergySampler | None,
    window: tuple[float, float],
) -> list[str]:
    """``measurement_warnings`` of an online run: the harness's checks, then online mode's."""
    samples = sampler.samples if sampler is not None else []
    w0, w1 = window
    cpu = environment.cpu_conditions
    warnings = m.measurement_warnings(
        duration_s=run.metrics.duration_s,
        window_samples=[s for s in samples if w0 <= s.t <= w1],
        n_devices=len({s.device_index for s in samples}),
        energy_available=breakdown.available,
        persistence_mode=environment.persistence_mode,
        counter_vs_poll_diff_pct=breakdown.counter_vs_poll_diff_pct,
        thermal_floor_seconds=0.0,
        host_oversubscribed=bool(cpu and cpu.oversubscribed),
    )
    # no thermal floor in online mode: the server runs its warmup requests right before the load
    warnings = [w for w in warnings if w != "thermal_floor_below_recommended"]
    return warnings + run.warning_codes()


def online_result(
    config: ExperimentConfig,
    run: OnlineRunResult,
    *,
    settings: MeasurementSettings,
    environment: Any,
    sampler: EnergySampler | None,
    window: tuple[float, float],
    timings: Any,
    started: datetime,
    dataset: dict[str, Any] | None = None,
) -> Any:
    """The ``ExperimentResult`` of an online run (see the module docstring for the fields).

    ``dataset``: the dataset's provenance as pre-flight recorded it (None: described now).
    """
    import uuid

    from llenergymeasure._version import __version__
    from llenergymeasure.config.hashing import measurement_config_hash
    from llenergymeasure.results.models import ExperimentResult

    metrics = run.metrics
    ok = [r for r in run.load.records if r.ok]
    duration = metrics.duration_s
    energy = run.energy or EnergyMeasurement(
        backend="none",
        method="unavailable",
        total_energy_j=None,
        available=False,
        duration_s=duration,
    )
    window_s = energy.duration_s if run.energy is not None and energy.duration_s else duration
    breakdown = energy_breakdown(energy, run.baseline, window_s, sampler, window)
    samples = sampler.samples if sampler is not None else []
    total, adjusted = breakdown.total_j, breakdown.adjusted_j
    out_tokens = metrics.output_tokens
    return ExperimentResult(
        llem_version=__version__,
        experiment_id=uuid.uuid4().hex[:12],
        started_at_utc=started,
        finished_at_utc=datetime.now(timezone.utc),
        config=config,
        measurement_config_hash=measurement_config_hash(config),
        effective_parameters=run.effective_parameters(),
        dataset=dataset if dataset is not None else dataset_provenance(config),
        energy_total_j=total,
        energy_adjusted_j=adjusted,
        energy_per_output_token_j=energy_per(total, out_tokens),
        energy_per_output_token_adjusted_j=energy_per(adjusted, out_tokens),
        mean_power_w=total / window_s if total is not None and window_s > 0 else None,
        tokens_per_second=metrics.output_throughput_tok_per_s,
        requests_per_second=metrics.request_throughput_per_s,
        input_tokens=metrics.prompt_tokens or 0,
        output_tokens=out_tokens,
        n_requests=metrics.n_requests,
        duration_s=duration,
        latency=m.distribution([r.e2e_s for r in ok]),
        ttft=m.distribution([t for r in ok if (t := r.ttft_s) is not None]),
        itl=m.distribution([gap for r in ok for gap in r.itls_s]),
        peak_memory_bytes=None,
        energy=breakdown,
        flops=None,
        carbon=carbon_estimate(total, settings),
        environment=environment,
        warmup=run.warmup_result(),
        timing=timings,
        measurement_warnings=_result_warnings(run, breakdown, environment, sampler, window),
        timeseries_samples=len(samples),
        warmup_excluded_samples=len([s for s in samples if s.phase == "warmup"]),
        requests=run.request_results(),
        online=run.summary(),
    )


def _preflight(
    config: ExperimentConfig, energy: EnergyBackend, gpu: GpuSensor | None, timings: PhaseTimings
) -> tuple[Any, Any]:
    """Pre-flight (``PreFlightError`` naming every problem), then the environment's snapshot:
    the prepared dataset and the snapshot."""
    logger.info("pre-flight checks")
    t = time.perf_counter()
    problems = online_preflight(config, energy)
    prepared, dataset_problems = _prepare_dataset(config)
    problems += dataset_problems
    if problems:
        raise PreFlightError(problems)
    timings.preflight_s = time.perf_counter() - t
    from llenergymeasure.harness.environment import capture_environment

    t = time.perf_counter()
    environment = capture_environment(config.backend, gpu)
    timings.environment_s = time.perf_counter() - t
    return prepared, environment


def _window(
    energy: EnergyBackend, environment: Any
) -> tuple[MeasurementWindow, EnergySampler | None]:
    """The energy window of the load, and the backend's sampler (None without one)."""
    sampler = getattr(energy, "sampler", None)
    if not isinstance(sampler, EnergySampler):
        sampler = None
    # no device to synchronise: the server runs the work in its own processes
    window = MeasurementWindow(
        energy,
        sampler=sampler,
        before_open=lambda: window_opened(environment),
        after_close=lambda: window_closed(environment),
    )
    return window, sampler


def measure_online(
    config: ExperimentConfig,
    *,
    baseline_cache: BaselineCache | None = None,
    work_dir: str | Path | None = None,
    settings: MeasurementSettings | None = None,
    sensor: GpuSensor | Callable[[ExperimentConfig], GpuSensor | None] | None = default_sensor,
    server_factory: Callable[..., ManagedServer] = ManagedServer,
) -> MeasuredExperiment:
    """Measure an online ``config``: pre-flight, idle baseline, load, result (module docstring).

    ``sensor`` is the GPU sensor to meter (or a function of the config that opens one; the
    default opens NVML over ``online.gpus``; it is closed afterwards). ``PreFlightError`` before
    anything starts when the run cannot go ahead; ``OnlineRunFailed`` when every request failed.
    """
    settings = settings or MeasurementSettings.from_user_config()
    online = config.online
    if config.mode != "online" or online is None:
        raise PreFlightError(["measure_online needs an experiment with mode: online"])
    timings = PhaseTimings()
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    gpu = sensor(config) if callable(sensor) else sensor
    owns_sensor = callable(sensor)
    try:
        energy = energy_backend_for(settings, gpu)
        meter_server_gpus(energy, online)
        prepared, environment = _preflight(config, energy, gpu, timings)
        model_source = builtin_model_source(config)
        t = time.perf_counter()
        prompts = _prompts(config, prepared, model_source)
        timings.dataset_s = time.perf_counter() - t

        window, sampler = _window(energy, environment)
        measure_baseline = baseline_step(
            config,
            gpu,
            sampling_interval_ms=settings.sampling_interval_ms,
            ttl_s=settings.baseline_ttl_s,
            cache=baseline_cache,
            sampler=sampler,
            timings=timings,
        )
        run, artifacts = run_with_files(
            config,
            prompts,
            window=window,
            sampler=sampler,
            measure_baseline=measure_baseline,
            work_dir=work_dir,
            model_source=model_source,
            server_factory=server_factory,
        )
        for note in run.warnings:
            logger.warning("%s", note)
        timings.load_s = run.server_ready_s or 0.0
        timings.warmup_s = sum(r.e2e_s for r in run.load.warmup_records)
        timings.measurement_s = run.metrics.duration_s
        result = online_result(
            config,
            run,
            settings=settings,
            environment=environment,
            sampler=sampler,
            window=window.reading.span,
            timings=timings,
            started=started,
            dataset=dict(prepared.provenance) if prepared.rows is not None else None,
        )
        timings.total_s = time.perf_counter() - t_start
        result = result.model_copy(update={"timing": timings})
        table = sampler.to_table() if sampler is not None and sampler.samples else None
        return MeasuredExperiment(result=result, timeseries=table, artifacts=artifacts)
    finally:
        if owns_sensor and gpu is not None:
            gpu.close()
