"""A run's inputs, read and checked before anything expensive (pre-flight and ``--dry-run``).

``prepare_run_dataset`` is what a run's pre-flight calls: the dataset is read once (a JSONL file
streamed only as far as the run needs) and the run then uses exactly what was read.
``dataset_file_problems`` checks the JSONL files of one or many experiments the same way, for
``llem run --dry-run`` and before a study starts, each file read once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets.loader import PreparedDataset, prepare_dataset
from llenergymeasure.exceptions import ConfigError

__all__ = ["dataset_file_problems", "dataset_problem", "prepare_run_dataset", "warmup_rows"]


def warmup_rows(config: ExperimentConfig) -> int:
    """Dataset rows after the measured ones a run may warm up on (one batch in flight; online
    runs warm up on their own prompts)."""
    if config.mode == "online":
        return 0
    return max(1, min(run_concurrency(config), config.n))


def prepare_run_dataset(config: ExperimentConfig) -> PreparedDataset:
    """The dataset of ``config`` read and checked for its run; ``ConfigError`` if it cannot be."""
    dataset: Any = config.dataset
    return prepare_dataset(dataset, config.n, extra=warmup_rows(config))


def dataset_problem(exc: ConfigError) -> str:
    """A pre-flight problem line for a dataset error."""
    return f"dataset: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def _jsonl_path(config: ExperimentConfig) -> Path | None:
    dataset = config.dataset
    if isinstance(dataset, str) and dataset.endswith(".jsonl"):
        return Path(os.path.expanduser(dataset))
    return None


def dataset_file_problems(configs: Iterable[ExperimentConfig]) -> list[str]:
    """Problems of the JSONL datasets of ``configs``, each file read once as far as the
    largest run needs (the hub and synthetic datasets are checked by each run's pre-flight)."""
    from llenergymeasure.datasets.jsonl import scan_jsonl

    by_file: dict[Path, list[ExperimentConfig]] = {}
    for config in configs:
        path = _jsonl_path(config)
        if path is not None:
            by_file.setdefault(path, []).append(config)
    problems: list[str] = []
    for path, users in by_file.items():
        want = max(c.n + warmup_rows(c) for c in users)
        try:
            scan = scan_jsonl(path, limit=want)
        except ConfigError as exc:
            problems.append(dataset_problem(exc))
            continue
        short = sorted({c.n for c in users if c.n > len(scan.prompts)})
        if short:
            problems.append(
                f"dataset: {path} has {len(scan.prompts)} prompts but n={short[-1]} were asked "
                f"for (use n <= {len(scan.prompts)})"
            )
    return problems
