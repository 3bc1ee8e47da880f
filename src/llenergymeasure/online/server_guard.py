"""Keep a server llem started from outliving llem: a parent-death signal and a watchdog.

``ManagedServer`` runs two tiny programs from this file (standard library only, run by path
with ``python -I -S`` so that nothing of llem or the site is imported):

``exec PARENT_PID PROGRAM ARGS...``
    asks Linux to send SIGTERM to this process when its parent (llem) dies
    (``prctl(PR_SET_PDEATHSIG)``, which survives ``exec``), then becomes the server by
    ``execvp``. If the parent is already gone (it died between the fork and the ``prctl``), it
    exits at once. Elsewhere than Linux it only execs.

``watch FD PGID GRACE_S``
    in a session of its own (so a Ctrl-C or SIGTERM meant for llem does not end it), blocks on
    the read end ``FD`` of a pipe whose only write end llem holds. When the pipe closes (llem
    exited, however: SIGKILL included, or ``ManagedServer.stop`` closed it), it sends SIGTERM to
    the server's whole process group ``PGID`` and SIGKILL after ``GRACE_S`` seconds to what is
    left. This covers what the parent-death signal cannot: children of the server that it
    re-parented or left behind (vLLM's engine processes, say), and a server that ignores
    SIGTERM. It also exits, doing nothing, as soon as the group is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5


def _set_parent_death_signal(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")


def _exec(parent_pid: int, argv: list[str]) -> None:
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # llem died before the signal was armed
        os._exit(70)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        why = ""
        if isinstance(exc, FileNotFoundError):  # also what a script's missing #! interpreter gives
            why = " (not on PATH, or a script whose #! interpreter does not exist here)"
        print(f"could not start {argv[0]!r}: {exc}{why}", file=sys.stderr, flush=True)
        os._exit(127)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _watch(fd: int, pgid: int, grace_s: float) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([fd], [], [], _POLL_S)
        if ready:
            if os.read(fd, 4096) == b"":
                break  # every write end is closed: llem is gone or is stopping the server
        elif not _group_alive(pgid):
            return  # the server ended on its own: nothing to guard
    _kill_group(pgid, grace_s)


def main(argv: list[str]) -> None:
    """Entry point: ``exec PARENT_PID ARGV...`` or ``watch FD PGID GRACE_S``."""
    if len(argv) >= 3 and argv[0] == "exec":
        _exec(int(argv[1]), argv[2:])
    elif len(argv) == 4 and argv[0] == "watch":
        _watch(int(argv[1]), int(argv[2]), float(argv[3]))
    else:
        print("usage: server_guard.py exec PID ARGV... | watch FD PGID GRACE_S", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
