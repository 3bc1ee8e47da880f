"""Study progress on stderr: one tqdm bar (runs done/total, elapsed, ETA), phase lines, gaps."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any


class StudyProgress:
    """Overall bar plus per-run messages printed above it; silent when ``quiet``."""

    def __init__(
        self, total: int, done: int = 0, *, quiet: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=done,
                desc="study",
                unit="run",
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def message(self, text: str) -> None:
        """A phase or status line above the bar."""
        if self._bar is not None:
            self._bar.write(f"[llem] {text}", file=self.stream)

    def advance(self) -> None:
        """One more run finished (completed or failed)."""
        if self._bar is not None:
            self._bar.update(1)

    def status(self, text: str) -> None:
        """Replace the bar's trailing status (used for the gap countdown)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        """Finish the bar line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def countdown(
    seconds: float,
    *,
    label: str,
    progress: StudyProgress,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait ``seconds`` in steps of at most 1 s, showing ``<label>: N s`` on the bar's line."""
    remaining = float(seconds)
    while remaining > 0:
        progress.status(f"{label}: {math.ceil(remaining)} s")
        step = min(1.0, remaining)
        sleep(step)
        remaining -= step
    progress.status("")
