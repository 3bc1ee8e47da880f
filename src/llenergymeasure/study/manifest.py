"""The study manifest: a live checkpoint of every run, rewritten atomically at each change.

``<study_dir>/study_manifest.json`` holds everything needed to continue a study without its
YAML: the resolved experiment configs, the execution block, the design hash, and one entry per
run (config x cycle) with its state, timestamps, attempts, result path and error.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.secrets import redact_secrets
from llenergymeasure.config.study import ExecutionConfig, SkippedExperiment
from llenergymeasure.exceptions import ConfigError

MANIFEST_NAME = "study_manifest.json"
MANIFEST_SCHEMA_VERSION = "1.1"  # 1.1: engine_reuse

RunStatus = Literal["pending", "running", "completed", "failed", "interrupted"]

_FORBID = ConfigDict(extra="forbid", protected_namespaces=())


def utc_now() -> datetime:
    """Timezone-aware current time (UTC)."""
    return datetime.now(timezone.utc)


class RunError(BaseModel):
    """Why a run did not complete."""

    model_config = _FORBID

    type: str = Field(
        description="Exception class name, TimeoutError, WorkerCrashed or KeyboardInterrupt."
    )
    message: str = Field(description="The error message.")
    traceback: str | None = Field(None, description="Last frames of the traceback.")


class ConcurrentRun(BaseModel):
    """Another run that was running at the same time (``execution.parallel: per_gpu``)."""

    model_config = _FORBID

    run_id: str = Field(description="A run that overlapped this one (per_gpu).")
    device: str | None = Field(None, description="Its GPU (UUID).")


class SlurmJob(BaseModel):
    """One SLURM job that ran (or was meant to run) a run: the audit trail of its attempts."""

    model_config = _FORBID

    job_id: str = Field(description="<array job id>_<task id>.")
    attempt: int = Field(description="Attempt number.")
    state: str | None = Field(
        None, description="SLURM's final state (COMPLETED, CANCELLED, TIMEOUT, FAILED, ...)."
    )
    reason: str | None = Field(None, description="SLURM's reason.")


class RunEntry(BaseModel):
    """One run of the study: an experiment config in one cycle."""

    model_config = _FORBID

    run_id: str = Field(
        description="Run id, also its sub-directory: <NNN>_<model-slug>_<backend>_c<cycle>."
    )
    position: int = Field(description="1-based place in the run order.")
    config_index: int = Field(description="Index into the manifest's experiments.")
    config_hash: str = Field(description="measurement_config_hash of the config.")
    cycle: int = Field(description="Cycle (1-based).")
    status: RunStatus = Field(
        "pending", description="pending, running, completed, failed or interrupted."
    )
    attempts: int = Field(0, description="Times it was started.")
    started_at: datetime | None = Field(None, description="Start of the last attempt.")
    finished_at: datetime | None = Field(None, description="End of the last attempt.")
    result_path: str | None = Field(
        None,
        description=(
            "Its result.json, relative to the study directory (absolute when it had to be "
            "rescued elsewhere, see rescued)."
        ),
    )
    rescued: str | None = Field(
        None,
        description=(
            "Why the result is not in the study directory: it could not be saved there and "
            "was saved to result_path instead."
        ),
    )
    error: RunError | None = Field(None, description="Why it failed.")
    pid: int | None = Field(None, description="Process that ran it (kept for audit).")
    device: str | None = Field(None, description="per_gpu: the GPU (UUID) it was pinned to.")
    concurrent_runs: list[ConcurrentRun] = Field(
        default_factory=list, description="per_gpu: runs that overlapped it."
    )
    slurm_job_id: str | None = Field(None, description="slurm runner: the current attempt's job.")
    slurm_state: str | None = Field(None, description="slurm runner: its last known SLURM state.")
    slurm_jobs: list[SlurmJob] = Field(
        default_factory=list, description="slurm runner: every attempt."
    )
    engine_group: str | None = Field(
        None,
        description=(
            "Engine-load key of its config: runs with the same key share one engine when "
            "reuse is on for their engine (engine_reuse)."
        ),
    )


class StudySession(BaseModel):
    """One invocation of the runner on this study (the first run, then each resume)."""

    model_config = _FORBID

    pid: int = Field(description="The llem process of this session.")
    started_at: datetime = Field(description="When it started.")
    finished_at: datetime | None = Field(None, description="When it ended.")
    outcome: Literal["running", "finished", "interrupted", "detached"] = Field(
        "running", description="running, finished, interrupted or detached."
    )


class StudyManifest(BaseModel):
    """Checkpoint of a study: its design, how it executes, and the state of every run."""

    model_config = _FORBID

    schema_version: str = Field(MANIFEST_SCHEMA_VERSION, description="Version of this schema.")
    llem_version: str = Field(description="llenergymeasure version.")
    study_name: str = Field(description="Study name.")
    study_design_hash: str = Field(description="Hash of the experiments.")
    source_path: str | None = Field(
        None, description="Absolute path of the study YAML, if it came from one."
    )
    overrides: dict[str, Any] | None = Field(None, description="CLI flags applied to every point.")
    base_overrides: dict[str, Any] | None = Field(
        None,
        description="--set values merged into the study's base (below the sweep); credentials "
        "redacted.",
    )
    runner: str | None = Field(
        None, description="--runner for every backend (local, slurm, docker:<image>)."
    )
    created_at: datetime = Field(description="When the study was created.")
    updated_at: datetime = Field(description="Last state change.")
    execution: ExecutionConfig = Field(description="The execution block.")
    engine_reuse: dict[str, bool] | None = Field(
        None,
        description=(
            "Per engine (backend name): whether its offline runs share one loaded engine, as "
            "decided when the study was created (execution.reuse_engine, else the user config, "
            "else the engine's default) and kept for --resume. None in manifests written before "
            "per-engine defaults: execution.reuse_engine then holds the one setting of every "
            "engine."
        ),
    )
    experiments: list[ExperimentConfig] = Field(description="The experiments, in design order.")
    skipped: list[SkippedExperiment] = Field(
        default_factory=list, description="Grid points not run, with the reason."
    )
    runs: list[RunEntry] = Field(description="Every run (config x cycle) and its state.")
    sessions: list[StudySession] = Field(
        default_factory=list,
        description="Each llem invocation that worked on the study (first run and resumes).",
    )

    @field_serializer("base_overrides")
    def _redact_base_overrides(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # --set passthrough_kwargs.hf_token=... must not reach the manifest
        return None if value is None else redact_secrets(value)

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
    """Write the manifest through the one write path (atomic, redacted; its folder must exist,
    and it never replaces another study's manifest), stamping ``updated_at``."""
    from llenergymeasure.files import write_json

    manifest.updated_at = utc_now()
    write_json(path, manifest, base=path.parent)


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def manifest_problems(manifest: StudyManifest) -> list[str]:
    """What makes ``manifest`` unusable: duplicate or unsafe run ids, positions, cycles or
    config indices out of range, entries whose config hash is not their config's, result
    paths that leave the study directory. Empty when it is sound."""
    from llenergymeasure.config.hashing import measurement_config_hash

    problems: list[str] = []
    n_configs, n_runs = len(manifest.experiments), len(manifest.runs)
    hashes = [measurement_config_hash(c) for c in manifest.experiments]
    seen_ids: set[str] = set()
    seen_positions: set[int] = set()
    for i, run in enumerate(manifest.runs):
        label = f"runs[{i}] ({run.run_id!r})"
        if not _RUN_ID.fullmatch(run.run_id) or run.run_id in (".", ".."):
            problems.append(f"{label}: the run id is not a plain folder name")
        if run.run_id in seen_ids:
            problems.append(f"{label}: the run id appears twice")
        seen_ids.add(run.run_id)
        if not 1 <= run.position <= n_runs or run.position in seen_positions:
            problems.append(
                f"{label}: position {run.position} is out of range 1..{n_runs} or repeated"
            )
        seen_positions.add(run.position)
        if not 0 <= run.config_index < n_configs:
            problems.append(
                f"{label}: config_index {run.config_index} is out of range 0..{n_configs - 1}"
            )
        elif run.config_hash != hashes[run.config_index]:
            problems.append(
                f"{label}: config_hash {run.config_hash} is not the hash of experiments"
                f"[{run.config_index}] ({hashes[run.config_index]})"
            )
        if not 1 <= run.cycle <= manifest.execution.n_cycles:
            problems.append(
                f"{label}: cycle {run.cycle} is out of range 1..{manifest.execution.n_cycles}"
            )
        if run.result_path is not None:
            result = Path(run.result_path)
            if result.is_absolute() and run.rescued is None:
                problems.append(f"{label}: result_path {run.result_path} is outside the study")
            if not result.is_absolute() and ".." in result.parts:
                problems.append(f"{label}: result_path {run.result_path} leaves the study")
    return problems


def load_manifest(study_dir: str | Path) -> StudyManifest:
    """Read and check a study directory's manifest; ``ConfigError`` if it is missing, not a
    study, or unsound (``manifest_problems``), with the way to rebuild it."""
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
    rebuild = (
        "rebuild it from the results that are there: "
        f"llem run --resume {directory} --rebuild-manifest [study.yaml]"
    )
    try:
        manifest = StudyManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--resume: {path} is not a valid study manifest ({first})",
            hint=f"the file was damaged, edited or written by an incompatible llem version; "
            f"{rebuild}",
        ) from None
    problems = manifest_problems(manifest)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ConfigError(
            f"--resume: {path} is not a sound study manifest ({len(problems)} problem(s)):\n"
            f"{shown}{more}",
            hint=rebuild,
        )
    return manifest
