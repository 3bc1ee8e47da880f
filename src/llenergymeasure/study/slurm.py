"""The SLURM runner: each run of a study is one SLURM job, results on the shared filesystem.

Selected like the other runners (``LLEM_RUNNER_<BACKEND>=slurm``, ``runners.<backend>: slurm``
in the user config, or ``llem run study.yaml --runner slurm``); a study runs on SLURM when every
backend it uses resolves to ``slurm``. Settings come from the user config's ``slurm:`` section.

- **Submission.** The pending runs of one submission become one job array
  (``sbatch --parsable --array=0-<N-1>[%array_limit]``). The generated batch script
  ``<study_dir>/slurm/submit_<k>.sh`` maps ``$SLURM_ARRAY_TASK_ID`` to a run position and calls
  ``python -m llenergymeasure.study.slurm_entry <study_dir> <position> <attempt>`` with this
  Python; the job measures with the real worker and saves ``result.json`` into the run's
  directory. Job logs: ``<study_dir>/slurm/<array>_<task>.log``. Each job requests
  ``--gres=gpu:<gpus_per_run>`` (omitted when 0), ``--time`` from the study's
  ``experiment_timeout_seconds`` (else ``slurm.time_limit``), and the partition/account/qos.
- **Waiting.** The study process polls ``squeue`` (live jobs) and, for jobs that left the queue,
  ``sacct`` (or ``scontrol show job`` where accounting storage is disabled) plus the run's
  ``slurm_status.json`` (written by the job itself). Only the study process writes the
  manifest: a run is ``completed`` when its job wrote a result, else ``failed`` with SLURM's
  state (CANCELLED, TIMEOUT, FAILED, OUT_OF_MEMORY, NODE_FAIL, ...) and reason. A job SLURM no
  longer knows is settled from its status file: never started = CANCELLED (an array task
  cancelled while pending leaves no record without accounting), started = FAILED.
- **Detach / resume.** ``--detach`` submits and returns (the manifest holds the job ids); Ctrl-C
  while waiting also leaves the jobs queued. ``llem run --resume <dir>`` collects finished jobs,
  waits for live ones, and resubmits runs that are pending, failed or interrupted.

Tested with fake ``sbatch``/``squeue``/``sacct``/``scontrol`` executables (``tests/unit``) and
against a real one-node cluster (``tests/slurm``, ``.ci/slurm-up.sh``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.exceptions import StudyError

if TYPE_CHECKING:
    from llenergymeasure.config.user_config import SlurmSection
    from llenergymeasure.results.study import StudyResult
    from llenergymeasure.study.executors import StudyBookkeeping
    from llenergymeasure.study.manifest import RunEntry

__all__ = [
    "FAILED_STATES",
    "LIVE_STATES",
    "STATUS_NAME",
    "JobInfo",
    "SlurmClient",
    "SlurmCommands",
    "SlurmStudyExecutor",
    "batch_script",
    "format_time_limit",
    "sbatch_command",
]

logger = logging.getLogger(__name__)

STATUS_NAME = "slurm_status.json"  # written into the run directory by the job (slurm_entry)
#: States of a job that is still queued or running.
LIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
        "POWER_UP_NODE",
    }
)
#: Final states in which a run did not complete.
FAILED_STATES = frozenset(
    {
        "CANCELLED",
        "TIMEOUT",
        "FAILED",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
DEFAULT_LOST_AFTER_S = 60.0  # a job unknown to SLURM (accounting lag) is settled after this


@dataclass(frozen=True)
class SlurmCommands:
    """The SLURM executables (names looked up on PATH, or paths)."""

    sbatch: str = "sbatch"
    squeue: str = "squeue"
    sacct: str = "sacct"
    scontrol: str = "scontrol"
    scancel: str = "scancel"


@dataclass(frozen=True)
class JobInfo:
    """What SLURM says about one job (array task ids as ``<array>_<task>``)."""

    job_id: str
    state: str
    reason: str | None = None
    exit_code: str | None = None

    @property
    def live(self) -> bool:
        """Still queued or running."""
        return self.state in LIVE_STATES


def normalise_state(text: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``OUT_OF_ME+`` (truncated) kept as is."""
    return text.strip().split(" ")[0].rstrip("+").upper() if text.strip() else "UNKNOWN"


