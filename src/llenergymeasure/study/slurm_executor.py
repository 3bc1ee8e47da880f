"""The SLURM study executor: a study's pending runs as SLURM jobs (``runners.slurm``), waited
for and settled in the manifest through the study's public bookkeeping.

- **Waiting.** The study process polls ``squeue`` (live jobs) and, for jobs that left the queue,
  ``sacct`` (or ``scontrol show job`` where accounting storage is disabled) plus the run's
  ``slurm_status.json`` (written by the job itself, ``study.slurm_entry``). Only the study
  process writes the manifest: a run is ``completed`` when its job wrote a result, else
  ``failed`` with SLURM's state (CANCELLED, TIMEOUT, FAILED, OUT_OF_MEMORY, NODE_FAIL, ...) and
  reason. A job SLURM no longer knows is settled from its status file: never started =
  CANCELLED (an array task cancelled while pending leaves no record without accounting),
  started = FAILED.
- **Detach / resume.** ``--detach`` submits and returns (the manifest holds the job ids); Ctrl-C
  while waiting also leaves the jobs queued. ``llem run --resume <dir>`` collects finished jobs,
  waits for live ones, and resubmits runs that are pending, failed or interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure.runners.slurm import (
    FAILED_STATES,
    STATUS_NAME,
    JobInfo,
    SlurmClient,
    batch_script,
    read_status,
    sbatch_command,
)

if TYPE_CHECKING:
    from llenergymeasure.config.user_config import SlurmSection
    from llenergymeasure.results.study import StudyResult
    from llenergymeasure.study.executors import StudyBookkeeping
    from llenergymeasure.study.manifest import RunEntry

__all__ = ["DEFAULT_LOST_AFTER_S", "SlurmStudyExecutor"]

logger = logging.getLogger(__name__)

DEFAULT_LOST_AFTER_S = 60.0  # a job unknown to SLURM (accounting lag) is settled after this


def _clear_run_dir(run_dir: Path) -> None:
    """Remove a previous attempt's outputs so that they cannot pass for the new job's."""
    for name in (STATUS_NAME, "result.json", "timeseries.parquet"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


@dataclass
class SlurmStudyExecutor:
    """Runs a study's pending runs as SLURM jobs and collects their results, through the
    study's public bookkeeping (``study.executors.StudyBookkeeping``)."""

    runner: StudyBookkeeping
    settings: SlurmSection
    client: SlurmClient = field(default_factory=SlurmClient)
    detach: bool = False
    python: str = sys.executable
    poll_interval_s: float | None = None  # None: settings.poll_interval_seconds
    lost_after_s: float = DEFAULT_LOST_AFTER_S
    clock: Callable[[], float] = time.monotonic
    _unknown_since: dict[str, float] = field(default_factory=dict)

    @property
    def slurm_dir(self) -> Path:
        """Batch scripts and job logs."""
        return self.runner.study_dir / "slurm"

    # -- the whole study ------------------------------------------------------------------------
    def run(self) -> StudyResult:
        """Collect, submit what is missing, then wait (unless detached); the study's result."""
        from llenergymeasure.study.manifest import StudySession, utc_now
        from llenergymeasure.study.progress import StudyProgress

        runner = self.runner
        manifest = runner.manifest
        runner.load_completed()
        session = StudySession(pid=os.getpid(), started_at=utc_now())
        manifest.sessions.append(session)
        runner.save()
        self.collect(final=True)
        todo = [
            r
            for r in sorted(manifest.runs, key=lambda r: r.position)
            if r.status in ("pending", "failed", "interrupted")
        ]
        if todo:
            self.submit(todo)
        done = sum(1 for r in manifest.runs if r.status != "running")
        progress = StudyProgress(len(manifest.runs), done, quiet=runner.quiet, stream=runner.stream)
        runner.progress = progress
        try:
            if self.detach:
                session.finished_at = utc_now()
                session.outcome = "detached"
                runner.save()
                progress.message(
                    f"submitted; collect the results with: llem run --resume {runner.study_dir}"
                )
                return runner.finish()
            interval = (
                self.poll_interval_s
                if self.poll_interval_s is not None
                else self.settings.poll_interval_seconds
            )
            while self.outstanding():
                runner.sleep(interval)
                for entry in self.collect():
                    progress.advance()
                    if entry.status == "completed":
                        progress.message(f"{entry.run_id} completed ({entry.slurm_job_id})")
                    elif entry.error is not None:
                        progress.message(
                            f"{entry.run_id} FAILED: {entry.error.type}: {entry.error.message}",
                            level=logging.WARNING,
                        )
        except KeyboardInterrupt:
            session.finished_at = utc_now()
            session.outcome = "interrupted"
            runner.save()
            progress.message(
                "stopped waiting; the jobs stay queued. Collect them with: "
                f"llem run --resume {runner.study_dir}"
            )
            raise
        finally:
            progress.close()
        session.finished_at = utc_now()
        session.outcome = "finished"
        runner.save()
        return runner.finish()

    def outstanding(self) -> list[RunEntry]:
        """Runs whose job has not been settled yet."""
        return [r for r in self.runner.manifest.runs if r.status == "running" and r.slurm_job_id]

    # -- submitting -----------------------------------------------------------------------------
    def submit(self, entries: Sequence[RunEntry]) -> str:
        """Submit ``entries`` as one job array; the array's job id."""
        from llenergymeasure.study.manifest import SlurmJob, utc_now

        runner = self.runner
        from llenergymeasure.files import write_text

        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        k = len(list(self.slurm_dir.glob("submit_*.sh"))) + 1
        script = self.slurm_dir / f"submit_{k:03d}.sh"
        attempts = [e.attempts + 1 for e in entries]
        write_text(
            script,
            batch_script(runner.study_dir, [e.position for e in entries], attempts, self.python),
            base=runner.study_dir,
        )
        script.chmod(0o755)
        for entry in entries:
            _clear_run_dir(runner.study_dir / entry.run_id)
        cmd = sbatch_command(
            script,
            n_tasks=len(entries),
            settings=self.settings,
            job_name=f"llem-{runner.manifest.study_name}"[:64],
            log_dir=self.slurm_dir,
            timeout_seconds=runner.manifest.execution.experiment_timeout_seconds,
            sbatch=self.client.commands.sbatch,
        )
        array = self.client.submit(cmd)
        now = utc_now()
        for i, entry in enumerate(entries):
            entry.status = "running"
            entry.attempts += 1
            entry.started_at = now
            entry.finished_at = None
            entry.result_path = None
            entry.error = None
            entry.pid = None
            entry.slurm_job_id = f"{array}_{i}"
            entry.slurm_state = "PENDING"
            entry.slurm_jobs.append(SlurmJob(job_id=entry.slurm_job_id, attempt=entry.attempts))
        runner.save()
        logger.info("submitted %d run(s) as SLURM job array %s (%s)", len(entries), array, script)
        return array

    # -- collecting -----------------------------------------------------------------------------
    def collect(self, *, final: bool = False) -> list[RunEntry]:
        """Settle the runs whose jobs ended; the runs settled now. ``final``: a job SLURM no
        longer knows is settled at once (no wait for accounting to catch up)."""
        outstanding = self.outstanding()
        if not outstanding:
            return []
        arrays = sorted({str(e.slurm_job_id).split("_")[0] for e in outstanding}, key=int)
        live = self.client.live(arrays)
        gone = [e for e in outstanding if e.slurm_job_id not in live]
        finished = self.client.finished(arrays) if gone else {}
        settled: list[RunEntry] = []
        changed = False
        for entry in outstanding:
            job = str(entry.slurm_job_id)
            if job in live:
                if entry.slurm_state != live[job].state:
                    entry.slurm_state = live[job].state
                    changed = True
                continue
            if self._settle(entry, finished.get(job), final=final):
                settled.append(entry)
                changed = True
        if changed:
            self.runner.save()
        return settled

    def _settle(self, entry: RunEntry, info: JobInfo | None, *, final: bool) -> bool:
        from llenergymeasure.results.models import ExperimentResult
        from llenergymeasure.study.manifest import RunError, utc_now

        job = str(entry.slurm_job_id)
        run_dir = self.runner.study_dir / entry.run_id
        status = read_status(run_dir)
        if status is not None and status.get("job_id") not in (job, None):
            status = None  # another attempt's file
        result_path = run_dir / "result.json"
        if status is not None and isinstance(status.get("rescued_to"), str):
            result_path = Path(status["rescued_to"])  # could not be saved in the run's folder
        has_result = (
            status is not None and status.get("state") == "COMPLETED" and result_path.is_file()
        )
        if info is not None and info.live:
            return False
        if info is None:
            if not has_result and not (status and status.get("state") == "FAILED"):
                since = self._unknown_since.setdefault(job, self.clock())
                if not final and self.clock() - since < self.lost_after_s:
                    return False  # accounting may not have caught up yet
            if has_result:
                state, reason = "COMPLETED", None
            elif status is None:
                state, reason = "CANCELLED", "left the queue without starting"
            elif status.get("state") == "FAILED":
                state, reason = "FAILED", None
            else:
                state, reason = (
                    "FAILED",
                    "started but ended without reporting (cancelled, timed out or its node failed)",
                )
            info = JobInfo(job, state, reason)
        self._unknown_since.pop(job, None)
        entry.slurm_state = info.state
        if entry.slurm_jobs and entry.slurm_jobs[-1].job_id == job:
            entry.slurm_jobs[-1].state = info.state
            entry.slurm_jobs[-1].reason = info.reason
        entry.finished_at = utc_now()
        if has_result and info.state not in FAILED_STATES - {"FAILED"}:
            try:
                result = ExperimentResult.from_json(result_path)
            except (OSError, ValueError) as exc:
                entry.status = "failed"
                entry.error = RunError(type="InvalidResult", message=f"{result_path}: {exc}")
                return True
            entry.status = "completed"
            self.runner.results[entry.run_id] = result
            self.runner.place_result(entry, result_path, (status or {}).get("rescue_reason"))
            return True
        entry.status = "failed"
        error = (status or {}).get("error")
        if info.state in ("FAILED", "COMPLETED") and isinstance(error, dict):
            entry.error = RunError(
                type=str(error.get("type", "Exception")),
                message=f"{error.get('message', '')} (SLURM job {job}: {info.state})",
                traceback=error.get("traceback"),
            )
            return True
        detail = [f"SLURM job {job} ended {info.state}"]
        if info.reason:
            detail.append(f"reason: {info.reason}")
        if info.exit_code:
            detail.append(f"exit code {info.exit_code}")
        if info.state == "COMPLETED":
            detail.append("but wrote no result")
        detail.append(f"log: {self.slurm_dir / (job + '.log')}")
        entry.error = RunError(
            type=info.state if info.state != "COMPLETED" else "NoResult",
            message="; ".join(detail),
        )
        return True
