"""What runs inside each study run's spawned subprocess.

The parent starts ``child_main(worker, request, conn)`` in a fresh ``spawn`` process. The
worker measures one experiment and returns a ``MeasuredExperiment``; ``child_main`` saves it
into the run's directory (``result.json`` + ``timeseries.parquet``) and sends a small status
over the pipe: the result JSON itself when it is under ``PIPE_PAYLOAD_LIMIT`` bytes, otherwise
only its path (the file is the fallback for large payloads). Phase messages go over the same
pipe as ``("progress", text)``: the child's llem log records (``logs.forward_messages``) and
whatever a worker passes to its ``progress`` callable; the study process logs them again.

Engine reuse: ``group_child_main(worker, conn)`` serves a whole engine group in one process.
It receives ``("run", request)`` messages, answers each like ``child_main`` does, and keeps
serving until ``("stop", None)`` or the pipe closes. The worker object lives as long as the
process, so ``ReusingMeasureWorker`` keeps its loaded engine between runs. A Python exception
in one run is reported and the process goes on; a CUDA error, an out-of-memory error or a
``BaseException`` (``is_fatal``) is reported with ``fatal: True`` and ends the process, so the
group's next run starts on a fresh engine. When the backend's runner is ``docker:<image>``,
the group's process keeps one container instead of an engine (``runners.DockerEngineGroup``):
the container serves the group's runs on its kept engine, and a container that died or failed
fatally is replaced by a fresh one for the next run.

Workers must be picklable top-level callables (functions, or instances of top-level classes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from llenergymeasure.config.catalogue import ENGINES, EngineSpec, register_engine
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.harness.session import EngineSession, is_fatal
from llenergymeasure.logs import forward_messages

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from llenergymeasure.harness.saving import MeasuredExperiment
    from llenergymeasure.runners import DockerRunResult

logger = logging.getLogger(__name__)

PIPE_PAYLOAD_LIMIT = 1_000_000  # bytes of result JSON sent over the pipe; larger: path only
PARENT_POLL_S = 0.5  # how often a child checks that the study process is still alive


@dataclass(frozen=True)
class RunRequest:
    """Everything a worker needs to measure one run (picklable)."""

    run_id: str
    config: ExperimentConfig
    run_dir: str
    cycle: int
    position: int
    attempt: int
    baseline_cache_path: str | None = None
    runner: str | None = None  # `--runner` override (local, docker:<image>); None: resolve
    device: str | None = None  # per_gpu: the GPU this run is pinned to (UUID)
    visible_devices: str | None = None  # per_gpu: the child's CUDA_VISIBLE_DEVICES
    reuse_engine: bool = False  # served by an engine group's process that keeps its engine
    # engines registered in the study process (``register_engine``), registered again in the
    # child so that it knows them too (a spawned process starts with the built-in ones only)
    engines: tuple[EngineSpec, ...] = ()


class Worker(Protocol):
    """Measures one run in the child process; ``progress`` sends a line to the study's output
    (the real worker logs instead: its records travel the same way)."""

    def __call__(
        self, request: RunRequest, progress: Callable[[str], None]
    ) -> MeasuredExperiment: ...


def measure_worker(request: RunRequest, progress: Callable[[str], None]) -> MeasuredExperiment:
    """The real measurement of one run in a fresh process: engine, energy backend and sensor
    from this machine, the engine unloaded afterwards.

    Uses the study's on-disk baseline cache so that only the first run pays the idle baseline.
    A backend whose runner is ``docker:<image>`` (``LLEM_RUNNER_<BACKEND>`` or the user config)
    runs in one ephemeral container instead, its result read back from the run directory.
    """
    worker = ReusingMeasureWorker()
    try:
        return worker(request, progress)
    finally:
        worker.close()


def _measure_in_container(request: RunRequest, image: str) -> MeasuredExperiment:
    from llenergymeasure.runners import DockerRunner

    docker = DockerRunner(image)
    problems = docker.preflight()
    if problems:
        from llenergymeasure.exceptions import PreFlightError

        raise PreFlightError(problems)
    logger.info("running in container %s", image)
    return _measured_from(docker.run(request.config, Path(request.run_dir)))


def _measured_from(outcome: DockerRunResult) -> MeasuredExperiment:
    """A containerised run's result and its timeseries (``timeseries.parquet`` beside it)."""
    from llenergymeasure.harness.saving import MeasuredExperiment

    timeseries = None
    sidecar = outcome.result_path.parent / "timeseries.parquet"
    if sidecar.is_file():
        import pyarrow.parquet as pq

        timeseries = pq.read_table(sidecar)
    return MeasuredExperiment(result=outcome.result, timeseries=timeseries)