def format_time_limit(seconds: float) -> str:
    """``--time`` value for ``seconds`` (rounded up to whole minutes): ``D-HH:MM:SS``."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00"


def sbatch_command(
    script: Path,
    *,
    n_tasks: int,
    settings: SlurmSection,
    job_name: str,
    log_dir: Path,
    timeout_seconds: float | None = None,
    sbatch: str = "sbatch",
) -> list[str]:
    """The ``sbatch`` command line submitting ``n_tasks`` runs as one job array."""
    if n_tasks < 1:
        raise ValueError("a job array needs at least one task")
    array = f"0-{n_tasks - 1}"
    if settings.array_limit is not None:
        array += f"%{settings.array_limit}"
    cmd = [
        sbatch,
        "--parsable",
        f"--job-name={job_name}",
        f"--array={array}",
        f"--output={log_dir / '%A_%a.log'}",
        "--ntasks=1",
        "--export=ALL",
    ]
    if settings.partition:
        cmd.append(f"--partition={settings.partition}")
    if settings.account:
        cmd.append(f"--account={settings.account}")
    if settings.qos:
        cmd.append(f"--qos={settings.qos}")
    if timeout_seconds is not None:
        cmd.append(f"--time={format_time_limit(timeout_seconds)}")
    elif settings.time_limit:
        cmd.append(f"--time={settings.time_limit}")
    if settings.gpus_per_run > 0:
        cmd.append(f"--gres=gpu:{settings.gpus_per_run}")
    cmd.extend(settings.extra_args)
    cmd.append(str(script))
    return cmd


def batch_script(
    study_dir: Path, positions: Sequence[int], attempts: Sequence[int], python: str
) -> str:
    """The batch script of one job array: task i runs the run at ``positions[i]``."""
    quoted_dir = shlex.quote(str(study_dir))
    return (
        "#!/bin/bash\n"
        "# Generated by llenergymeasure: one study run per array task.\n"
        "set -eu\n"
        f"POSITIONS=({' '.join(str(p) for p in positions)})\n"
        f"ATTEMPTS=({' '.join(str(a) for a in attempts)})\n"
        'TASK="${SLURM_ARRAY_TASK_ID:-0}"\n'
        f"exec {shlex.quote(python)} -m llenergymeasure.study.slurm_entry {quoted_dir} "
        '"${POSITIONS[$TASK]}" "${ATTEMPTS[$TASK]}"\n'
    )


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class SlurmClient:
    """Thin wrapper over the SLURM commands (injectable names and subprocess runner)."""

    def __init__(
        self, commands: SlurmCommands | None = None, *, run: Runner = subprocess.run
    ) -> None:
        self.commands = commands or SlurmCommands()
        self._run = run
        self.accounting: bool | None = None  # learnt from the first sacct call

    def _call(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return self._run(cmd, capture_output=True, text=True, check=False, timeout=120)
        except FileNotFoundError:
            raise StudyError(
                f"{cmd[0]} not found: the slurm runner needs the SLURM client commands",
                hint="run on a SLURM login node, or set runners.<backend> to local",
            ) from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]} timed out")

    def submit(self, cmd: list[str]) -> str:
        """Run ``sbatch --parsable ...``; the array's job id."""
        proc = self._call(cmd)
        if proc.returncode != 0:
            raise StudyError(
                f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}",
                hint="check the slurm: section of the user config (partition, account, qos)",
            )
        match = re.search(r"(\d+)", proc.stdout.strip().split(";")[0])
        if not match:
            raise StudyError(f"could not read a job id from sbatch's output: {proc.stdout!r}")
        return match.group(1)

    def live(self, arrays: Sequence[str]) -> dict[str, JobInfo]:
        """Queued or running tasks of the job arrays, by ``<array>_<task>``."""
        if not arrays:
            return {}
        proc = self._call(
            [self.commands.squeue, "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)]
        )
        if proc.returncode != 0:
            if "invalid job id" in proc.stderr.lower():
                return {}  # every job of the list has left the queue
            raise StudyError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
        out: dict[str, JobInfo] = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0]:
                info = JobInfo(parts[0], normalise_state(parts[1]), _reason(parts[2:]))
                out[info.job_id] = info
        return out

    def finished(self, arrays: Sequence[str]) -> dict[str, JobInfo]:
        """Final states from ``sacct``, or ``scontrol show job`` without accounting."""
        if not arrays:
            return {}
        if self.accounting is not False:
            proc = self._call(
                [
                    self.commands.sacct,
                    "-n",
                    "-P",
                    "-X",
                    "-o",
                    "JobID,State,ExitCode,Reason",
                    "-j",
                    ",".join(arrays),
                ]
            )
            text = proc.stdout + proc.stderr
            if proc.returncode == 0 and "accounting storage is disabled" not in text.lower():
                self.accounting = True
                out: dict[str, JobInfo] = {}
                for line in proc.stdout.splitlines():
                    parts = line.strip().split("|")
                    if len(parts) >= 2 and parts[0]:
                        out[parts[0]] = JobInfo(
                            parts[0],
                            normalise_state(parts[1]),
                            _reason(parts[3:]),
                            parts[2] if len(parts) > 2 else None,
                        )
                return out
            self.accounting = False
        out = {}
        for array in arrays:
            proc = self._call([self.commands.scontrol, "show", "job", "-o", array])
            if proc.returncode != 0:
                continue  # purged (older than MinJobAge) or never known
            for line in proc.stdout.splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                if "JobState" not in fields:
                    continue
                task = fields.get("ArrayTaskId")
                job_id = (
                    f"{fields.get('ArrayJobId', array)}_{task}"
                    if task is not None and task.isdigit()
                    else fields.get("JobId", array)
                )
                out[job_id] = JobInfo(
                    job_id,
                    normalise_state(fields["JobState"]),
                    _reason([fields.get("Reason", "")]),
                    fields.get("ExitCode"),
                )
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        """``scancel`` the jobs (errors ignored: they may have ended already)."""
        if job_ids:
            self._call([self.commands.scancel, *job_ids])


def _reason(parts: Sequence[str]) -> str | None:
    text = "|".join(parts).strip()
    return None if text in ("", "None", "(null)") else text


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The job's own status file in ``run_dir`` (None when missing or unreadable)."""
    try:
        data = json.loads((run_dir / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def slurm_settings(user_config: Path | None = None) -> SlurmSection:
    """The user config's ``slurm:`` section."""
    from llenergymeasure.config.user_config import load_user_config

    return load_user_config(user_config).slurm
