"""The options of ``llem run``, shared by the experiment and study paths of the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """Everything ``llem run`` was given on the command line."""

    config: Path | None = None
    model: str | None = None
    backend: str | None = None
    dataset: str | None = None
    n: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    max_new_tokens: int | None = None
    input_len: int | None = None  # synthetic dataset: dataset.input_len
    output_len: int | None = None  # synthetic dataset: dataset.output_len
    seed: int | None = None  # random_seed
    set_values: tuple[str, ...] = ()  # --set key.path=value, in order
    output: Path | None = None
    dry_run: bool = False
    quiet: bool = False
    verbose: bool = False
    export_csv: bool = False
    cycles: int | None = None
    order: str | None = None
    no_gaps: bool = False
    reuse_engine: bool | None = None  # studies: --reuse-engine / --no-reuse-engine
    resume: Path | None = None
    runner: str | None = None  # --runner for every backend of a study
    detach: bool = False  # slurm runner: submit and return
    as_json: bool = False  # --json: the summary (or error) as one JSON object on stdout
    plan_from: Path | None = None  # --dry-run: plan cycles from an earlier study's spread
    detect_pct: float | None = None  # --plan-from: the difference to detect, %
    rebuild_manifest: bool = False  # with --resume: rebuild a damaged manifest from the results
