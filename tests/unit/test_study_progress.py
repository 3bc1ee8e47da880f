"""Study progress: a bar on a terminal, plain lines elsewhere (SLURM logs, CI, pipes)."""

from __future__ import annotations

import io

from llenergymeasure.study.progress import StudyProgress, countdown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_non_terminal_gets_plain_lines_and_no_redraw_frames():
    stream = io.StringIO()
    progress = StudyProgress(3, stream=stream)
    progress.message("run 1/3: loading")
    countdown(3, label="config gap", progress=progress, sleep=lambda _s: None)
    progress.advance()
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "[llem] run 1/3: loading",
        "[llem] config gap: 3 s",  # once, not every tick of the countdown
        text.splitlines()[2],
    ]
    assert text.splitlines()[2].startswith("[llem] study: 1/3 runs done (")


def test_a_terminal_gets_the_bar():
    stream = _Terminal()
    progress = StudyProgress(2, stream=stream)
    progress.advance()
    progress.close()
    assert "\r" in stream.getvalue()
    assert "1/2" in stream.getvalue()


def test_quiet_prints_nothing_on_either():
    for stream in (io.StringIO(), _Terminal()):
        progress = StudyProgress(2, stream=stream, quiet=True)
        progress.message("x")
        progress.advance()
        progress.status("gap: 1 s")
        progress.close()
        assert stream.getvalue() == ""
