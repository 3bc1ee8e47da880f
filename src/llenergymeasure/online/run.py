"""One online measurement: server, idle baseline, warmup, load under the energy window, metrics.

``run_online(config, prompts, ...)`` for an experiment with ``mode: online``:

1. the server: ``online.endpoint`` as given, or the engine's own server started from the engine
   fields (``server_launch``) in its own process group, its log at ``output_dir/server.log``,
   waited for on its health endpoint;
2. the idle baseline: ``measure_baseline()`` (if given) with the server up and idle, before any
   request;
3. the load: ``online.n_warmup_requests`` warmup requests one at a time (never the measured
   prompts), then ``config.n`` streamed requests on the seeded arrival schedule under
   ``max_concurrency``, each asking for its prompt's new-token limit
   (``ExperimentConfig.max_new_tokens_for``); the energy window
   (``energy.window.MeasurementWindow``) opens just before the first measured send and closes
   just after the last response;
4. the metrics (``OnlineMetrics``) and, for a started server, its clean stop.

Per-request failures are counted, not fatal; when every measured request fails the run raises
``OnlineRunFailed`` carrying the full result (nothing is lost). A started server that exits
during the load is reported in ``warnings``. ``harness.online.measure_online`` builds the energy
backend for ``online.gpus`` and the baseline callable from its sensor (``online.measured_run``),
and turns the result into an ``ExperimentResult`` (``llem run``, ``run_experiment`` and
studies go through it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.online.arrivals import arrival_offsets
from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.load import LoadRun, drive_load
from llenergymeasure.online.metrics import OnlineMetrics, compute_online_metrics
from llenergymeasure.online.preflight import check_endpoint, online_api_key
from llenergymeasure.online.records import RequestRecord, StreamRequest
from llenergymeasure.online.run_result import OnlineRunFailed, OnlineRunResult
from llenergymeasure.online.server import ManagedServer, free_port, server_launch

__all__ = ["SERVER_LOG_NAME", "run_online"]

SERVER_LOG_NAME = "server.log"


@dataclass
class _Plan:
    """What every request of one run shares, settled before the server starts."""

    config: ExperimentConfig
    online: OnlineConfig
    request_model: str
    api_key: str | None
    sampling: dict[str, Any]
    max_tokens: int
    ignore_eos: bool
    continuous_usage: bool
    warnings: list[str]


def _usage_warnings(records: Sequence[RequestRecord]) -> list[str]:
    """A warning when servers reported token counts that could not be true."""
    rejected = [r for r in records if r.usage_rejected is not None]
    if not rejected:
        return []
    return [
        f"{len(rejected)} of {len(records)} requests reported a usage that cannot be true "
        f"(first: {rejected[0].usage_rejected}): their token counts come from the stream"
    ]


def _sampling(config: ExperimentConfig) -> dict[str, Any]:
    dec = config.decoder
    if dec.decoding_strategy == "beam":
        raise ConfigError(
            "decoder.decoding_strategy: beam is not available in online mode",
            hint="use greedy or sampling for mode: online",
        )
    if dec.decoding_strategy == "greedy":
        return {"temperature": 0.0}
    return {"temperature": dec.temperature, "top_p": dec.top_p}


def _token_chunk_warnings(metrics: OnlineMetrics, continuous_usage: bool) -> list[str]:
    """A warning when completed requests streamed tokens the client could not see arrive."""
    silent = metrics.n_ok_without_token_chunks or 0
    if not silent:
        return []
    cause = (
        "continuous usage was asked for, but the server sent no running token count on its chunks"
        if continuous_usage
        else "the server may stream tokens that decode to empty text: set "
        "online.continuous_usage: true if it takes stream_options.continuous_usage_stats "
        "(vLLM, SGLang, trtllm-serve)"
    )
    return [
        f"{silent} of {metrics.n_ok} requests streamed no chunk with tokens although the server "
        f"counted output tokens: TTFT and ITL cover only the other {metrics.n_ok - silent}; "
        + cause
    ]


def _warmup_prompts(n: int) -> list[str]:
    # Never the measured prompts (they would warm a prefix cache for the window).
    return [f"Warmup request {i}: describe the weather in one sentence." for i in range(n)]


def run_online(
    config: ExperimentConfig,
    prompts: Sequence[str | Prompt],
    *,
    output_dir: str | Path,
    energy: EnergyBackend | None = None,
    window: MeasurementWindow | None = None,
    measure_baseline: Callable[[], BaselineMeasurement | None] | None = None,
    model_source: str | None = None,
    warmup_prompts: Sequence[str] | None = None,
    server_factory: Callable[..., ManagedServer] = ManagedServer,
) -> OnlineRunResult:
    """Run one online measurement (see the module docstring); blocking.

    ``prompts`` are the dataset's prompts (the first ``config.n`` are sent; a ``Prompt``'s own
    ``max_new_tokens`` is its request's limit). ``energy``: the backend to meter the load with
    (a plain window around it), or ``window``: the measurement window itself (with its sampler;
    the harness passes one). ``model_source`` replaces ``config.model`` on a started server's
    command line (e.g. the local folder of a ``builtin:`` model). ``server_factory`` builds the
    ``ManagedServer`` (tests inject one).
    """
    online = config.online
    if config.mode != "online" or online is None:
        raise ConfigError("run_online needs an experiment with mode: online and an online: section")
    if len(prompts) < config.n:
        raise ConfigError(
            f"n={config.n} requests but only {len(prompts)} prompts",
            hint="lower n or use a larger dataset",
        )
    if energy is not None and window is not None:
        raise ValueError("run_online takes an energy backend or a window, not both")
    if window is None and energy is not None:
        window = MeasurementWindow(energy)
    sampling = _sampling(config)
    api_key = online_api_key(online)
    server, plan = _plan(
        config, online, sampling, api_key, Path(output_dir), model_source, server_factory
    )

    def measure(endpoint: str) -> OnlineRunResult:
        return _measure_at(endpoint, plan, prompts, window, measure_baseline, warmup_prompts)

    if server is None:
        assert online.endpoint is not None
        result = measure(online.endpoint)
    else:
        result = _measure_with_server(server, measure)
    if result.metrics.n_ok == 0:
        raise _all_failed(result, plan.request_model)
    return result


def _plan(
    config: ExperimentConfig,
    online: OnlineConfig,
    sampling: dict[str, Any],
    api_key: str | None,
    out: Path,
    model_source: str | None,
    server_factory: Callable[..., ManagedServer],
) -> tuple[ManagedServer | None, _Plan]:
    """The server to start (None: ``online.endpoint`` is measured) and what its requests share."""
    max_tokens = config.max_new_tokens_for(None)
    if online.starts_server:
        settings = online.effective_server
        port = settings.port if settings.port is not None else free_port(settings.host)
        launch = server_launch(config, host=settings.host, port=port, model_source=model_source)
        server: ManagedServer | None = server_factory(
            launch.argv,
            host=settings.host,
            port=port,
            log_path=out / SERVER_LOG_NAME,
            startup_timeout_s=settings.startup_timeout_s,
            env=launch.env,
        )
        request_model = launch.request_model
        supports_ignore_eos = launch.supports_ignore_eos
        launch_notes = list(launch.notes)
    else:
        server = None
        request_model = online.served_model_name or config.model
        supports_ignore_eos = True
        launch_notes = []

    warnings: list[str] = list(launch_notes)
    continuous_usage = online.continuous_usage_for(config.backend)
    ignore_eos = config.decoder.ignore_eos and supports_ignore_eos
    if config.decoder.ignore_eos and not supports_ignore_eos:
        warnings.append(
            f"decoder.ignore_eos is not sent: the {config.backend} server does not take it, so "
            "outputs may stop before max_new_tokens"
        )
    plan = _Plan(
        config=config,
        online=online,
        request_model=request_model,
        api_key=api_key,
        sampling=sampling,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        continuous_usage=continuous_usage,
        warnings=warnings,
    )
    return server, plan


def _measure_with_server(
    server: ManagedServer, measure: Callable[[str], OnlineRunResult]
) -> OnlineRunResult:
    """Start ``server``, measure it once ready, stop it; the result says how it went."""
    server.start()
    try:
        ready_s = server.wait_ready()
        result = measure(server.base_url)
        # Lost connections may mean the server died: give its exit a moment to land.
        lost = any(
            (r.error or "").startswith(("connection", "stream ended")) for r in result.load.records
        )
        code = server.exit_code(wait_s=2.0 if lost else 0.0)
        if code is not None:
            result.warnings.append(
                f"the server exited with code {code} during the load; see {server.log_path}"
            )
    finally:
        server.stop()
    result.server_command = list(server.argv)
    result.server_log = str(server.log_path)
    result.server_ready_s = ready_s
    return result


def _all_failed(result: OnlineRunResult, request_model: str) -> OnlineRunFailed:
    first = next((r.error for r in result.load.records if r.error), None)
    return OnlineRunFailed(
        f"all {result.metrics.n_requests} requests failed: {result.metrics.errors}"
        + (f" (first: {first})" if first else ""),
        result,
        hint=(
            f"see the server log {result.server_log}"
            if result.server_log
            else f"is {result.endpoint} an OpenAI-compatible server serving {request_model!r}?"
        ),
    )


def _requests(
    plan: _Plan, prompts: Sequence[str | Prompt], warmup_prompts: Sequence[str] | None
) -> tuple[list[StreamRequest], list[StreamRequest]]:
    """The measured requests (the first ``config.n`` prompts) and the warmup ones."""
    config, online = plan.config, plan.online
    max_tokens, ignore_eos = plan.max_tokens, plan.ignore_eos
    requests = [
        StreamRequest(p, max_tokens, ignore_eos)
        if isinstance(p, str)
        else StreamRequest(p.text, config.max_new_tokens_for(p.max_new_tokens), ignore_eos)
        for p in prompts[: config.n]
    ]
    warm = [
        StreamRequest(p, max_tokens, ignore_eos)
        for p in (
            warmup_prompts[: online.n_warmup_requests]
            if warmup_prompts is not None
            else _warmup_prompts(online.n_warmup_requests)
        )
    ]
    return requests, warm


def _measure_at(
    endpoint: str,
    plan: _Plan,
    prompts: Sequence[str | Prompt],
    window: MeasurementWindow | None,
    measure_baseline: Callable[[], BaselineMeasurement | None] | None,
    warmup_prompts: Sequence[str] | None,
) -> OnlineRunResult:
    """Check ``endpoint``, take the idle baseline, drive the load in the window, sum it up."""
    config, online, warnings = plan.config, plan.online, plan.warnings
    warnings.extend(
        check_endpoint(
            endpoint, plan.request_model, timeout_s=online.preflight_timeout_s, api_key=plan.api_key
        )
    )
    client = OpenAIStreamClient(
        endpoint,
        plan.request_model,
        api=online.api,
        timeout_s=online.request_timeout_s,
        include_usage=online.include_usage,
        continuous_usage=plan.continuous_usage,
        sampling=plan.sampling,
        api_key=plan.api_key,
    )
    baseline = measure_baseline() if measure_baseline is not None else None
    requests, warm = _requests(plan, prompts, warmup_prompts)
    offsets = arrival_offsets(
        config.n,
        online.rate_per_s,
        online.arrival,
        burstiness=online.effective_burstiness,
        seed=online.seed,
    )
    load = drive_load(
        client,
        requests,
        offsets,
        max_concurrency=online.max_concurrency,
        warmup=warm,
        on_window_start=window.open if window is not None else None,
        on_window_end=window.close if window is not None else None,
    )
    energy_m: EnergyMeasurement | None = window.reading.energy if window is not None else None
    metrics = _metrics(load, online, energy_m, baseline)
    warnings.extend(_load_warnings(load, metrics, plan.continuous_usage))
    return OnlineRunResult(
        endpoint=endpoint,
        request_model=plan.request_model,
        api=online.api,
        arrival=online.arrival,
        burstiness=online.effective_burstiness if online.arrival == "gamma" else None,
        request_rate=online.request_rate,
        max_concurrency=online.max_concurrency,
        max_tokens=plan.max_tokens,
        ignore_eos_sent=plan.ignore_eos,
        continuous_usage_sent=plan.continuous_usage,
        baseline=baseline,
        energy=energy_m,
        metrics=metrics,
        load=load,
        warnings=warnings,
    )


def _metrics(
    load: LoadRun,
    online: OnlineConfig,
    energy_m: EnergyMeasurement | None,
    baseline: BaselineMeasurement | None,
) -> OnlineMetrics:
    """The load's metrics, with the window's energy and the idle baseline when measured."""
    energy_j = energy_m.total_energy_j if energy_m is not None else None
    load_s = load.duration_s if load.duration_s > 0 else math.ulp(1.0)
    energy_s = energy_m.duration_s if energy_m is not None and energy_m.duration_s > 0 else None
    return compute_online_metrics(
        load.records,
        window_s=load_s,
        slo=online.slo,
        energy_j=energy_j,
        baseline_power_w=baseline.power_w if baseline is not None else None,
        energy_window_s=energy_s if energy_j is not None else None,
    )


def _load_warnings(load: LoadRun, metrics: OnlineMetrics, continuous_usage: bool) -> list[str]:
    """What went wrong in the load: schedule, failed warmups and requests, token counts."""
    warnings = list(load.schedule_warnings())
    failed_warmups = [w for w in load.warmup_records if not w.ok]
    if failed_warmups:
        warnings.append(
            f"{len(failed_warmups)} of {len(load.warmup_records)} warmup requests failed "
            f"(first: {failed_warmups[0].error})"
        )
    if metrics.n_failed:
        warnings.append(
            f"{metrics.n_failed} of {metrics.n_requests} requests failed: {metrics.errors}"
        )
    warnings.extend(_token_chunk_warnings(metrics, continuous_usage))
    warnings.extend(_usage_warnings(load.records))
    return warnings
