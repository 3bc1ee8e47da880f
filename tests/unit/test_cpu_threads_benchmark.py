"""benchmarks/cpu_threads.py: interleaved settings, and a real (tiny) run reads its threads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_scripts import (
    assert_tables_well_formed,
    load_benchmark_script,
    redirect_sections,
    refuse_writes,
)

script = load_benchmark_script("cpu_threads")


def test_thread_counts_resolve_all_to_the_usable_cpus_without_duplicates() -> None:
    assert script.thread_counts(["1", "2", "all"], 2) == [1, 2]
    assert script.thread_counts(["1", "2", "all"], 8) == [1, 2, 8]
    assert script.thread_counts(["all", "16"], 4) == [4, 16]


def test_every_round_runs_every_setting_once_in_a_rotated_order() -> None:
    a, b, c = (script.Setting("tiny", t, "fp32") for t in (1, 2, 4))
    order = script.interleaved([a, b, c], 3)
    assert [s for _, s in order] == [a, b, c, b, c, a, c, a, b]
    assert [rep for rep, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_the_summary_gives_median_range_load_and_warnings_per_setting() -> None:
    s = script.Setting("tiny", 2, "bf16")
    rows = [
        {
            "model": "tiny",
            "threads": 2,
            "precision": "bf16",
            "tokens_per_second": tps,
            "torch_num_threads": 2,
            "load_start": ls,
            "load_end": le,
            "oversubscribed": over,
            "host_cpu_j_per_token": None,
        }
        for tps, ls, le, over in (
            (10.0, 1.0, 3.0, True),
            (30.0, 0.5, 0.7, False),
            (20.0, None, 1, False),
        )
    ]
    (summary,) = script.summarise(rows, [s])
    assert (summary.n, summary.median_tps, summary.min_tps, summary.max_tps) == (
        3,
        20.0,
        10.0,
        30.0,
    )
    assert (summary.load_min, summary.load_max) == (0.5, 3.0)
    assert summary.oversubscribed == 1 and summary.threads_recorded == "2"
    line = script.table([summary]).splitlines()[-1]
    assert line == "| tiny | bf16 | 2 | 3 | 20.0 | 10.0-30.0 | 100% | 0.50-3.00 | 1/3 | n/a |"


def test_a_tiny_run_measures_each_setting_and_records_the_threads_it_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch

    before = torch.get_num_threads()
    refuse_writes(script, monkeypatch)
    args = ["--reps", "1", "--threads", "1", "--precisions", "fp32", "-n", "2"]
    script.main([*args, "--output-len", "2", "--work", str(tmp_path), "--no-write"])
    out = capsys.readouterr().out
    assert_tables_well_formed(out, ["| model |"])
    rows = [line for line in out.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 1
    assert rows[0].startswith("| tiny | fp32 | 1 | 1 |")  # threads read back from the result
    assert torch.get_num_threads() == before  # the script restores the process's threads
    assert not (tmp_path / "cpu_threads.json").exists()


def test_the_section_replaces_only_its_own_in_benchmarks_md(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = redirect_sections(script, monkeypatch, tmp_path / "BENCHMARKS.md")
    script.publish("body", script.TITLE, False)
    text = path.read_text()
    assert "## Other\n\nkept" in text and f"## {script.TITLE}\n\nbody" in text
