"""The SLURM runner: each run of a study is one SLURM job, results on the shared filesystem.

Selected like the other runners (``LLEM_RUNNER_<BACKEND>=slurm``, ``runners.<backend>: slurm``
in the user config, or ``llem run study.yaml --runner slurm``); a study runs on SLURM when every
backend it uses resolves to ``slurm`` (``runners.study_runner_kind``). Settings come from the
user config's ``slurm:`` section. This module talks to SLURM; the study executor that submits a
study's runs, waits for them and settles them in the manifest is
``study.slurm_executor.SlurmStudyExecutor``.

- **Submission.** The pending runs of one submission become one job array
  (``sbatch --parsable --array=0-<N-1>[%array_limit]``). The generated batch script
  ``<study_dir>/slurm/submit_<k>.sh`` maps ``$SLURM_ARRAY_TASK_ID`` to a run position and calls
  ``python -m llenergymeasure.study.slurm_entry <study_dir> <position> <attempt>`` with this
  Python; the job measures with the real worker and saves ``result.json`` into the run's
  directory. Job logs: ``<study_dir>/slurm/<array>_<task>.log``. Each job requests
  ``--gres=gpu:<gpus_per_run>`` (omitted when 0), ``--time`` from the study's
  ``experiment_timeout_seconds`` (else ``slurm.time_limit``), and the partition/account/qos.
- **Job states.** ``squeue`` for live jobs; for jobs that left the queue ``sacct`` (or
  ``scontrol show job`` where accounting storage is disabled) plus the run's
  ``slurm_status.json`` (written by the job itself).

Tested with fake ``sbatch``/``squeue``/``sacct``/``scontrol`` executables (``tests/unit``) and
against a real one-node cluster (``tests/slurm``, ``.ci/slurm-up.sh``).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.exceptions import StudyError

if TYPE_CHECKING:
    from llenergymeasure.config.user_config import SlurmSection

__all__ = [
    "FAILED_STATES",
    "LIVE_STATES",
    "STATUS_NAME",
    "JobInfo",
    "SlurmClient",
    "SlurmCommands",
    "batch_script",
    "format_time_limit",
    "read_status",
    "sbatch_command",
    "slurm_settings",
]


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


def slurm_settings(user_config: Path | None = None) -> SlurmSection:
    """The user config's ``slurm:`` section."""
    from llenergymeasure.config.user_config import load_user_config

    return load_user_config(user_config).slurm
