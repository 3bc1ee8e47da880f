"""Signals of ``llem`` itself: SIGTERM ends a run or a study as Ctrl-C does."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does.

    So a batch scheduler's cancel or ``kill`` takes the same path as Ctrl-C: the run unwinds
    (a started server is stopped, what was kept is reported), and ``llem`` exits with 130.
    Outside the main thread (where no handler can be set) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
