"""How a study's pending runs get executed: one ``StudyExecutor`` per way of running them.

Every executor works only through the study's public bookkeeping (``StudyBookkeeping``: the
manifest, ``start``/``record``/``save``, progress, gaps, the live child processes), never
through the runner's internals, and imports nothing from ``study.runner``:

- ``FreshProcessExecutor``: each run in a fresh spawned process (no engine of the study
  reuses).
- ``EngineReuseExecutor``: each engine group (consecutive runs with the same
  ``engine_load_key``) of an engine that reuses (``StudyBookkeeping.reuses``) in one
  long-lived spawned process that loads the engine once; the other runs (engines that do not
  reuse, online runs) each in a fresh process, as above. A Python exception in one run is
  recorded and the process serves the group's next run; a fatal error (CUDA, out of memory), a
  crash or a timeout ends the process, and the group's remaining runs go on in a fresh one.
- ``study.parallel.PerGpuExecutor``: ``execution.parallel: per_gpu``, one run per GPU at a
  time; with reuse each GPU takes whole engine groups (one process per group on that GPU),
  without it a fresh process per run.
- Docker: a backend whose runner is ``docker:<image>`` runs in containers started from inside
  the processes above (the executors do not change). Without reuse each run's process starts
  one container for its run. With reuse the engine group's process starts one container for
  the group (``runners.DockerEngineGroup``): it loads the engine once and measures the group's
  runs in turn, each into its own run directory, with the guarantees above (an exception fails
  its run only; a crash, fatal error or timeout ends the container, and the group goes on in a
  fresh one; Ctrl-C and timeouts kill it by name). With ``per_gpu`` each GPU's group process
  keeps its own container, pinned to that GPU.
- SLURM: ``study.slurm_executor.SlurmStudyExecutor`` (one job per run, submitted and watched
  through ``runners.slurm``) drives the whole study through the same bookkeeping.

Ctrl-C: an executor stops its child processes on the way out (they are also listed in
``StudyBookkeeping.processes`` so the runner can stop them) and lets ``KeyboardInterrupt``
propagate; the runner marks the running entries interrupted.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from llenergymeasure.study.manifest import RunEntry, RunError, StudyManifest
from llenergymeasure.study.planning import gap_before
from llenergymeasure.study.processes import (
    START_ALLOWANCE_S,
    STOP_GRACE_S,
    Outcome,
    conclude,
    outcome_of,
    receive_final,
    stop_process,
)
from llenergymeasure.study.progress import StudyProgress, countdown
from llenergymeasure.study.worker import RunRequest, Worker, child_main, group_child_main

if TYPE_CHECKING:
    from llenergymeasure.energy.devices import DeviceSlot
    from llenergymeasure.results.models import ExperimentResult
    from llenergymeasure.results.study import StudyResult

__all__ = [
    "GROUP_CLOSE_S",
    "GROUP_START_S",
    "EngineReuseExecutor",
    "FreshProcessExecutor",
    "GroupProcess",
    "StudyBookkeeping",
    "StudyExecutor",
    "run_fresh",
    "spawn_run",
]

GROUP_CLOSE_S = 60.0  # how long an engine group's process gets to unload before it is stopped
GROUP_START_S = 120.0  # how long an engine group's process may take to start Python

_CTX = multiprocessing.get_context("spawn")


class StudyBookkeeping(Protocol):
    """What an executor may use of a running study (``StudyRunner`` implements it)."""

    study_dir: Path
    manifest: StudyManifest
    gaps: tuple[float, float]
    worker: Worker
    devices: Sequence[DeviceSlot] | None
    sleep: Callable[[float], None]
    quiet: bool
    stream: IO[str] | None
    results: dict[str, ExperimentResult]
    processes: list[Any]  # live child processes (stopped by the runner on Ctrl-C)

    @property
    def progress(self) -> StudyProgress: ...

    @progress.setter
    def progress(self, value: StudyProgress) -> None: ...

    def start(
        self, entry: RunEntry, *, slot: DeviceSlot | None = None, pid: int | None = None
    ) -> RunRequest:
        """Mark ``entry`` running (a new attempt), save; the request its worker measures."""
        ...

    def attach_pid(self, entry: RunEntry, pid: int | None) -> None:
        """Record the process that runs ``entry`` (saved)."""
        ...

    def reuses(self, entry: RunEntry) -> bool:
        """Whether ``entry`` runs on its engine group's shared engine."""
        ...

    def record(self, entry: RunEntry, outcome: Outcome) -> None:
        """Store a finished run's outcome (saved)."""
        ...

    def place_result(self, entry: RunEntry, path: Path, reason: str | None = None) -> None:
        """Record where ``entry``'s result file is (a rescue folder with ``reason``)."""
        ...

    def save(self) -> None: ...

    def load_completed(self) -> None: ...

    def finish(self) -> StudyResult: ...


class StudyExecutor(Protocol):
    """Runs the pending runs ``todo`` (in position order) of a study, recording each."""

    def execute(self, study: StudyBookkeeping, todo: list[RunEntry]) -> None: ...


def wait_gap(study: StudyBookkeeping, previous: RunEntry | None, upcoming: RunEntry) -> None:
    """The configured gap before ``upcoming`` when it follows ``previous`` in this session."""
    if previous is None:
        return
    label, seconds = gap_before(
        previous, upcoming, study.manifest.execution.cycle_order, study.gaps
    )
    if seconds > 0:
        countdown(seconds, label=label, progress=study.progress, sleep=study.sleep)


