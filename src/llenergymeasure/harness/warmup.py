"""The warmup before the measurement window: how many runs, over which prompts, until the
latencies converge, and the compile time the first run reveals.

The orchestrator calls these and does the logging; nothing here runs inside a window.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets.warmup import WarmupPrompts
from llenergymeasure.engines.base import WARMUP_PHASE, InferenceBackend

__all__ = [
    "FORCED_COMPILE_WARMUP_NOTE",
    "WarmupRuns",
    "compile_time",
    "planned_warmup_runs",
    "run_warmup",
    "warmup_prompts_for",
]

FORCED_COMPILE_WARMUP_NOTE = (
    "n_warmup=0 with pytorch.torch_compile: one warmup run forced so that "
    "compilation happens before the measurement window"
)


def planned_warmup_runs(
    config: ExperimentConfig, engine: InferenceBackend
) -> tuple[int, list[str]]:
    """The most warmup runs ``config`` asks for, and a note when one is forced: an engine that
    compiles in its first ``generate`` gets one run, to keep compilation out of the window."""
    wc = config.warmup
    runs = wc.max_prompts if wc.convergence_detection else wc.n_warmup
    if runs == 0 and engine.compiles_on_first_run(config):
        return 1, [FORCED_COMPILE_WARMUP_NOTE]
    return runs, []


def warmup_prompts_for(
    config: ExperimentConfig, prompts: Sequence[Any], tokenizer: Any, prepared: Any = None
) -> WarmupPrompts:
    """As many prompts as the run keeps in flight (at most n), never the measured ones.

    ``prepared``: the ``PreparedDataset`` pre-flight read (None: an injected dataset loader,
    whose prompts are described from the config).
    """
    from llenergymeasure.datasets.warmup import warmup_prompts

    k = max(1, min(run_concurrency(config), len(prompts)))
    dataset: Any = config.dataset
    rows_after, formatter = None, None
    if prepared is not None:
        rows_after = prepared.rows_after()
        formatter = prepared.formatter(tokenizer)
    return warmup_prompts(
        dataset,
        config.n,
        k,
        measured=prompts,
        tokenizer=tokenizer,
        rows_after=rows_after,
        formatter=formatter,
    )


@dataclass
class WarmupRuns:
    """The latency of each warmup run, and whether they converged (None: not checked)."""

    latencies_s: list[float]
    converged: bool | None = None
    final_cv: float | None = None


def run_warmup(
    engine: InferenceBackend,
    prompts: list[Any],
    config: ExperimentConfig,
    runs: int,
    *,
    timer: Callable[[], float] = time.perf_counter,
) -> WarmupRuns:
    """Up to ``runs`` warmup generates over ``prompts``, each timed by ``timer``; with
    convergence detection, stop once the coefficient of variation of the last three latencies
    is at most ``cv_target``."""
    wc = config.warmup
    done = WarmupRuns([])
    for i in range(runs):
        s = timer()
        engine.generate(prompts, config, phase=WARMUP_PHASE)
        engine.synchronize()
        done.latencies_s.append(timer() - s)
        if wc.convergence_detection and len(done.latencies_s) >= max(3, wc.n_warmup):
            window = done.latencies_s[-3:]
            mean = statistics.fmean(window)
            done.final_cv = statistics.pstdev(window) / mean if mean > 0 else 0.0
            if done.final_cv <= wc.cv_target:
                done.converged = True
                break
        if wc.convergence_detection and i == runs - 1:
            done.converged = False
    return done


def compile_time(latencies: Sequence[float]) -> float | None:
    """First warmup run's excess over the median later run (all of it when it ran alone)."""
    if not latencies:
        return None
    if len(latencies) == 1:
        return latencies[0]
    return max(0.0, latencies[0] - statistics.median(latencies[1:]))
