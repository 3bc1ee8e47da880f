"""An online run as the harness measures it: the idle baseline, the sampler, the files kept.

``baseline_step`` makes the ``measure_baseline`` callable that ``run_online`` calls once the
server is up and idle (the baseline is cached per server: ``baseline_context``);
``run_with_files`` runs ``run_online`` with the energy sampler going, in ``work_dir`` or a
temporary folder, and returns the run with the files to keep beside ``result.json``:
``online_requests.json`` (every request record, warmup ones included) and ``server.log`` (a
started server's output). With ``work_dir`` a failed run leaves the server log there, and
``online_requests.json`` too when every request failed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    get_or_measure_baseline,
)
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.online.run import SERVER_LOG_NAME, run_online
from llenergymeasure.online.run_result import OnlineRunFailed, OnlineRunResult
from llenergymeasure.online.server import ManagedServer
from llenergymeasure.results.models import PhaseTimings

__all__ = ["REQUESTS_FILE_NAME", "baseline_context", "baseline_step", "run_with_files"]

logger = logging.getLogger(__name__)

REQUESTS_FILE_NAME = "online_requests.json"


def baseline_context(config: ExperimentConfig) -> str:
    """The idle state an online baseline is taken in, for the baseline cache: the server up."""
    online = config.online
    assert online is not None
    server = online.endpoint or f"{config.backend} {config.model}"
    return f"online server up: {server}"


def baseline_step(
    config: ExperimentConfig,
    gpu: GpuSensor | None,
    *,
    sampling_interval_ms: int,
    ttl_s: float,
    cache: BaselineCache | None,
    sampler: EnergySampler | None,
    timings: PhaseTimings,
) -> Callable[[], BaselineMeasurement | None]:
    """``run_online``'s ``measure_baseline``: the idle baseline (when enabled and a sensor is
    there; its time in ``timings.baseline_s``), then the sampler's phase set to warmup."""
    online = config.online
    assert online is not None

    def measure_baseline() -> BaselineMeasurement | None:
        baseline = None
        if config.baseline.enabled and gpu is not None:
            logger.info("idle baseline with the server up (%g s)", config.baseline.duration_seconds)
            t = time.perf_counter()
            baseline = get_or_measure_baseline(
                gpu,
                config.baseline.duration_seconds,
                sampling_interval_ms,
                cache=cache,
                ttl_s=ttl_s,
                # idle with this server up: not an offline run's (no engine loaded yet)
                # nor another server's
                context=baseline_context(config),
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

    return measure_baseline


def run_with_files(
    config: ExperimentConfig,
    prompts: Sequence[str | Prompt],
    *,
    window: MeasurementWindow,
    sampler: EnergySampler | None,
    measure_baseline: Callable[[], BaselineMeasurement | None],
    work_dir: str | Path | None,
    model_source: str | None,
    server_factory: Callable[..., ManagedServer],
) -> tuple[OnlineRunResult, dict[str, bytes]]:
    """``run_online`` with ``sampler`` running; the run and the files to keep (module docstring).

    ``OnlineRunFailed`` when every request failed (with ``work_dir``, its records are written
    there first).
    """
    online = config.online
    assert online is not None
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
    return run, artifacts
