"""One long-lived container serving the runs of an engine group (``execution.reuse_engine``).

Without engine reuse every run gets its own ``docker run --rm`` (``DockerRunner.run``). With
it, the study's engine-group process (``study.worker.ReusingMeasureWorker``) hands each run of
the group to a ``DockerEngineGroup``, which starts one container on the first run::

    docker run -i --rm --name llem-<hex> [--gpus ...] [--shm-size ...] -v <study_dir>:/llem \\
        [-e NAME ...] <image> python -m llenergymeasure.runners.container_entry --serve /llem

and then, for each run, writes the run's ``config.json`` into its own exchange directory
(``<study_dir>/<run_id>/``, so ``/llem/<run_id>/`` in the container), sends a request line
on the container's stdin and waits for the reply line (``docker.REPLY_MARKER``). The
container measures the run on its kept engine and writes ``out/result.json`` +
``timeseries.parquet`` (or ``out/error.json``) into that directory, exactly where a one-run
container writes them. The container's output goes into each run's ``container.log`` (the
lines printed while that run was the current one; the engine load is in the first run's log).

Failures: a Python exception fails only its run (the container serves the next one); a fatal
error (CUDA, out of memory) is reported and the container unloads and exits; a container that
dies (crash, OOM kill) fails the current run. The next run starts a fresh container either way.
An interruption while a run is measured (``KeyboardInterrupt``/``SystemExit``: the study's
``experiment_timeout_seconds`` or Ctrl-C terminating the group's process) kills the container
by name (``docker kill``: killing the ``docker`` client does not stop a container). If the
group's process dies without unwinding, the container's stdin closes and it exits by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llenergymeasure.exceptions import ExperimentError
from llenergymeasure.logs import relay
from llenergymeasure.runners.docker import (
    REPLY_MARKER,
    DockerRunner,
    DockerRunResult,
    failure_message,
    prepare_exchange,
    read_result,
)

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.files import LogFile

__all__ = ["FATAL_EXIT_S", "GROUP_STOP_S", "DockerEngineGroup"]

GROUP_STOP_S = 45.0  # after "stop", how long the container gets to unload before it is killed
FATAL_EXIT_S = 60.0  # after a fatal error, how long it gets to unload and exit by itself
KILL_WAIT_S = 30.0  # how long `docker kill` and the client's exit may take

logger = logging.getLogger(__name__)


class DockerEngineGroup:
    """One container at a time serving an engine group's runs; see the module docstring."""

    def __init__(self, runner: DockerRunner, *, env: Mapping[str, str] | None = None) -> None:
        self.runner = runner
        self.env = env
        self.name: str | None = None  # the current container
        self.root: Path | None = None  # the host directory mounted at /llem
        self.command: list[str] = []
        self.started_for: str | None = None  # the run the current container was started for
        self.served = 0  # runs sent to the current container
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._log: LogFile | None = None
        self._log_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether a container is running (its ``docker run`` client has not exited)."""
        return self._proc is not None and self._proc.poll() is None

    # ─── One run ────────────────────────────────────────────────────────────
    def run(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        run_id: str,
        keep_engine: bool = True,
        baseline_cache: str | Path | None = None,
    ) -> DockerRunResult:
        """Measure ``config`` as run ``run_id`` in the group's container (started when there is
        none, or when ``run_dir`` lies elsewhere); ``ExperimentError`` (logs kept) on failure.
        The container's progress replies are logged here (``logs.relay``).

        ``baseline_cache``: the study's idle-baseline cache file, shared with the container
        when it lies in the mounted directory."""
        run_dir = Path(run_dir)
        root = run_dir.resolve().parent
        out_dir = prepare_exchange(config, run_dir)
        log_path = run_dir / "container.log"
        if self._proc is not None and (not self.alive or self.root != root):
            self.close()
        if self._proc is None:
            self._start(config, root, run_id)
        self.served += 1
        self._switch_log(log_path, run_id)
        request = {
            "run_id": run_id,
            "dir": run_dir.resolve().name,
            "keep_engine": keep_engine,
            "baseline_cache": self._inside_root(baseline_cache),
        }
        try:
            self._send(request)
            reply = self._wait_reply(run_id)
        except BaseException:  # interrupted (Ctrl-C, the study's timeout): no orphan
            self.close(graceful=False)
            raise
        name, image = self.name, self.runner.image
        if reply is None:  # the container ended without answering
            code = self._end()
            raise ExperimentError(
                failure_message(
                    f"container {name} ({image}) exited with code {code} during run {run_id}",
                    log_path,
                    error_dir=out_dir,
                )
            )
        if not reply.get("ok"):
            if reply.get("fatal"):  # it unloads and exits by itself; the next run starts anew
                self._wait_exit(FATAL_EXIT_S)
                self._end()
            raise ExperimentError(
                failure_message(
                    f"run {run_id} failed in container {name} ({image}): "
                    f"{reply.get('type')}: {reply.get('message')}",
                    log_path,
                )
            )
        result_path = out_dir / "result.json"
        if not result_path.is_file():
            raise ExperimentError(
                failure_message(
                    f"container {name} ({image}) reported run {run_id} done but wrote no "
                    "result.json",
                    log_path,
                    error_dir=out_dir,
                )
            )
        result = read_result(result_path, image, log_path)
        return DockerRunResult(
            result=result, result_path=result_path, log_path=log_path, command=self.command
        )

    def _inside_root(self, path: str | Path | None) -> str | None:
        if path is None or self.root is None:
            return None
        resolved = Path(path).resolve()
        return resolved.name if resolved.parent == self.root else None

    def _send(self, request: dict[str, Any]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the container is gone: its output ends and the wait reports the exit

    def _wait_reply(self, run_id: str) -> dict[str, Any] | None:
        """The run's final reply; None when the container's output ended without one. (The
        study's ``experiment_timeout_seconds`` ends the group's process, which lands in the
        caller's ``except BaseException``.)"""
        while True:
            try:
                reply = self._replies.get(timeout=0.2)  # short: signals are handled between
            except queue.Empty:
                continue
            if reply is None:
                return None
            if reply.get("run_id") != run_id:
                continue  # a late message of an earlier run
            if "progress" in reply:
                relay(logger, str(reply["progress"]))
                continue
            return reply

    # ─── The container ──────────────────────────────────────────────────────
    def _start(self, config: ExperimentConfig, root: Path, run_id: str) -> None:
        name = f"llem-{uuid.uuid4().hex[:12]}"
        cmd = self.runner.build_serve_command(config, root, name=name, env=self.env)
        proc_env = dict(os.environ if self.env is None else self.env)
        try:
            # Its own session: a Ctrl-C at the terminal is the study's to handle (it stops
            # the group's process, which kills this container by name).
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=proc_env,
                start_new_session=True,
            )
        except OSError as e:
            raise ExperimentError(f"could not start `{self.runner.docker} run`: {e}") from e
        self._proc, self.name, self.root, self.command = proc, name, root, cmd
        self.started_for, self.served = run_id, 0
        self._replies = queue.Queue()
        assert proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout, self._replies), daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes], replies: queue.Queue[dict[str, Any] | None]) -> None:
        """The container's output: reply lines to ``replies``, the rest to the current log."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            at = line.find(REPLY_MARKER)
            if at >= 0:
                try:
                    message = json.loads(line[at + len(REPLY_MARKER) :])
                except ValueError:
                    message = None
                if isinstance(message, dict):
                    if line[:at].strip():  # output that ran into the reply on one line
                        self._write_log(line[:at] + "\n")
                    replies.put(message)
                    continue
            self._write_log(line)
        replies.put(None)

    def _write_log(self, text: str) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.write(text)
                self._log.flush()

    def _switch_log(self, log_path: Path, run_id: str) -> None:
        """From now on the container's output goes to ``log_path`` (this run's log)."""
        from llenergymeasure.files import open_log

        log = open_log(log_path)  # redacted line by line, never through a link
        log.write("$ " + " ".join(self.command) + "\n")
        log.write(
            f"# engine group container {self.name} (started for run {self.started_for}): "
            f"serving run {run_id} (its run {self.served})\n"
        )
        log.flush()
        with self._log_lock:
            previous, self._log = self._log, log
        if previous is not None:
            previous.close()

    def _wait_exit(self, seconds: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(seconds)

    def _end(self) -> int | None:
        """Stop the container (``docker kill`` by name while its client still runs), reap the
        client and the reader; the exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run(
                        [self.runner.docker, "kill", str(self.name)],
                        capture_output=True,
                        check=False,
                        timeout=KILL_WAIT_S,
                        env=dict(os.environ if self.env is None else self.env),
                    )
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(KILL_WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.close()
            if self._reader is not None:
                self._reader.join(5.0)
            if proc.stdout is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdout.close()
            with self._log_lock:
                log, self._log = self._log, None
            if log is not None:
                log.close()
        return proc.returncode

    def close(self, *, graceful: bool = True) -> None:
        """End the current container: ``graceful`` asks it to unload and exit (killed after
        ``GROUP_STOP_S``); otherwise it is killed at once."""
        proc = self._proc
        if proc is None:
            return
        try:
            if graceful and proc.poll() is None:
                self._send({"stop": True})
                with contextlib.suppress(OSError, ValueError):
                    assert proc.stdin is not None
                    proc.stdin.close()
                self._wait_exit(GROUP_STOP_S)
        finally:
            self._end()
