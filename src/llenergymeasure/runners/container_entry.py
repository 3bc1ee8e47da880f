"""Entry point inside a runner container: read the config, measure, save into the out dir.

One run (one container per run)::

    python -m llenergymeasure.runners.container_entry [CONFIG_JSON [OUT_DIR]]

The config path defaults to ``$LLEM_CONFIG_PATH``, the out dir to ``/llem/out``. Writes
``result.json`` (+ ``timeseries.parquet``) on success; on failure writes ``error.json``
({type, message}) and exits 1 so that the host can report the reason.

An engine group (one container for the group's runs, ``execution.reuse_engine``)::

    python -m llenergymeasure.runners.container_entry --serve ROOT

Serves runs until told to stop: each line on stdin is a JSON request ``{"run_id", "dir",
"keep_engine", "baseline_cache"}`` naming a run's exchange directory ``ROOT/<dir>`` (the host
wrote ``config.json`` there), or ``{"stop": true}``. Each run is measured by one
``harness.session.EngineSession`` (the kept-engine machinery of the study's engine-group
process: one engine load for the group, ``engine_reused``/``engine_loaded_by`` in the results)
and saved into ``ROOT/<dir>/out`` like a one-run container does (``result.json`` +
``timeseries.parquet``, or ``error.json``). Replies go to stdout, one line each, after
``REPLY_MARKER``: ``{"run_id", "progress"}`` while a run goes (its log records,
``logs.forward_messages``), then ``{"run_id", "ok": true}`` or ``{"run_id", "ok": false,
"type", "message", "fatal"}``; everything else the container prints (its log records,
stdout of libraries included) goes to stderr. A Python exception fails only its run;
a fatal one (CUDA, out of memory: ``is_fatal``) unloads and ends the container (exit code 1)
so that the host starts a fresh one for the group's next run. When stdin closes (the host's
process is gone) the container ends: at once if a run is being measured, else after unloading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from llenergymeasure.logs import forward_messages, process_logging
from llenergymeasure.runners.docker import REPLY_MARKER

__all__ = ["main", "serve"]

logger = logging.getLogger(__name__)

HOST_GONE_EXIT = 70  # stdin closed while a run was being measured: nobody waits for it


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the experiment of the config JSON and save it into the out dir; exit code.
    ``--serve ROOT``: serve an engine group's runs from stdin (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    with process_logging():  # the container's log: its stderr
        if args and args[0] == "--serve":
            return _serve_stdio(Path(args[1] if len(args) > 1 else "/llem"))
        return _measure_one(args)


def _measure_one(args: list[str]) -> int:
    config_path = Path(args[0] if args else os.environ.get("LLEM_CONFIG_PATH", ""))
    out_dir = Path(args[1] if len(args) > 1 else "/llem/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from llenergymeasure.config.models import ExperimentConfig
        from llenergymeasure.harness.measure import measure

        config = ExperimentConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
        # an online run's server log lands beside the result as it goes
        measured = measure(config, work_dir=out_dir)
        measured.save(out_dir, rescue=False)  # a container's own disk dies with it
    except Exception as e:
        traceback.print_exc()
        _write_error(out_dir, e)
        return 1
    return 0


def _write_error(out_dir: Path, exc: BaseException) -> None:
    from llenergymeasure.files import write_json

    write_json(
        out_dir / "error.json", {"type": type(exc).__name__, "message": str(exc) or repr(exc)}
    )


# ─── Serving an engine group ─────────────────────────────────────────────────
def serve(root: Path, requests: Iterable[str], reply: Callable[[dict[str, Any]], None]) -> int:
    """Measure the run of every request line in turn, on one ``EngineSession``; exit code
    (1 after a fatal error, else 0). Stops at ``{"stop": true}`` or the end of ``requests``."""
    from llenergymeasure.harness.session import EngineSession

    session = EngineSession()
    try:
        for line in requests:
            if not line.strip():
                continue
            request = json.loads(line)
            if request.get("stop"):
                break
            if _serve_one(root, request, session, reply):
                return 1
    finally:
        session.close()
    return 0


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing a name that leaves ``root``."""
    path = (root / name).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ValueError(f"{name!r} is not inside {root}")
    return path


def _serve_one(
    root: Path,
    request: dict[str, Any],
    session: Any,
    reply: Callable[[dict[str, Any]], None],
) -> bool:
    """Measure one request's run and reply; True when the error was fatal (stop serving)."""
    run_id = str(request.get("run_id"))
    out_dir: Path | None = None

    def progress(message: str) -> None:
        reply({"run_id": run_id, "progress": message})

    try:
        from llenergymeasure.config.models import ExperimentConfig
        from llenergymeasure.energy.baseline import BaselineCache

        exchange = _inside(root, str(request["dir"]))
        out_dir = exchange / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        config = ExperimentConfig.model_validate_json(
            (exchange / "config.json").read_text(encoding="utf-8")
        )
        cache_name = request.get("baseline_cache")
        cache = BaselineCache(path=_inside(root, cache_name)) if cache_name else None
        with forward_messages(progress):
            measured = session.measure(
                config,
                run_id=run_id,
                keep_engine=bool(request.get("keep_engine", True)),
                baseline_cache=cache,
                work_dir=out_dir,
            )
        measured.save(out_dir, rescue=False)  # a container's own disk dies with it
    except BaseException as exc:
        from llenergymeasure.harness.session import is_fatal

        traceback.print_exc()
        fatal = is_fatal(exc)
        if out_dir is not None:
            with contextlib.suppress(OSError):
                _write_error(out_dir, exc)
        reply(
            {
                "run_id": run_id,
                "ok": False,
                "type": type(exc).__name__,
                "message": str(exc) or repr(exc),
                "fatal": fatal,
            }
        )
        return fatal
    reply({"run_id": run_id, "ok": True})
    return False


def _is_stop(line: str) -> bool:
    try:
        return bool(json.loads(line).get("stop"))
    except (ValueError, AttributeError):
        return False


class _HostLines:
    """stdin's lines, read by a thread so that the end of stdin (the host's process is gone)
    is noticed while a run is being measured: then the container exits at once."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._busy = threading.Event()  # a line was handed out and its run is not done
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
            if _is_stop(line):
                return  # a graceful stop: the unload that follows must not be cut short
        if self._busy.is_set():
            try:  # the host that read our output may be gone too (a broken pipe)
                logger.error("stdin closed during a run: the host is gone")
            finally:
                os._exit(HOST_GONE_EXIT)
        self._lines.put(None)

    def __iter__(self) -> Iterator[str]:
        while True:
            self._busy.clear()
            line = self._lines.get()
            if line is None:
                return
            self._busy.set()
            yield line


def _serve_stdio(root: Path) -> int:
    # Replies own the real stdout; anything else printed to stdout goes to stderr (the log).
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    lock = threading.Lock()

    def reply(message: dict[str, Any]) -> None:
        with lock:
            replies.write(REPLY_MARKER + json.dumps(message) + "\n")
            replies.flush()

    return serve(root, _HostLines(sys.stdin), reply)


if __name__ == "__main__":
    raise SystemExit(main())
