"""Terminal tables from rich: aligned columns, plain greppable text, colour only on a terminal."""

from __future__ import annotations

import io
import re

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.text_table import render_table, wants_color

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def column_starts(line: str) -> list[int]:
    """Where each cell of a line starts (cells are separated by two or more spaces)."""
    return [m.start() for m in re.finditer(r"(?:(?<=\s\s)|^\s*)(?=\S)", line)]


def test_columns_line_up_and_numbers_can_align_right() -> None:
    text = render_table(
        ["#", "config", "J/token"],
        [["1", "a1b2", "0.5"], ["10", "ffffffffffffffff", "12.25"]],
        justify=["right", "left", "right"],
        stream=io.StringIO(),
    )
    lines = text.splitlines()
    assert lines == [
        "   #  config            J/token",
        "   1  a1b2                  0.5",
        "  10  ffffffffffffffff    12.25",
    ]
    assert all(line == line.rstrip() for line in lines)


def test_cells_are_plain_text_never_markup_and_never_wrapped() -> None:
    long = "x" * 500
    text = render_table(
        ["key", "value"],
        [["[bold]a[/bold]", "<redacted>"], ["b", long], ["c", ":smile:"]],
        stream=io.StringIO(),
    )
    assert "[bold]a[/bold]" in text and "<redacted>" in text and ":smile:" in text
    assert long in text  # one line, whole
    assert not ANSI.search(text)


def test_a_header_rule_is_ascii_dashes() -> None:
    text = render_table(["a", "bb"], [["1", "2"]], rule=True, indent=0, stream=io.StringIO())
    assert text.splitlines() == ["a  bb", "-----", "1  2"]


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert not wants_color(io.StringIO())
    assert wants_color(_Terminal())
    styled = render_table(["metric", "v"], [["tok/s", "1"], ["J/token per request", "2"]],
                          stream=_Terminal())  # fmt: skip
    assert ANSI.search(styled)
    assert ANSI.sub("", styled).splitlines() == [
        "  metric               v",
        "  tok/s                1",
        "  J/token per request  2",
    ]
    assert all(line == line.rstrip() for line in styled.splitlines())  # no styled padding
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(_Terminal())
    assert not ANSI.search(render_table(["metric"], [["tok/s"]], stream=_Terminal()))


def test_llem_config_settings_are_one_aligned_table() -> None:
    result = CliRunner().invoke(app, ["config", "--verbose"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("User config")) + 1
    end = lines.index("", start)
    settings = lines[start:end]
    assert len(settings) > 10
    assert any(line.split()[0] == "output.log_file" for line in settings)
    assert len({tuple(column_starts(line)) for line in settings}) == 1
    assert all(line.rstrip().endswith("]") for line in settings)  # [source] last


def test_the_study_preview_table_lines_up(tmp_path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: grid\n"
        "model: builtin:tiny\n"
        "dataset: {input_len: 8, output_len: 4}\n"
        "n: 2\n"
        "sweep:\n"
        "  pytorch.batch_size: [1, 16]\n"
        "  precision: [fp32, bf16]\n"
    )
    result = CliRunner().invoke(app, ["run", str(study), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("#  backend"))
    rows = lines[head + 2 : head + 6]
    assert set(lines[head + 1]) == {"-"} and len(lines[head + 1]) == len(lines[head])
    assert len(rows) == 4 and all(r.split()[0].isdigit() for r in rows)
    assert len({tuple(column_starts(line)) for line in [lines[head], *rows]}) == 1
