"""Study progress: one tqdm bar on stderr (runs done/total, elapsed, ETA), and the study's
phase lines as log records (``llenergymeasure.study.progress``; the CLI prints them above the
bar, see ``cli.logging_setup``)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from llenergymeasure.logs import RUN_ATTRIBUTE, relay

logger = logging.getLogger(__name__)


class StudyProgress:
    """Overall bar, and the study's messages as log records; no bar when ``quiet``.

    On a stream that is not a terminal (SLURM logs, CI, pipes) there is no bar (``plain``;
    None = decide from ``stream.isatty()``). Without a bar, each finished run and the first
    status of each gap are INFO records instead of redraw frames.
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
        """No bar: runs done and gap statuses are records too."""
        return self._bar is None

    def message(self, text: str, *, level: int = logging.INFO, run_id: str | None = None) -> None:
        """A phase or status message of the study (of run ``run_id``), logged."""
        logger.log(level, "%s", text, extra={RUN_ATTRIBUTE: run_id} if run_id else None)

    def relay(self, run_id: str, text: str) -> None:
        """A message a run's process sent (``logs.forward_messages``), logged at its level."""
        relay(logger, text, run_id=run_id)

    def advance(self) -> None:
        """One more run finished (completed or failed)."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._lines:
            elapsed = time.monotonic() - self._started
            self.message(f"study: {self._done}/{self._total} runs done ({elapsed:.0f} s elapsed)")

    def status(self, text: str) -> None:
        """Replace the bar's trailing status (used for the gap countdown).

        Without a bar: a message for the first status of each label (``"<label>: N s"``), not
        for every tick.
        """
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        elif self._lines:
            label = text.partition(":")[0] if text else None
            if label is not None and label != self._status_label:
                self.message(text)
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
