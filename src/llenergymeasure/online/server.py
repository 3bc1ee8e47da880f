"""Start an engine's own OpenAI-compatible server, wait until it is ready, stop it cleanly.

``server_launch`` turns an online experiment into the command line of the engine's server,
which the engine itself builds (``InferenceBackend.serve_command``: ``vllm serve``,
``transformers serve``, ``trtllm-serve``; see each engine module).

Engine fields that have no server flag (the engine's ``fields_without_server_flag``), when
set, are a ``ConfigError`` naming the field (a silently ignored setting would mislabel the
measurement). ``online.server.extra_args`` are appended last. ``online.gpus`` becomes
``CUDA_VISIBLE_DEVICES`` of the server.

``ManagedServer`` runs the command in its own process group with stdout and stderr in a log file,
polls ``/health`` (then ``/v1/models``) until one answers 200, and stops the whole group:
SIGTERM, then SIGKILL after a grace period. As a context manager it never leaves the server
running, whether the block ends normally, raises, or is interrupted (KeyboardInterrupt).

The server does not outlive llem even when llem cannot clean up (SIGKILL, a study worker's
``os._exit``, a crash): it runs with a parent-death signal (SIGTERM when llem dies, Linux), and a
watchdog process holding a pipe from llem stops the server's whole process group (SIGTERM, then
SIGKILL after the grace period) when that pipe closes; see ``server_guard``. Start the server
from a thread that lives as long as it should (Linux sends the parent-death signal when the
thread that started it ends; llem starts it from the thread that runs the measurement).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import BackendError, ConfigError

__all__ = [
    "ManagedServer",
    "ServerLaunch",
    "builtin_model_source",
    "free_port",
    "server_launch",
]


@dataclass(frozen=True)
class ServerLaunch:
    """How to start an engine's server and talk to it.

    ``request_model`` is the ``model`` field requests must carry; ``supports_ignore_eos`` says
    whether the server takes vLLM's ``ignore_eos`` extension (transformers serve refuses it).
    ``notes`` say which experiment settings the server decides itself (for the result).
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    request_model: str = ""
    supports_ignore_eos: bool = True
    notes: list[str] = field(default_factory=list)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def builtin_model_source(config: ExperimentConfig) -> str | None:
    """The local folder of a ``builtin:`` model that llem's own server will load."""
    from llenergymeasure.engines.builtin import is_builtin_model, resolve_builtin_model

    assert config.online is not None
    if config.online.starts_server and is_builtin_model(config.model):
        return str(resolve_builtin_model(config.model))
    return None


def server_launch(
    config: ExperimentConfig,
    *,
    host: str,
    port: int,
    model_source: str | None = None,
) -> ServerLaunch:
    """The server command line for an online ``config`` (``ConfigError`` when it cannot be).

    ``model_source`` replaces ``config.model`` on the command line (a local folder for
    ``builtin:`` models: ``builtin_model_source``).
    """
    online = config.online
    if config.mode != "online" or online is None:
        raise ConfigError("server_launch needs an experiment with mode: online")
    if not online.starts_server:
        raise ConfigError("online.endpoint is set: llem does not start a server for it")
    model = model_source if model_source is not None else config.model
    from llenergymeasure.engines.factory import engine_class

    engine = engine_class(config.backend)()
    for key, reason in engine.fields_without_server_flag.items():
        section, _, name = key.partition(".")
        if getattr(getattr(config, section), name, None) is not None:
            raise ConfigError(
                f"{key} has no equivalent on the {config.backend} server: {reason}",
                hint=f"remove {key} for mode: online",
            )
    if config.lora is not None:
        raise ConfigError(
            "lora: is not supported in online mode yet",
            hint="serve the adapter yourself and point online.endpoint at that server",
        )
    command = engine.serve_command(config, model=model, host=host, port=port)
    if command is None:
        raise ConfigError(
            f"the {config.backend} engine has no server of its own that llem can start",
            hint="start a server yourself and set online.endpoint to it",
        )
    argv = list(command.argv)
    argv += list(online.effective_server.extra_args)
    env: dict[str, str] = {}
    if online.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in online.gpus)
    return ServerLaunch(
        argv=argv,
        env=env,
        request_model=online.served_model_name or model,
        supports_ignore_eos=command.supports_ignore_eos,
        notes=list(command.notes),
    )