class ReusingMeasureWorker:
    """The real measurement on an engine kept loaded across the runs of one engine group.

    Lives in one group process; the first run loads the engine, the following runs (same
    ``engine_load_key``) reuse it and call ``clear_run_state()`` before their window (when the
    request says ``reuse_engine``; otherwise each run loads and unloads, as without reuse):
    ``harness.session.EngineSession`` does that. An online run (``mode: online``) never reuses
    anything: it starts and stops its own server (or uses its endpoint).

    A backend that runs in docker (``runner: docker:<image>``) gets one container per run
    without reuse; with ``reuse_engine`` the group's runs go to one long-lived container
    (``runners.DockerEngineGroup``) that keeps the engine loaded the same way inside it, and
    is started afresh when it died. ``close()`` unloads the engine, closes the sensor and
    stops the group's container.
    """

    def __init__(self) -> None:
        self._session = EngineSession()
        self._container: Any = None  # DockerEngineGroup: the group's container (docker runner)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # nothing loaded travels to a child

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __call__(self, request: RunRequest, progress: Callable[[str], None]) -> MeasuredExperiment:
        from llenergymeasure.energy.baseline import BaselineCache
        from llenergymeasure.runners import RunnerSpec, resolve_runner

        runner = (
            RunnerSpec.parse(request.config.backend, request.runner, "--runner")
            if request.runner is not None
            else resolve_runner(request.config.backend)
        )
        if runner.kind == "docker" and runner.image:
            if request.reuse_engine:
                return self._measure_in_group_container(request, runner.image)
            return _measure_in_container(request, runner.image)
        cache = (
            BaselineCache(path=request.baseline_cache_path)
            if request.baseline_cache_path is not None
            else None
        )
        return self._session.measure(
            request.config,
            run_id=request.run_id,
            keep_engine=request.reuse_engine,
            baseline_cache=cache,
            work_dir=request.run_dir,
        )

    def _measure_in_group_container(self, request: RunRequest, image: str) -> MeasuredExperiment:
        """The run in the group's one container (started on the group's first run, and again
        after it died); the container keeps the engine loaded between the group's runs."""
        from llenergymeasure.runners import DockerEngineGroup, DockerRunner

        group = self._container
        if group is not None and group.runner.image != image:
            self._container = None
            group.close()
            group = None
        if group is None:
            docker = DockerRunner(image)
            problems = docker.preflight()
            if problems:
                from llenergymeasure.exceptions import PreFlightError

                raise PreFlightError(problems)
            group = self._container = DockerEngineGroup(docker)
        logger.info(
            "running in container %s (engine group: one container for the group's runs)", image
        )
        outcome = group.run(
            request.config,
            Path(request.run_dir),
            run_id=request.run_id,
            keep_engine=True,
            baseline_cache=request.baseline_cache_path,
        )
        return _measured_from(outcome)

    def close(self) -> None:
        """Unload the kept engine, close the sensor and stop the group's container."""
        container, self._container = self._container, None
        try:
            if container is not None:
                container.close()
        finally:
            self._session.close()


