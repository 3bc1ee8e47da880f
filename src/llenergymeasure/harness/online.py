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

Engine reuse does not apply: each online run starts and stops its own server (or uses the
endpoint), and nothing stays loaded in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.base import EnergyBackend
from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    get_or_measure_baseline,
)
from llenergymeasure.energy.maths import energy_per
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import BackendError, PreFlightError
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
from llenergymeasure.online.run import (
    SERVER_LOG_NAME,
    OnlineRunFailed,
    OnlineRunResult,
    api_key_problems,
    metered_gpu_indices,
    run_online,
)
from llenergymeasure.online.server import ManagedServer

__all__ = [
    "REQUESTS_FILE_NAME",
    "SERVING_EXTRA_INSTALL",
    "measure_online",
    "online_preflight",
    "online_result",
    "zeus_gpu_indices",
]

logger = logging.getLogger(__name__)

REQUESTS_FILE_NAME = "online_requests.json"
SERVING_EXTRA_INSTALL = "pip install 'transformers[serving]'"
_SERVER_PROGRAMS = {"vllm": "vllm", "pytorch": "transformers", "tensorrt": "trtllm-serve"}
_SERVING_MODULES = ("fastapi", "uvicorn", "openai")


def _program_found(name: str) -> bool:
    return shutil.which(name) is not None or (Path(sys.executable).parent / name).exists()


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def online_preflight(config: ExperimentConfig, energy: EnergyBackend | None) -> list[str]:
    """Every problem that would stop an online run, found before anything starts.

    A started server needs its program (``vllm``, ``transformers``, ``trtllm-serve``); the
    PyTorch ``transformers serve`` also needs transformers' ``serving`` extra; the variable
    named by ``online.api_key_env`` must be set.
    """
    online = config.online
    assert online is not None
    problems = api_key_problems(online)
    if online.starts_server:
        program = _SERVER_PROGRAMS[config.backend]
        if not _program_found(program):
            problems.append(
                f"the {config.backend} server program {program!r} is not installed here "
                "(online mode starts it; or set online.endpoint to a running server)"
            )
        if config.backend == "pytorch":
            missing = [name for name in _SERVING_MODULES if not _module_found(name)]
            if missing:
                problems.append(
                    "transformers serve needs transformers' serving extra (missing: "
                    f"{', '.join(missing)}); install it with: {SERVING_EXTRA_INSTALL}"
                )
    # the dataset is read and checked by measure_online's pre-flight (_prepare_dataset)
    if energy is not None and not energy.is_available():
        problems.append(f"energy backend '{energy.name}' is not available on this machine")
    return problems


def _nvml_uuids() -> list[str]:
    from llenergymeasure.energy.devices import import_pynvml, nvml_str

    lib = import_pynvml()
    lib.nvmlInit()
    try:
        count = int(lib.nvmlDeviceGetCount())
        return [
            nvml_str(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(i))) for i in range(count)
        ]
    finally:
        with contextlib.suppress(Exception):
            lib.nvmlShutdown()


def zeus_gpu_indices(
    online: OnlineConfig,
    uuids_by_index: Sequence[str],
    cuda_visible_devices: str | None,
) -> list[int] | None:
    """What Zeus meters for ``online.gpus``: their CUDA ordinals in this process; None = all.

    Zeus counts GPUs after this process's ``CUDA_VISIBLE_DEVICES`` (``cuda_visible_devices``),
    while ``online.gpus`` names the server's GPUs by NVML index or UUID. ``BackendError`` when
    one of them is hidden from this process (Zeus cannot meter it; the NVML backend can).
    """
    from llenergymeasure.energy.devices import visible_nvml_indices

    metered = metered_gpu_indices(online, uuids_by_index)
    if metered is None:
        return None
    visible = visible_nvml_indices(cuda_visible_devices, uuids_by_index)
    hidden = [i for i in metered if i not in visible]
    if hidden:
        raise BackendError(
            f"online.gpus {hidden} (NVML indices) are not visible to this process "
            f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices}), so Zeus cannot meter them",
            hint="unset CUDA_VISIBLE_DEVICES for llem or set measurement.energy_backend: nvml",
        )
    return [visible.index(i) for i in metered]


def _baseline_context(config: ExperimentConfig) -> str:
    """The idle state an online baseline is taken in, for the baseline cache: the server up."""
    online = config.online
    assert online is not None
    server = online.endpoint or f"{config.backend} {config.model}"
    return f"online server up: {server}"


def _default_sensor(config: ExperimentConfig) -> GpuSensor | None:
    """NVML over the GPUs to meter (``online.gpus``; all visible when unset), or None."""
    from llenergymeasure.energy.devices import nvml_available
    from llenergymeasure.energy.sensors import NvmlSensor

    if not nvml_available():
        return None
    assert config.online is not None
    indices = metered_gpu_indices(config.online, _nvml_uuids())
    return NvmlSensor(devices=indices)