def _resolve_program(name: str) -> str:
    if os.sep in name or shutil.which(name) is not None:
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _missing_interpreter(program: str) -> str | None:
    """The ``#!`` interpreter of script ``program`` when it is an absolute path that does not
    exist here (None otherwise). Such a script is found on ``PATH`` but cannot start: ``exec``
    fails with "No such file or directory", naming only the script. It happens with console
    scripts installed on another machine (``pip install --target`` writes that machine's
    Python into them)."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return None
    interpreter = os.fsdecode(words[0])
    if os.path.isabs(interpreter) and not os.access(interpreter, os.X_OK):
        return interpreter
    return None


_GUARD = str(Path(__file__).with_name("server_guard.py"))


def _guard_argv(*args: str) -> list[str]:
    """``server_guard.py`` run alone: isolated, no site (nothing of llem is imported)."""
    return [sys.executable, "-I", "-S", _GUARD, *args]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ManagedServer:
    """A server process group with a log file, a readiness wait and a clean stop.

    ``argv`` runs with ``env`` added to this process's environment, in a new session (its own
    process group), stdout and stderr appended to ``log_path``. ``base_url`` is
    ``http://host:port``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        log_path: str | os.PathLike[str],
        startup_timeout_s: float = 900.0,
        env: Mapping[str, str] | None = None,
        health_paths: Sequence[str] = ("/health", "/v1/models"),
        grace_s: float = 15.0,
        poll_s: float = 0.25,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.env = dict(env or {})
        self.health_paths = tuple(health_paths)
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.process: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None  # write end of the watchdog's pipe
        self._pump: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start the process group and its watchdog (does not wait for readiness).

        A bare program name not on ``PATH`` is looked up beside this Python interpreter (the
        engines' console scripts live in the same environment's ``bin``).
        """
        if self.process is not None:
            raise RuntimeError("server already started")
        self.argv[0] = _resolve_program(self.argv[0])
        from llenergymeasure.logs import environment_for_servers

        env = {**environment_for_servers(), **self.env}
        found = shutil.which(self.argv[0], path=env.get("PATH"))
        if found is None:
            raise BackendError(
                f"could not start the server {self.argv[0]!r}: no such program",
                hint="is the engine installed in this environment? "
                "(vllm serve / transformers serve / trtllm-serve)",
            )
        interpreter = _missing_interpreter(found)
        if interpreter is not None:
            raise BackendError(
                f"could not start the server {self.argv[0]!r}: {found} starts with "
                f"'#!{interpreter}', which does not exist on this machine",
                hint="the script was installed for another Python (pip --target on another "
                "machine?): reinstall the engine here, or put a working program of that name "
                "first on PATH",
            )
        from llenergymeasure.files import open_log, pump_lines

        # The server's output reaches its log through the redacting write path, line by line.
        log = open_log(self.log_path)
        log.write(f"$ {' '.join(self.argv)}\n")
        log.flush()
        try:
            self.process = subprocess.Popen(
                _guard_argv("exec", str(os.getpid()), *self.argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise BackendError(
                f"could not start the server {self.argv[0]!r}: {exc}",
                hint="is the engine installed in this environment? "
                "(vllm serve / transformers serve / trtllm-serve)",
            ) from exc
        assert self.process.stdout is not None
        self._pump = pump_lines(self.process.stdout, log)
        self._pgid = self.process.pid
        try:
            self._start_watchdog()
        except OSError as exc:
            self.stop()
            raise BackendError(
                f"could not start the watchdog that stops the server if llem dies: {exc}"
            ) from exc

    def _start_watchdog(self) -> None:
        assert self._pgid is not None
        read_end, write_end = os.pipe()  # neither end is inherited by later children
        try:
            self._watchdog = subprocess.Popen(
                _guard_argv("watch", str(read_end), str(self._pgid), f"{self.grace_s:g}"),
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._lifeline = write_end

    def _drain_log(self, wait_s: float = 5.0) -> None:
        """Let the log catch up with the output of a server that has exited."""
        if self._pump is not None:
            self._pump.join(wait_s)

    def _healthy(self) -> bool:
        from llenergymeasure.online.http import http_get

        for path in self.health_paths:
            with contextlib.suppress(OSError):
                # one deadline for the whole answer: a server trickling bytes cannot stall this
                status, _ = http_get(self.base_url + path, timeout_s=2.0, max_bytes=1 << 20)
                if status == 200:
                    return True
        return False

    def wait_ready(self) -> float:
        """Block until a health path answers 200; returns the seconds waited.

        ``BackendError`` (with the log's tail) when the process exits first or the startup
        timeout passes; the server is stopped before the error is raised.
        """
        if self.process is None:
            raise RuntimeError("server not started")
        start = time.monotonic()
        deadline = start + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                self._drain_log()
                raise BackendError(
                    f"server exited with code {code} before it became ready; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}",
                    hint="check the engine fields and online.server.extra_args",
                )
            if self._healthy():
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                self.stop()
                raise BackendError(
                    f"server not ready after {self.startup_timeout_s:g} s "
                    f"(no 200 from {', '.join(self.health_paths)} on {self.base_url}); "
                    f"log {self.log_path}:\n{_tail(self.log_path)}",
                    hint="raise online.server.startup_timeout_s if the model loads slowly",
                )
            time.sleep(self.poll_s)

    def exit_code(self, wait_s: float = 0.0) -> int | None:
        """The server's exit code if it has stopped, else ``None`` (running or not started).

        ``wait_s`` > 0 gives a dying server that long to finish exiting.
        """
        if self.process is None:
            return None
        if wait_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.process.wait(timeout=wait_s)
        return self.process.poll()

    def _group_alive(self) -> bool:
        if self._pgid is None:
            return False
        try:
            os.killpg(self._pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pgid, sig)

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace_s``; idempotent."""
        if self.process is None or self._pgid is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=self.grace_s)
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=self.grace_s)
        self._pgid = None
        self._release_watchdog()
        self._drain_log()

    def _release_watchdog(self) -> None:
        """Close the watchdog's pipe (it finds the group gone and exits) and reap it."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            try:
                watchdog.wait(timeout=self.grace_s + 5.0)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def __enter__(self) -> ManagedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
