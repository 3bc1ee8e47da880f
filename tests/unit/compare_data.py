"""Synthetic llem results with known values, for the compare and report tests.

Each result is a real H200 result (``benchmarks/results/reuse_pytorch``) with its config and
metrics replaced, so it is schema-valid in every field. Cycle values are drawn from seeded
log-normal distributions with a known geometric mean and spread.
"""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import StudyCounts, StudyProtocol, StudyResult

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (
    ROOT
    / "benchmarks"
    / "results"
    / "reuse_pytorch"
    / "fresh"
    / "001_llama8b_pytorch_c1"
    / "result.json"
)
_ids = itertools.count(1)


@cache
def _template() -> ExperimentResult:
    return ExperimentResult.from_json(TEMPLATE)


def cycles(centre: float, spread: float, n: int, seed: int) -> list[float]:
    """``n`` log-normal values around geometric mean ``centre`` with sd of the logs ``spread``."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(centre), spread) for _ in range(n)]


def result(
    *,
    tok_s: float = 750.0,
    j: float = 0.55,
    batch_size: int = 8,
    precision: str = "bf16",
    driver: str | None = None,
    warnings: list[str] | None = None,
    peak_memory_bytes: int | None = None,
) -> ExperimentResult:
    """The template result with these metrics and config fields (a fresh experiment id)."""
    base = _template()
    data = base.config.model_dump(mode="json")
    data["precision"] = precision
    data["pytorch"] = {**data["pytorch"], "batch_size": batch_size}
    config = ExperimentConfig.model_validate(data)
    update: dict[str, Any] = {
        "experiment_id": f"synthetic-{next(_ids)}",
        "config": config,
        "measurement_config_hash": measurement_config_hash(config),
        "tokens_per_second": tok_s,
        "energy_per_output_token_j": j,
        "energy_per_output_token_adjusted_j": j * 0.8,
        "peak_memory_bytes": peak_memory_bytes
        if peak_memory_bytes is not None
        else base.peak_memory_bytes,
    }
    if driver is not None:
        update["environment"] = base.environment.model_copy(update={"driver_version": driver})
    if warnings is not None:
        update["measurement_warnings"] = warnings
    return base.model_copy(update=update)


def write_experiments(directory: Path, results: list[ExperimentResult]) -> Path:
    """One experiment directory (``run<i>/result.json``) per result under ``directory``."""
    for i, r in enumerate(results, 1):
        r.to_json(directory / f"run{i:02d}" / "result.json")
    return directory


def write_study(directory: Path, results: list[ExperimentResult], name: str = "synthetic") -> Path:
    """A finished study directory: the runs' ``result.json`` and a ``study_summary.json``."""
    write_experiments(directory, results)
    now = datetime.now(timezone.utc)
    n = len(results)
    summary = StudyResult(
        llem_version="0.1.0",
        study_name=name,
        study_design_hash="0" * 16,
        started_at_utc=now,
        finished_at_utc=now,
        protocol=StudyProtocol(
            n_cycles=n,
            cycle_order="interleaved",
            shuffle_seed=0,
            config_gap_seconds=0,
            cycle_gap_seconds=0,
            experiment_timeout_seconds=None,
        ),
        counts=StudyCounts(
            generated=1,
            skipped=0,
            experiments=len({r.measurement_config_hash for r in results}),
            runs_planned=n,
            ran=n,
            completed=n,
            failed=0,
            not_run=0,
        ),
        result_files=[f"run{i:02d}/result.json" for i in range(1, n + 1)],
    )
    summary.to_json(directory / "study_summary.json")
    return directory
