"""Runs a study: every config x cycle in spawned subprocesses, checkpointed in a manifest.

The plan (order, engine groups, gaps) is ``study.planning``; how runs are executed is a
``StudyExecutor`` (``study.executors``): for an engine that reuses (``execution.reuse_engine``,
else the user config, else the engine's proven default; decided per engine when the study is
created and kept in the manifest's ``engine_reuse``) each engine group (runs whose engine-load
fields are equal) shares one long-lived process that loads the engine once; the runs of other
engines each get a fresh process; ``per_gpu`` and SLURM have their own executors.
``StudyRunner`` is the study's bookkeeping (manifest, lock, sessions, progress, results) that
every executor works through.

Gaps: before each run after the first of a session, ``cycle_gap_seconds`` when the run starts a
new pass over the grid (its cycle differs from the previous run's, in interleaved/shuffled
order) and ``config_gap_seconds`` otherwise. In sequential order the cycles of one config are
back to back, so every gap is a config gap. ``None`` gaps come from the user config.

Failures (exception, crash, OOM kill, timeout) are recorded in the manifest and the study goes
on. Ctrl-C (or SIGTERM) stops the current run's subprocess, marks it ``interrupted``, leaves a
valid manifest and re-raises ``KeyboardInterrupt``.

Resume (``resume_study_dir``): the manifest holds the resolved configs, so no YAML is needed.
Completed runs (config hash + cycle, with their result file present) are kept; failed,
interrupted, pending and stale ``running`` runs run again, in the same directory.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llenergymeasure._version import __version__
from llenergymeasure.config.catalogue import registered_engines
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import (
    ConfigError,
    MeasurementsRescued,
    StudyError,
    UnsafeWriteError,
)
from llenergymeasure.os_errors import failure_reason
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.signals import sigterm_as_interrupt
from llenergymeasure.study.directory import directory_identity, rescue_study
from llenergymeasure.study.executors import (
    EngineReuseExecutor,
    FreshProcessExecutor,
    StudyExecutor,
)
from llenergymeasure.study.lock import StudyLock
from llenergymeasure.study.manifest import (
    RunEntry,
    RunError,
    StudyManifest,
    StudySession,
    load_manifest,
    manifest_path,
    utc_now,
    write_manifest,
)
from llenergymeasure.study.parallel import PerGpuExecutor
from llenergymeasure.study.planning import (
    BASELINE_CACHE_NAME,
    gap_before,
    manifest_engine_reuse,
    plan_runs,
    resolve_gaps,
    reuse_map,
    run_order,
)
from llenergymeasure.study.processes import Outcome, stop_process
from llenergymeasure.study.progress import StudyProgress
from llenergymeasure.study.reconcile import load_completed
from llenergymeasure.study.worker import (
    ReusingMeasureWorker,
    RunRequest,
    Worker,
    measure_worker,
)

if TYPE_CHECKING:
    from llenergymeasure.energy.devices import DeviceSlot

__all__ = [
    "BASELINE_CACHE_NAME",
    "StudyRunner",
    "gap_before",
    "plan_runs",
    "resolve_gaps",
    "resume_study_dir",
    "run_order",
    "run_study_config",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKER: Worker = measure_worker

ManifestWriter = Callable[[StudyManifest, Path], None]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "study"


def _detach_problem() -> ConfigError:
    return ConfigError(
        "--detach needs the slurm runner: a local study runs in this process",
        hint="add --runner slurm, or drop --detach",
    )


# --- the runner ------------------------------------------------------------------------------


class StudyRunner:
    """Executes the runs of a study directory's manifest (see the module docstring)."""

    def __init__(
        self,
        study_dir: Path,
        manifest: StudyManifest,
        *,
        worker: Worker | None = None,
        quiet: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        gaps: tuple[float, float] | None = None,
        manifest_writer: ManifestWriter = write_manifest,
        persist: bool = True,
        stream: IO[str] | None = None,
        detach: bool = False,
        devices: Sequence[DeviceSlot] | None = None,
        slurm_options: dict[str, Any] | None = None,
    ) -> None:
        self.study_dir = Path(study_dir)
        self.manifest = manifest
        self.engine_reuse = manifest_engine_reuse(manifest)
        # a given worker serves both executors; the real one keeps its engine when reusing
        self.worker: Worker = (
            worker
            if worker is not None
            else (ReusingMeasureWorker() if self.reuse_engine else DEFAULT_WORKER)
        )
        self.quiet = quiet
        self.sleep = sleep
        self.gaps = gaps if gaps is not None else resolve_gaps(manifest.execution)
        self.write = manifest_writer
        self.persist = persist
        self.stream = stream
        self.results: dict[str, ExperimentResult] = {}
        self.detach = detach  # slurm: submit and return without waiting
        self.devices = devices  # per_gpu: the GPUs to use (None: every visible one)
        self.slurm_options = slurm_options or {}  # SlurmStudyExecutor keyword arguments
        self.processes: list[Any] = []  # live child processes, stopped on Ctrl-C
        self._progress: StudyProgress | None = None
        self._lock: StudyLock | None = None
        # The study directory this runner works in (device, inode): a directory that vanished
        # or was replaced under the same name stops the study instead of being written to.
        self._dir_identity = directory_identity(self.study_dir)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        study: StudyConfig,
        results_root: Path,
        *,
        overrides: dict[str, Any] | None = None,
        base_overrides: dict[str, Any] | None = None,
        runner: str | None = None,
        **kwargs: Any,
    ) -> StudyRunner:
        """A new study directory ``<results_root>/<name>_<timestamp>/`` with its manifest.

        ``runner`` (``local``, ``slurm``, ``docker:<image>``) overrides the runner of every
        backend for this study; it is kept in the manifest for ``--resume``, as are the
        ``overrides`` (flags) and ``base_overrides`` (``--set``) the study was expanded with."""
        from llenergymeasure.config.study import check_study_bounds
        from llenergymeasure.results.io import unique_directory

        # --cycles may have changed n_cycles after expansion: check before the directory exists.
        check_study_bounds(len(study.experiments), study.execution.n_cycles, where=study.name)
        # Runner problems are usage errors found before the study directory exists.
        from llenergymeasure.runners import study_runner_kind

        if kwargs.get("detach") and study_runner_kind(study.experiments, runner) != "slurm":
            raise _detach_problem()
        stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        study_dir = unique_directory(Path(results_root), f"{_slug(study.name)}_{stamp}")
        source = str(Path(study.source_path).resolve()) if study.source_path else None
        now = utc_now()
        reuse = reuse_map(study)
        manifest = StudyManifest(
            llem_version=__version__,
            study_name=study.name,
            study_design_hash=study.study_design_hash,
            source_path=source,
            overrides=overrides or None,
            base_overrides=base_overrides or None,
            runner=runner,
            created_at=now,
            updated_at=now,
            execution=study.execution,
            engine_reuse=reuse,
            experiments=study.experiments,
            skipped=study.skipped,
            runs=plan_runs(study, reuse=reuse),
        )
        created = cls(study_dir, manifest, **kwargs)
        created.save()
        return created

    @classmethod
    def resume(
        cls, study_dir: Path, *, study: StudyConfig | None = None, **kwargs: Any
    ) -> StudyRunner:
        """Continue the study in ``study_dir``; ``ConfigError`` if it is not a study or the
        given (or stored) study file now expands to a different design."""
        from llenergymeasure.study.design import check_design

        study_dir = Path(study_dir)
        manifest = load_manifest(study_dir)
        note = check_design(manifest, study_dir, study)
        runner = cls(study_dir, manifest, **kwargs)
        if note:
            logger.info("%s", note)
        return runner

    @classmethod
    def rebuild(
        cls, study_dir: Path, *, study: StudyConfig | None = None, **kwargs: Any
    ) -> StudyRunner:
        """Rebuild ``study_dir``'s manifest from its results (``study.rebuild``; under the
        study lock), then continue the study like ``resume``."""
        from llenergymeasure.study.rebuild import rebuild_manifest

        study_dir = Path(study_dir)
        with StudyLock(study_dir):
            rebuilt = rebuild_manifest(study_dir, study)
        runner = cls.resume(study_dir, study=study, **kwargs)
        notes = [
            f"rebuilt {manifest_path(study_dir)}: {rebuilt.completed} of "
            f"{len(rebuilt.manifest.runs)} runs completed"
        ]
        if rebuilt.kept_damaged_as is not None:
            notes.append(f"the old manifest is kept as {rebuilt.kept_damaged_as}")
        notes += [f"not used: {item}" for item in rebuilt.skipped]
        for note in notes:
            runner._note(note)
        return runner

    # -- running ------------------------------------------------------------------------------
    def run(self) -> StudyResult:
        """Run every run that is not completed; returns the study's ``StudyResult``."""
        with StudyLock(self.study_dir) as lock, sigterm_as_interrupt():
            self._lock = lock
            try:
                return self._run_locked()
            finally:
                self._lock = None

    def runner_kind(self) -> str:
        """``slurm`` when every backend of the study runs on SLURM, else ``local`` (runs in
        subprocesses here, which may start containers). Mixing is a ``StudyError``."""
        from llenergymeasure.runners import study_runner_kind

        return study_runner_kind(self.manifest.experiments, self.manifest.runner)

    @property
    def progress(self) -> StudyProgress:
        """The study's progress display (set while the study runs)."""
        assert self._progress is not None, "the study is not running"
        return self._progress

    @progress.setter
    def progress(self, value: StudyProgress) -> None:
        self._progress = value

    def executor(self) -> StudyExecutor:
        """How this study's local runs execute (SLURM is chosen in ``run``)."""
        if self.manifest.execution.parallel == "per_gpu":
            return PerGpuExecutor()
        return EngineReuseExecutor() if self.reuse_engine else FreshProcessExecutor()

    def _run_locked(self) -> StudyResult:
        if self.runner_kind() == "slurm":
            from llenergymeasure.runners.slurm import slurm_settings
            from llenergymeasure.study.slurm_executor import SlurmStudyExecutor

            options = {"settings": slurm_settings(), **self.slurm_options}
            return SlurmStudyExecutor(self, detach=self.detach, **options).run()
        if self.detach:
            raise _detach_problem()
        self.load_completed()
        for entry in self.manifest.runs:
            if entry.status == "running":  # its study process died (we hold the lock now)
                entry.status = "interrupted"
                entry.error = RunError(
                    type="StudyProcessDied",
                    message="the study process ended while this run was running",
                )
        session = StudySession(pid=os.getpid(), started_at=utc_now())
        self.manifest.sessions.append(session)
        self.save()
        todo = [r for r in sorted(self.manifest.runs, key=lambda r: r.position)]
        todo = [r for r in todo if r.status != "completed"]
        done = len(self.manifest.runs) - len(todo)
        self._progress = StudyProgress(
            len(self.manifest.runs), done, quiet=self.quiet, stream=self.stream
        )
        executor = self.executor()
        logger.debug(
            "%d of %d runs to do with %s",
            len(todo),
            len(self.manifest.runs),
            type(executor).__name__,
        )
        try:
            executor.execute(self, todo)
        except KeyboardInterrupt:
            self._interrupted(session)
            raise
        finally:
            for proc in self.processes:  # children an executor left behind: no orphans
                stop_process(proc)
            self.processes.clear()
            self._progress.close()
        session.finished_at = utc_now()
        session.outcome = "finished"
        self.save()
        return self.finish()

    # -- bookkeeping (the public surface executors use) ----------------------------------------
    def start(
        self, entry: RunEntry, *, slot: DeviceSlot | None = None, pid: int | None = None
    ) -> RunRequest:
        """Mark ``entry`` running (a new attempt, pinned to ``slot``'s GPU), save; its request."""
        config = self.manifest.experiments[entry.config_index]
        run_dir = self.study_dir / entry.run_id
        entry.status = "running"
        entry.attempts += 1
        entry.started_at = utc_now()
        entry.finished_at = None
        entry.result_path = None
        entry.error = None
        entry.pid = pid
        entry.device = (slot.uuid or slot.label) if slot is not None else None
        entry.concurrent_runs = []
        runner = self.manifest.runner if self.manifest.runner != "slurm" else None
        request = RunRequest(
            run_id=entry.run_id,
            config=config,
            run_dir=str(run_dir),
            cycle=entry.cycle,
            position=entry.position,
            attempt=entry.attempts,
            baseline_cache_path=str(self.study_dir / BASELINE_CACHE_NAME),
            runner=runner,
            device=entry.device,
            visible_devices=slot.visible_devices if slot is not None else None,
            reuse_engine=self.reuses(entry),
            engines=registered_engines(),
        )
        on = f" on {entry.device}" if entry.device else ""
        self.progress.message(
            f"run {entry.position}/{len(self.manifest.runs)} {entry.run_id} "
            f"(config {entry.config_hash}, cycle {entry.cycle}){on}"
        )
        self.save()
        return request

    @property
    def reuse_engine(self) -> bool:
        """Whether any engine of this study reuses its loaded engine."""
        return any(self.engine_reuse.values())

    def reuses(self, entry: RunEntry) -> bool:
        """Whether ``entry`` runs on its engine group's shared engine (its engine reuses and
        it is an offline run)."""
        config = self.manifest.experiments[entry.config_index]
        return config.mode == "offline" and self.engine_reuse.get(config.backend, False)

    def attach_pid(self, entry: RunEntry, pid: int | None) -> None:
        """Record the process that runs ``entry``."""
        entry.pid = pid
        self.save()

    def record(self, entry: RunEntry, outcome: Outcome) -> None:
        """Store a finished run's outcome in the manifest (and its result in memory)."""
        entry.finished_at = utc_now()
        if isinstance(outcome, RunError):
            entry.status = "failed"
            entry.error = outcome
            self.progress.message(
                f"{entry.run_id} FAILED: {outcome.type}: {outcome.message}", level=logging.WARNING
            )
        else:
            self.results[entry.run_id] = outcome.result
            entry.status = "completed"
            self.place_result(entry, outcome.path, outcome.rescue_reason)
            if entry.rescued:
                self.progress.message(
                    f"{entry.run_id} completed; {entry.rescued}", level=logging.WARNING
                )
            else:
                self.progress.message(f"{entry.run_id} completed")
        self.save()

    def place_result(self, entry: RunEntry, path: Path, reason: str | None = None) -> None:
        """Record where ``entry``'s result file is: relative inside the study directory, else
        absolute with the reason it had to be rescued elsewhere."""
        path = Path(path)
        inside = os.path.abspath(path).startswith(os.path.abspath(self.study_dir) + os.sep)
        if inside and reason is None:
            entry.result_path = os.path.relpath(path, self.study_dir)
            entry.rescued = None
        else:
            entry.result_path = str(Path(os.path.abspath(path)))
            entry.rescued = (
                f"could not be saved in the study directory ({reason or 'see the run log'}); "
                f"saved to {entry.result_path}"
            )

    def _interrupted(self, session: StudySession) -> None:
        """Ctrl-C: stop the current run, mark it interrupted, leave a valid manifest."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # no second interrupt here
        try:
            for proc in self.processes:
                stop_process(proc)
            now = utc_now()
            for entry in self.manifest.runs:
                if entry.status == "running":
                    entry.status = "interrupted"
                    entry.finished_at = now
                    entry.error = RunError(
                        type="KeyboardInterrupt",
                        message="interrupted while running; continue with llem run --resume "
                        f"{self.study_dir}",
                    )
            session.finished_at = now
            session.outcome = "interrupted"
            self.save()
            if self._progress is not None:
                self._progress.message(
                    f"interrupted; continue with: llem run --resume {self.study_dir}"
                )
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def load_completed(self) -> None:
        """Read the results of runs completed earlier and check each against its manifest
        entry (``study.reconcile.load_completed``)."""
        load_completed(self.study_dir, self.manifest, self.results, self._note)

    def _note(self, message: str, level: int = logging.INFO) -> None:
        logger.log(level, "%s", message)

    def finish(self) -> StudyResult:
        from llenergymeasure.study.summary import build_study_result, write_study_outputs

        result = build_study_result(
            self.manifest,
            self.results,
            study_dir=self.study_dir if self.persist else None,
            gaps=self.gaps,
            finished_at=utc_now(),
        )
        if self.persist:
            self._check_study_dir()
            try:
                write_study_outputs(self.study_dir, result, self.manifest, self.results)
            except (OSError, UnsafeWriteError) as exc:
                raise self._rescue(
                    f"the study's summary could not be written in {self.study_dir} "
                    f"({failure_reason(exc)})"
                ) from None
        return result

    def save(self) -> None:
        """Write the manifest (checkpoint); a study directory that vanished, was replaced or
        cannot be written stops the study, its manifest and results rescued elsewhere."""
        self._check_study_dir()
        try:
            self.write(self.manifest, manifest_path(self.study_dir))
        except (OSError, UnsafeWriteError) as exc:
            raise self._rescue(
                f"the study manifest could not be written in {self.study_dir} "
                f"({failure_reason(exc)})"
            ) from None

    def _rescue(self, reason: str) -> MeasurementsRescued | StudyError:
        """Save the manifest and every finished result into a rescue folder; the error that
        stops the study (``study.directory.rescue_study``)."""
        return rescue_study(
            self.study_dir, self.manifest, self.results, reason, persist=self.persist
        )

    def _check_study_dir(self) -> None:
        if self._lock is not None:
            self._lock.check()
        if self._dir_identity is None:
            return
        now = directory_identity(self.study_dir)
        if now != self._dir_identity:
            what = "disappeared" if now is None else "was replaced by another directory"
            raise self._rescue(f"the study directory {self.study_dir} {what}")


# --- entry points ----------------------------------------------------------------------------


def run_study_config(
    study: StudyConfig,
    *,
    output_dir: Path | None,
    overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> StudyResult:
    """Run a fresh study under ``output_dir``.

    ``output_dir=None``: nothing is kept on disk; the runs still execute in spawned
    subprocesses, exchanging files through a private temporary directory that is deleted
    before returning, and the results are only in ``StudyResult.results``.
    """
    from llenergymeasure.exceptions import PreFlightError
    from llenergymeasure.runners import check_runner_isolation

    problems = check_runner_isolation(e.backend for e in study.experiments)
    if problems:
        raise PreFlightError(problems)
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="llem-study-") as tmp:
            runner = StudyRunner.create(study, Path(tmp), persist=False, **kwargs)
            return runner.run()
    return StudyRunner.create(study, Path(output_dir), overrides=overrides, **kwargs).run()


def resume_study_dir(
    study_dir: str | Path, *, study: StudyConfig | None = None, **kwargs: Any
) -> StudyResult:
    """Continue an interrupted or partly failed study in its own directory."""
    return StudyRunner.resume(Path(study_dir), study=study, **kwargs).run()
