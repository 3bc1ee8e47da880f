"""``benchmarks/compare_tables.py``: the BENCHMARKS.md section of ``llem compare`` verdicts on the
recorded reuse-vs-fresh studies (issue 30), and the reading of a study inside a ``.tar.xz``."""

from __future__ import annotations

import tarfile
from pathlib import Path

import compare_data as data
import pytest
from benchmark_scripts import (
    BENCHMARKS,
    assert_tables_well_formed,
    load_benchmark_script,
    redirect_sections,
    refuse_writes,
)

pytest.importorskip("scipy")
ct = load_benchmark_script("compare_tables")
HEADER = "| config | metric | A (fresh) | B (reuse) |"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A faster B (3 cycles each) at the same J/token."""
    a = data.write_study(
        tmp_path / "fresh", [data.result(tok_s=t) for t in data.cycles(700, 0.01, 3, 1)]
    )
    b = data.write_study(
        tmp_path / "reuse", [data.result(tok_s=t) for t in data.cycles(800, 0.01, 3, 2)]
    )
    return a, b


def test_the_section_has_one_verdict_table_per_pair_and_is_written(
    pair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    md = redirect_sections(ct, monkeypatch, tmp_path / "BENCHMARKS.md")
    a, b = pair
    ct.main(["--pair", "tiny pair", str(a), str(b), "--no-coverage"])
    out = capsys.readouterr().out
    assert "### tiny pair" in out
    assert_tables_well_formed(out, [HEADER])
    tps = next(line for line in out.splitlines() if "| output tokens / s |" in line)
    assert "**better**" in tps and tps.endswith("| 3 |")  # 1 % spread: 3 cycles detect 5 %
    assert "Environment, where A and B differ: nothing." in out
    text = md.read_text()
    assert "## Other\n\nkept" in text and f"## {ct.TITLE}" in text


def test_no_write_only_prints(
    pair, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    refuse_writes(ct, monkeypatch)
    before = (BENCHMARKS.parent / "BENCHMARKS.md").read_bytes()
    a, b = pair
    ct.main(["--pair", "p", str(a), str(b), "--no-coverage", "--no-write"])
    assert HEADER in capsys.readouterr().out
    assert (BENCHMARKS.parent / "BENCHMARKS.md").read_bytes() == before


def test_a_study_inside_an_archive_is_extracted_and_its_command_says_how(pair, tmp_path: Path):
    a, _ = pair
    archive = tmp_path / "bundle.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(a, arcname="bundle/fresh")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    found = ct.resolve(f"{archive}:bundle/fresh", scratch)
    assert (found / "study_summary.json").is_file()
    assert ct.command("results/x.tar.xz:x/a", "results/x.tar.xz:x/b") == (
        "mkdir -p .devout && tar xJf benchmarks/results/x.tar.xz -C .devout && "
        "llem compare .devout/x/a .devout/x/b"
    )