def spawn_run(study: StudyBookkeeping, request: RunRequest) -> tuple[Any, Any]:
    """Start a fresh process measuring ``request``; (process, receiving end of its pipe)."""
    receiver, sender = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(
        target=child_main,
        args=(study.worker, request, sender, os.getpid()),
        name=f"llem-{request.run_id}",
    )
    try:
        proc.start()
    except BaseException:
        receiver.close()
        raise
    finally:
        sender.close()
    return proc, receiver


def _timeout(study: StudyBookkeeping) -> float | None:
    return study.manifest.execution.experiment_timeout_seconds


def run_fresh(study: StudyBookkeeping, entry: RunEntry) -> None:
    """Measure ``entry`` in a fresh spawned process and record its outcome."""
    request = study.start(entry)
    proc, receiver = spawn_run(study, request)
    study.processes.append(proc)
    try:
        study.attach_pid(entry, proc.pid)
        final = receive_final(
            proc,
            receiver,
            _timeout(study),
            _relayer(study, entry),
            start_allowance_s=START_ALLOWANCE_S,
        )
        outcome = final if isinstance(final, RunError) else conclude(proc, final)
    finally:
        receiver.close()
    study.processes.remove(proc)
    study.record(entry, outcome)
    study.progress.advance()


class FreshProcessExecutor:
    """Each run in its own fresh spawned process, one after another."""

    def execute(self, study: StudyBookkeeping, todo: list[RunEntry]) -> None:
        previous: RunEntry | None = None
        for entry in todo:
            wait_gap(study, previous, entry)
            run_fresh(study, entry)
            previous = entry


def _relay(study: StudyBookkeeping, entry: RunEntry, message: str) -> None:
    study.progress.relay(entry.run_id, message)


def _relayer(study: StudyBookkeeping, entry: RunEntry) -> Callable[[str], None]:
    return lambda message: _relay(study, entry, message)


class GroupProcess:
    """One engine group's long-lived process and the study's end of its duplex pipe."""

    def __init__(
        self, study: StudyBookkeeping, key: str | None, *, visible_devices: str | None = None
    ) -> None:
        self.key = key
        self.conn, child = _CTX.Pipe(duplex=True)
        self.proc = _CTX.Process(
            target=group_child_main,
            args=(study.worker, child, os.getpid(), visible_devices),
            name=f"llem-engine-{key}",
        )
        try:
            self.proc.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child.close()
        self.ready = self._wait_ready()

    def _wait_ready(self) -> bool:
        """Wait until the process has started Python and its worker (``GROUP_START_S`` at
        most), so a run's timeout measures the run, not the interpreter's start-up."""
        deadline = time.monotonic() + GROUP_START_S
        while time.monotonic() < deadline:
            if self.conn.poll(0.1):
                try:
                    kind, _ = self.conn.recv()
                except (EOFError, OSError):
                    return False
                return bool(kind == "ready")
            if not self.proc.is_alive():
                return False
        return False

    def send(self, request: RunRequest) -> bool:
        """Hand the process its next run; False when it is gone."""
        try:
            self.conn.send(("run", request))
        except (BrokenPipeError, EOFError, OSError):
            return False
        return True

    def measure(self, study: StudyBookkeeping, entry: RunEntry, request: RunRequest) -> Outcome:
        """Send one run, wait for its outcome; leaves ``alive`` False when the process ended
        (or must end: a fatal error) and stops it."""
        final: Any = None
        if self.send(request):
            final = receive_final(self.proc, self.conn, _timeout(study), _relayer(study, entry))
        if isinstance(final, RunError):  # timeout: receive_final stopped the process
            return final
        if final is None:  # crashed
            self.proc.join(STOP_GRACE_S)
            stop_process(self.proc)
            return outcome_of(None, self.proc.exitcode)
        kind, payload = final
        if kind != "ok" and payload.get("fatal"):
            self.proc.join(GROUP_CLOSE_S)  # it unloads and exits by itself
            stop_process(self.proc)
        return outcome_of(final, None)

    @property
    def alive(self) -> bool:
        return bool(self.proc.is_alive())

    def close(self, *, graceful: bool = True) -> None:
        """Ask the process to unload and exit (stopped after ``GROUP_CLOSE_S``)."""
        if graceful and self.proc.is_alive():
            with contextlib.suppress(BrokenPipeError, EOFError, OSError):
                self.conn.send(("stop", None))
            self.proc.join(GROUP_CLOSE_S)
        stop_process(self.proc)
        self.conn.close()


class EngineReuseExecutor:
    """Each engine group of a reusing engine in one long-lived process that loads its engine
    once; every other run in a fresh process."""

    def execute(self, study: StudyBookkeeping, todo: list[RunEntry]) -> None:
        previous: RunEntry | None = None
        group: GroupProcess | None = None
        try:
            for entry in todo:
                wait_gap(study, previous, entry)
                if not study.reuses(entry):
                    if group is not None:  # no engine of two kinds on the GPU at once
                        self._drop(study, group)
                        group = None
                    run_fresh(study, entry)
                    previous = entry
                    continue
                key = entry.engine_group or entry.config_hash
                if group is not None and (group.key != key or not group.alive):
                    self._drop(study, group)
                    group = None
                if group is None:
                    group = GroupProcess(study, key)
                    study.processes.append(group.proc)
                request = study.start(entry, pid=group.proc.pid)
                outcome = group.measure(study, entry, request)
                study.record(entry, outcome)
                study.progress.advance()
                previous = entry
        except BaseException:
            if group is not None:
                group.close(graceful=False)
                study.processes.remove(group.proc)
            raise
        if group is not None:
            self._drop(study, group)

    @staticmethod
    def _drop(study: StudyBookkeeping, group: GroupProcess) -> None:
        group.close()
        study.processes.remove(group.proc)
