"""Study progress: a bar on a terminal; the study's messages are log records (the CLI prints
them above the bar), and without a bar finished runs and gaps are records too."""

from __future__ import annotations

import io
import logging

import pytest

from llenergymeasure.study.progress import StudyProgress, countdown

PROGRESS_LOGGER = "llenergymeasure.study.progress"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


def test_a_non_terminal_gets_records_and_no_redraw_frames(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="llenergymeasure")
    stream = io.StringIO()
    progress = StudyProgress(3, stream=stream)
    progress.message("run 1/3: loading")
    countdown(3, label="config gap", progress=progress, sleep=lambda _s: None)
    progress.advance()
    progress.close()
    assert stream.getvalue() == ""  # no bar, and the messages are not printed by the study
    lines = messages(caplog)
    assert lines[:2] == [
        "run 1/3: loading",
        "config gap: 3 s",  # once, not every tick of the countdown
    ]
    assert len(lines) == 3 and lines[2].startswith("study: 1/3 runs done (")


def test_a_terminal_gets_the_bar(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="llenergymeasure")
    stream = _Terminal()
    progress = StudyProgress(2, stream=stream)
    progress.advance()
    progress.close()
    assert "\r" in stream.getvalue()
    assert "1/2" in stream.getvalue()
    assert messages(caplog) == []  # the bar says it


def test_quiet_draws_no_bar_on_either_stream():
    for stream in (io.StringIO(), _Terminal()):
        progress = StudyProgress(2, stream=stream, quiet=True)
        progress.message("x")
        progress.advance()
        progress.status("gap: 1 s")
        progress.close()
        assert stream.getvalue() == ""


def test_a_relayed_message_keeps_its_level_and_run(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="llenergymeasure")
    progress = StudyProgress(1, stream=io.StringIO())
    progress.relay("cfg1_c1", "loading builtin:tiny")
    progress.relay("cfg1_c1", "warning: sampler error")
    records = [r for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert [(r.levelno, r.getMessage(), r.llem_run) for r in records] == [
        (logging.INFO, "loading builtin:tiny", "cfg1_c1"),
        (logging.WARNING, "sampler error", "cfg1_c1"),
    ]
