"""The study manifest: a live checkpoint of every run, rewritten atomically at each change.

``<study_dir>/study_manifest.json`` holds everything needed to continue a study without its
YAML: the resolved experiment configs, the execution block, the design hash, and one entry per
run (config x cycle) with its state, timestamps, attempts, result path and error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import ExecutionConfig, SkippedExperiment
from llenergymeasure.exceptions import ConfigError

MANIFEST_NAME = "study_manifest.json"
MANIFEST_SCHEMA_VERSION = "1.0"

RunStatus = Literal["pending", "running", "completed", "failed", "interrupted"]

_FORBID = ConfigDict(extra="forbid", protected_namespaces=())


def utc_now() -> datetime:
    """Timezone-aware current time (UTC)."""
    return datetime.now(timezone.utc)


class RunError(BaseModel):
    """Why a run did not complete."""

    model_config = _FORBID

    type: str  # exception class name, "TimeoutError", "WorkerCrashed", "KeyboardInterrupt"
    message: str
    traceback: str | None = None  # last frames only


class ConcurrentRun(BaseModel):
    """Another run that was running at the same time (``execution.parallel: per_gpu``)."""

    model_config = _FORBID

    run_id: str
    device: str | None = None  # its GPU (UUID), as this run's ``device``


class SlurmJob(BaseModel):
    """One SLURM job that ran (or was meant to run) a run: the audit trail of its attempts."""

    model_config = _FORBID

    job_id: str  # "<array job id>_<task id>"
    attempt: int
    state: str | None = None  # SLURM's final state: COMPLETED, CANCELLED, TIMEOUT, FAILED, ...
    reason: str | None = None


class RunEntry(BaseModel):
    """One run of the study: an experiment config in one cycle."""

    model_config = _FORBID

    run_id: str  # also the run's sub-directory name: <NNN>_<model-slug>_<backend>_c<cycle>
    position: int  # 1-based place in the run order
    config_index: int  # index into StudyManifest.experiments
    config_hash: str  # measurement_config_hash of the config
    cycle: int  # 1-based
    status: RunStatus = "pending"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_path: str | None = None  # relative to the study directory
    error: RunError | None = None
    pid: int | None = None  # the run's subprocess while it runs (kept afterwards for audit)
    device: str | None = None  # per_gpu: the GPU (UUID) the run was pinned to
    concurrent_runs: list[ConcurrentRun] = Field(default_factory=list)  # per_gpu overlaps
    slurm_job_id: str | None = None  # slurm runner: the current attempt's job
    slurm_state: str | None = None  # slurm runner: its last known SLURM state
    slurm_jobs: list[SlurmJob] = Field(default_factory=list)  # slurm runner: every attempt
    engine_group: str | None = None  # engine_load_key of its config: runs sharing one engine


class StudySession(BaseModel):
    """One invocation of the runner on this study (the first run, then each resume)."""

    model_config = _FORBID

    pid: int
    started_at: datetime
    finished_at: datetime | None = None
    outcome: Literal["running", "finished", "interrupted", "detached"] = "running"


class StudyManifest(BaseModel):
    """Checkpoint of a study: its design, how it executes, and the state of every run."""

    model_config = _FORBID

    schema_version: str = MANIFEST_SCHEMA_VERSION
    llem_version: str
    study_name: str
    study_design_hash: str
    source_path: str | None = None  # absolute path of the study YAML, if it came from one
    overrides: dict[str, Any] | None = None  # CLI flags applied to every point (for re-checks)
    runner: str | None = None  # `--runner` for every backend (local, slurm, docker:<image>)
    created_at: datetime
    updated_at: datetime
    execution: ExecutionConfig
    experiments: list[ExperimentConfig]
    skipped: list[SkippedExperiment] = Field(default_factory=list)
    runs: list[RunEntry]
    sessions: list[StudySession] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Runs per status."""
        out = {s: 0 for s in ("pending", "running", "completed", "failed", "interrupted")}
        for run in self.runs:
            out[run.status] += 1
        return out


def manifest_path(study_dir: Path) -> Path:
    """Where a study directory keeps its manifest."""
    return Path(study_dir) / MANIFEST_NAME


def write_manifest(manifest: StudyManifest, path: Path) -> None:
    """Write the manifest atomically (temp file + rename), stamping ``updated_at``."""
    from llenergymeasure.results.io import atomic_write_text

    manifest.updated_at = utc_now()
    atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")


def load_manifest(study_dir: str | Path) -> StudyManifest:
    """Read a study directory's manifest; ``ConfigError`` if it is missing or not a study."""
    directory = Path(study_dir)
    if not directory.exists():
        raise ConfigError(
            f"--resume: study directory not found: {directory}",
            hint="give the directory a study wrote, e.g. results/<study-name>_<timestamp>",
        )
    if not directory.is_dir():
        raise ConfigError(f"--resume: {directory} is a file, not a study directory")
    path = manifest_path(directory)
    if not path.is_file():
        raise ConfigError(
            f"--resume: {directory} is not a study directory (no {MANIFEST_NAME} in it)",
            hint="give the directory a study wrote, e.g. results/<study-name>_<timestamp>",
        )
    try:
        return StudyManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--resume: {path} is not a valid study manifest ({first})",
            hint="the file was edited or written by an incompatible llem version",
        ) from None