def short_traceback(exc: BaseException, frames: int = 6, max_chars: int = 4000) -> str:
    """The last ``frames`` frames of ``exc``'s traceback, capped at ``max_chars``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-frames))
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    # The parent may be gone or have stopped listening: then there is nothing left to tell.
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):
        conn.send(message)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds finally blocks (engine unload) before exiting


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != ppid:  # the study process died (e.g. SIGKILL): stop measuring
            os._exit(70)


def _prepare_child(visible_devices: str | None, parent_pid: int | None) -> None:
    from llenergymeasure.redaction import install_stream_redaction

    install_stream_redaction()  # what this process prints is redacted like the study's own
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    # The study process decides what Ctrl-C means (it terminates this run); SIGTERM unwinds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ppid = parent_pid if parent_pid is not None else os.getppid()
    if os.getppid() != ppid:
        os._exit(70)
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()


def _measure_and_report(worker: Worker, request: RunRequest, conn: Connection) -> bool:
    """Measure one run, save it, send its outcome; True when the process must not go on."""

    def progress(message: str) -> None:
        _send(conn, ("progress", message))

    try:
        from llenergymeasure.files import make_directory

        for spec in request.engines:
            if ENGINES.get(spec.name) != spec:
                register_engine(spec)
        run_dir = Path(request.run_dir)
        # The run's folder is made inside the study's, which must still exist (a study folder
        # that vanished is never recreated); the result is saved there or rescued.
        make_directory(run_dir, base=run_dir.parent)
        measured = worker(request, progress)
        path = measured.save(run_dir, base=run_dir.parent)
        saved = measured.saved
        if saved is not None and saved.rescued:
            logger.warning(
                "the result could not be saved in %s (%s); it was saved to %s",
                run_dir,
                saved.reason,
                saved.directory,
            )
        text = measured.result.model_dump_json()
        payload = {
            "result_path": str(path),
            "result_json": text if len(text.encode("utf-8")) <= PIPE_PAYLOAD_LIMIT else None,
            "rescue_reason": saved.reason if saved is not None and saved.rescued else None,
        }
        _send(conn, ("ok", payload))
        return False
    except BaseException as exc:
        fatal = is_fatal(exc)
        _send(
            conn,
            (
                "error",
                {
                    "type": type(exc).__name__,
                    "message": str(exc) or repr(exc),
                    "traceback": short_traceback(exc),
                    "fatal": fatal,
                },
            ),
        )
        return fatal


def group_child_main(
    worker: Worker,
    conn: Connection,
    parent_pid: int | None = None,
    visible_devices: str | None = None,
) -> None:
    """Entry point of an engine group's process: say ``("ready", pid)``, then serve
    ``("run", request)`` messages until ``("stop", None)``, the pipe closes, or a run fails
    fatally (see the module docstring)."""
    _prepare_child(visible_devices, parent_pid)
    _send(conn, ("ready", os.getpid()))  # run timeouts count from here, not from the spawn
    try:
        with forward_messages(lambda text: _send(conn, ("progress", text))):
            _serve_group(worker, conn)
    finally:
        close = getattr(worker, "close", None)
        try:
            if callable(close):
                close()
        finally:
            conn.close()


def _serve_group(worker: Worker, conn: Connection) -> None:
    while True:
        try:
            kind, request = conn.recv()
        except (EOFError, OSError):
            return
        if kind != "run" or _measure_and_report(worker, request, conn):
            return


def child_main(
    worker: Worker, request: RunRequest, conn: Connection, parent_pid: int | None = None
) -> None:
    """Entry point of a run's subprocess: measure, save, report over ``conn``.

    ``parent_pid`` is the study process; if it dies (even before this function starts) the
    child exits rather than measuring for nobody. ``request.visible_devices`` (per_gpu) becomes
    this process's ``CUDA_VISIBLE_DEVICES`` before anything initialises CUDA, so the run uses
    and measures only its own GPU.
    """
    _prepare_child(request.visible_devices, parent_pid)
    _send(conn, ("ready", os.getpid()))  # the run's timeout counts from here, not the spawn
    try:
        with forward_messages(lambda text: _send(conn, ("progress", text))):
            _measure_and_report(worker, request, conn)
    finally:
        conn.close()