def _model_source(config: ExperimentConfig) -> str | None:
    """The local folder of a ``builtin:`` model that llem's own server will load."""
    from llenergymeasure.engines.builtin import is_builtin_model, resolve_builtin_model

    assert config.online is not None
    if config.online.starts_server and is_builtin_model(config.model):
        return str(resolve_builtin_model(config.model))
    return None


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
    from llenergymeasure.energy.base import EnergyMeasurement
    from llenergymeasure.results.models import ExperimentResult, RequestResult, WarmupResult

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
    w0, w1 = window
    cpu = environment.cpu_conditions
    warnings = m.measurement_warnings(
        duration_s=duration,
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
    if metrics.n_failed:
        warnings.append("online_requests_failed")
    if run.load.schedule_warnings():
        warnings.append("online_client_behind_schedule")
    if metrics.n_ok_without_token_chunks:
        warnings.append("online_token_chunks_missing")  # TTFT/ITL leave those requests out
    total, adjusted = breakdown.total_j, breakdown.adjusted_j
    out_tokens = metrics.output_tokens
    warm = run.load.warmup_records
    return ExperimentResult(
        llem_version=__version__,
        experiment_id=uuid.uuid4().hex[:12],
        started_at_utc=started,
        finished_at_utc=datetime.now(timezone.utc),
        config=config,
        measurement_config_hash=measurement_config_hash(config),
        effective_parameters={
            "mode": "online",
            "endpoint": run.endpoint,
            "request_model": run.request_model,
            "api": run.api,
            "server_command": run.server_command,
            "ignore_eos_sent": run.ignore_eos_sent,
            "continuous_usage_sent": run.continuous_usage_sent,
        },
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
        warmup=WarmupResult(
            runs=len(warm),
            prompts_per_run=1,
            duration_s=sum(r.e2e_s for r in warm),
            latencies_s=[r.e2e_s for r in warm],
            convergence_detection=False,
            thermal_floor_seconds=0.0,
            notes=["online: warmup requests sent one at a time before the load"],
            prompt_source="llem's warmup prompts" if warm else None,
        ),
        timing=timings,
        measurement_warnings=warnings,
        timeseries_samples=len(samples),
        warmup_excluded_samples=len([s for s in samples if s.phase == "warmup"]),
        requests=[
            RequestResult(
                index=r.index,
                input_tokens=r.prompt_tokens_usage or 0,
                output_tokens=r.output_tokens,
                latency_s=r.e2e_s,
                ttft_s=r.ttft_s,
                batch_index=0,
            )
            for r in ok
        ],
        online=run.summary(),
    )


def measure_online(
    config: ExperimentConfig,
    *,
    baseline_cache: BaselineCache | None = None,
    work_dir: str | Path | None = None,
    settings: MeasurementSettings | None = None,
    sensor: GpuSensor | Callable[[ExperimentConfig], GpuSensor | None] | None = _default_sensor,
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
    from llenergymeasure.results.models import PhaseTimings

    timings = PhaseTimings()
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    gpu = sensor(config) if callable(sensor) else sensor
    owns_sensor = callable(sensor)
    try:
        energy = energy_backend_for(settings, gpu)
        if (
            isinstance(energy, ZeusEnergyBackend)
            and energy.gpu_indices is None
            and online.gpus is not None
        ):
            # Zeus meters every GPU this process sees unless told: meter the server's, as the
            # sensor (and so the idle baseline) does
            from llenergymeasure.energy.devices import effective_cuda_visible_devices

            energy.gpu_indices = zeus_gpu_indices(
                online, _nvml_uuids(), effective_cuda_visible_devices()
            )
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

        model_source = _model_source(config)
        t = time.perf_counter()
        prompts = _prompts(config, prepared, model_source)
        timings.dataset_s = time.perf_counter() - t

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

        def measure_baseline() -> BaselineMeasurement | None:
            baseline = None
            if config.baseline.enabled and gpu is not None:
                logger.info(
                    "idle baseline with the server up (%g s)", config.baseline.duration_seconds
                )
                t = time.perf_counter()
                baseline = get_or_measure_baseline(
                    gpu,
                    config.baseline.duration_seconds,
                    settings.sampling_interval_ms,
                    cache=baseline_cache,
                    ttl_s=settings.baseline_ttl_s,
                    # idle with this server up: not an offline run's (no engine loaded yet)
                    # nor another server's
                    context=_baseline_context(config),
                )
                timings.baseline_s = time.perf_counter() - t
            if sampler is not None:
                sampler.set_phase("warmup")
            cap = online.max_concurrency
            logger.info(
                "sending %d warmup + %d requests at %s req/s%s",
                online.n_warmup_requests,
                config.n,
                online.request_rate,
                f", at most {cap} in flight" if cap else "",
            )
            return baseline

        if online.starts_server:
            logger.info("starting the %s server for %s", config.backend, config.model)
        else:
            logger.info("measuring the server at %s", online.endpoint)
        with contextlib.ExitStack() as stack:
            out = Path(work_dir) if work_dir is not None else None
            if out is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llem-online-")))
            if sampler is not None:
                sampler.set_phase("load")
                sampler.start()
                stack.callback(lambda: sampler.stop() if sampler.running else None)
            try:
                run = run_online(
                    config,
                    prompts,
                    output_dir=out,
                    window=window,
                    measure_baseline=measure_baseline,
                    model_source=model_source,
                    server_factory=server_factory,
                )
            except OnlineRunFailed as exc:
                if work_dir is not None:
                    from llenergymeasure.files import write_json

                    write_json(out / REQUESTS_FILE_NAME, exc.result, base=out, indent=1)
                raise
            if sampler is not None and sampler.running:
                sampler.stop()
            artifacts = {REQUESTS_FILE_NAME: run.model_dump_json(indent=1).encode()}
            log = out / SERVER_LOG_NAME
            if run.server_log is not None and log.is_file():
                artifacts[SERVER_LOG_NAME] = log.read_bytes()
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
