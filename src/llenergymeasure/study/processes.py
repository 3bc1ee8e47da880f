"""The study process's side of a run's subprocess: wait for its outcome, stop it.

Shared by every local executor (fresh process per run, engine groups, per_gpu).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import RunError

__all__ = [
    "STOP_GRACE_S",
    "Outcome",
    "SavedRun",
    "conclude",
    "describe_exit",
    "outcome_of",
    "receive_final",
    "stop_process",
    "timeout_error",
]

STOP_GRACE_S = 5.0  # after terminate(), how long a run's process gets before kill()

@dataclass(frozen=True)
class SavedRun:
    """A run that completed: its result and the ``result.json`` it was saved to
    (``rescue_reason``: why that is a rescue folder instead of the run's own folder)."""

    result: ExperimentResult
    path: Path
    rescue_reason: str | None = None


Outcome = RunError | SavedRun
Final = tuple[str, dict[str, Any]]


def describe_exit(code: int | None) -> str:
    """Why a process ended without sending a result, from its exit code."""
    if code is None:
        return "the run's process did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (often the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"the run's process was killed by {name}{oom} before sending a result"
    return f"the run's process exited with code {code} without sending a result"


def stop_process(proc: Any) -> None:
    """terminate(), then kill() if the process has not exited within the grace period."""
    if proc.is_alive():
        proc.terminate()
        proc.join(STOP_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(STOP_GRACE_S)


#: How long a fresh run process may take to start Python and import its worker, on top of the
#: run's own timeout (which counts from its "ready" message).
START_ALLOWANCE_S = 120.0


def timeout_error(timeout: float | None) -> RunError:
    return RunError(
        type="TimeoutError",
        message=f"the run exceeded experiment_timeout_seconds={timeout or 0:g} and its process "
        "was terminated",
    )


def receive_final(
    proc: Any,
    receiver: Any,
    timeout: float | None,
    relay: Callable[[str], None],
    *,
    start_allowance_s: float = 0.0,
) -> Final | RunError | None:
    """Relay progress until the run's final message (returned), a timeout (the process is
    stopped; a ``RunError``) or the process ending without one (None).

    A freshly spawned process says ``("ready", pid)`` once Python and its imports are up; the
    timeout counts from then. Until then it may take ``start_allowance_s`` more.
    """
    deadline = None if timeout is None else time.monotonic() + timeout + start_allowance_s
    while True:
        wait = 0.2
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                stop_process(proc)
                return timeout_error(timeout)
            wait = min(wait, left)
        if receiver.poll(wait):
            try:
                kind, payload = receiver.recv()
            except (EOFError, OSError):
                return None  # the process ended without a final message
            if kind == "progress":
                relay(str(payload))
                continue
            if kind == "ready":  # the process is up: the run's own time starts now
                if timeout is not None:
                    deadline = time.monotonic() + timeout
                continue
            return kind, payload
        if not proc.is_alive() and not receiver.poll(0):
            return None


def outcome_of(final: Final | None, exitcode: int | None) -> Outcome:
    """A run's outcome from its final message (None: it sent none; ``exitcode`` says why)."""
    if final is None:
        return RunError(type="WorkerCrashed", message=describe_exit(exitcode))
    kind, payload = final
    if kind != "ok":
        return RunError(
            type=str(payload.get("type", "Exception")),
            message=str(payload.get("message", "")),
            traceback=payload.get("traceback"),
        )
    path = Path(payload["result_path"])
    try:
        text = payload.get("result_json") or path.read_text(encoding="utf-8")
        result = ExperimentResult.model_validate_json(text)
    except (OSError, ValueError, ValidationError) as exc:
        return RunError(type="InvalidResult", message=f"could not read {path}: {exc}")
    reason = payload.get("rescue_reason")
    return SavedRun(result, path, str(reason) if reason else None)


def conclude(proc: Any, final: Final | None) -> Outcome:
    """The outcome of a one-run process once it has ended (stopped if it lingers)."""
    proc.join(STOP_GRACE_S)
    if proc.is_alive():
        stop_process(proc)
    return outcome_of(final, proc.exitcode)
