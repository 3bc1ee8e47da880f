"""Study progress on stderr: one tqdm bar (runs done/total, elapsed, ETA), phase lines, gaps."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any


class StudyProgress:
    """Overall bar plus per-run messages printed above it; silent when ``quiet``.

    On a stream that is not a terminal (SLURM logs, CI, pipes) there is no bar: plain lines
    instead of redraw frames (``plain``; None = decide from ``stream.isatty()``).
    """

    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        quiet: bool = False,
        stream: IO[str] | None = None,
        plain: bool | None = None,
    ) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._plain = _not_a_terminal(self.stream) if plain is None else plain
        self._total, self._done, self._started = total, done, time.monotonic()
        self._status_label: str | None = None
        if not quiet and not self._plain:
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

    @property
    def _lines(self) -> bool:
        return self._plain and not self.quiet

    def _print(self, text: str) -> None:
        print(f"[llem] {text}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A phase or status line above the bar."""
        if self._bar is not None:
            self._bar.write(f"[llem] {text}", file=self.stream)
        elif self._lines:
            self._print(text)

    def advance(self) -> None:
        """One more run finished (completed or failed)."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._lines:
            elapsed = time.monotonic() - self._started
            self._print(f"study: {self._done}/{self._total} runs done ({elapsed:.0f} s elapsed)")

    def status(self, text: str) -> None:
        """Replace the bar's trailing status (used for the gap countdown).

        Plain lines: only the first status of each label (``"<label>: N s"``), not every tick.
        """
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        elif self._lines:
            label = text.partition(":")[0] if text else None
            if label is not None and label != self._status_label:
                self._print(text)
            self._status_label = label

    def close(self) -> None:
        """Finish the bar line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _not_a_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return not (callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return True


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
