"""``llem compare``: matched configs, B/A with intervals, verdicts, the environment diff first,
the ``--fail-if-worse`` gate and its exit codes, Markdown/JSON/HTML, and ``--plan``.

Two kinds of data: synthetic results with known distributions (``compare_data``: real result
files with their metrics replaced by seeded log-normal cycle values), and real ``builtin:tiny``
studies on this CPU whose throughput really differs (batch 1 against batch 8).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import compare_data as data
import pytest
import yaml
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.compare import compare
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.stats import cycles_needed, log_spread
from llenergymeasure.study.runner import StudyRunner

pytest.importorskip("scipy")
cli = CliRunner()


def invoke(*args: str | Path) -> Any:
    return cli.invoke(app, ["compare", *[str(a) for a in args]])


def side(
    directory: Path, *, tok_s: float, j: float, n: int, seed: int, spread: float = 0.02, **kw: Any
) -> Path:
    """A study directory of ``n`` cycles of one config with these geometric means."""
    results = [
        data.result(tok_s=t, j=e, **kw)
        for t, e in zip(
            data.cycles(tok_s, spread, n, seed),
            data.cycles(j, spread / 2, n, seed + 1000),
            strict=True,
        )
    ]
    return data.write_study(directory, results)


def row(comparison: Any, metric: str, pair: int = 0) -> Any:
    return next(m for m in comparison.pairs[pair].metrics if m.metric == metric)


# --- verdicts ---------------------------------------------------------------------------------


def test_faster_and_more_efficient_b_is_better_on_both_and_its_ratio_brackets_the_truth(
    tmp_path: Path,
):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=5, seed=1)
    b = side(tmp_path / "b", tok_s=900, j=0.50, n=5, seed=2)
    c = compare(a, b)
    tps, jpt = row(c, "tokens_per_s"), row(c, "j_per_token")
    assert tps.verdict == "better" and tps.better == "higher"
    assert jpt.verdict == "better" and jpt.better == "lower"  # lower J/token is better
    assert tps.ci_low < 900 / 750 < tps.ci_high
    assert jpt.ci_low < 0.50 / 0.55 < jpt.ci_high
    assert tps.ci_low > 1 and jpt.ci_high < 1


def test_the_same_distribution_on_both_sides_gives_no_difference_and_what_could_be_seen(
    tmp_path: Path,
):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=4, seed=3)
    b = side(tmp_path / "b", tok_s=750, j=0.55, n=4, seed=4)
    tps = row(compare(a, b), "tokens_per_s")
    assert tps.verdict == "no_difference" and tps.ci_low <= 1 <= tps.ci_high
    # a 2 % spread over 4 cycles a side: only differences of a few per cent are detectable
    assert tps.min_detectable_pct is not None and 2 < tps.min_detectable_pct < 10


def test_slower_b_is_worse(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=5)
    b = side(tmp_path / "b", tok_s=600, j=0.65, n=3, seed=6)
    c = compare(a, b)
    assert row(c, "tokens_per_s").verdict == "worse"
    assert row(c, "j_per_token").verdict == "worse"


def test_two_cycles_are_insufficient_data_with_the_ratio_and_the_reason(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=2, seed=7)
    b = side(tmp_path / "b", tok_s=900, j=0.50, n=3, seed=8)
    tps = row(compare(a, b), "tokens_per_s")
    assert tps.verdict == "insufficient_data"
    assert tps.ci_low is None and tps.min_detectable_pct is None
    assert tps.ratio is not None and tps.ratio > 1.1
    assert tps.note == "A: 2 cycles: no interval below 3"


def test_metrics_neither_side_measured_are_left_out(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=9)
    b = side(tmp_path / "b", tok_s=750, j=0.55, n=3, seed=10)
    metrics = [m.metric for m in compare(a, b).pairs[0].metrics]
    assert "j_per_request" not in metrics  # online only
    assert {"j_per_token", "j_per_token_adjusted", "tokens_per_s", "ttft_p50", "ttft_p99"} <= set(
        metrics
    )
    assert {"itl_p50", "itl_p99", "peak_memory"} <= set(metrics)


# --- the text, environment first --------------------------------------------------------------


def test_the_environment_diff_comes_first_and_flags_what_differs(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=11, driver="570.1")
    b = side(
        tmp_path / "b",
        tok_s=750,
        j=0.55,
        n=3,
        seed=12,
        driver="580.2",
        warnings=["thermal_throttling"],
    )
    result = invoke(a, b)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("environment") < out.index("config 1")
    flagged = {line.split()[1] for line in out.splitlines() if line.startswith("  ! ")}
    assert flagged == {"driver", "measurement"}
    assert re.search(r"^    GPU\s+A: NVIDIA H200 x1\s+B: NVIDIA H200 x1$", out, re.MULTILINE)
    assert "thermal_throttling (3/3)" in out
    # the engine's versions are labelled: torch and transformers, not a bare number
    engine_line = next(line for line in out.splitlines() if line.split()[:1] == ["engine"])
    assert "pytorch (" in engine_line and "transformers " in engine_line, engine_line


# --- matching ---------------------------------------------------------------------------------


def test_by_precision_matches_configs_equal_apart_from_it(tmp_path: Path):
    a = data.write_study(
        tmp_path / "a",
        [data.result(precision="bf16", batch_size=b) for b in (8, 8, 8, 64, 64, 64)],
    )
    b = data.write_study(
        tmp_path / "b",
        [data.result(precision="fp16", batch_size=b) for b in (8, 8, 8, 64, 64, 64)],
    )
    nothing = invoke(a, b)
    assert nothing.exit_code == 2 and "--by" in nothing.output
    c = compare(a, b, by=["precision"])
    assert c.matched_by == "config without precision"
    assert [p.label for p in c.pairs] == ["batch_size=8", "batch_size=64"]
    assert all(p.differs == {"precision": ["bf16", "fp16"]} for p in c.pairs)
    assert [(p.runs_a, p.runs_b) for p in c.pairs] == [(3, 3), (3, 3)]


def test_by_refuses_to_pool_configs_of_one_side_that_differ_only_in_that_field(tmp_path: Path):
    a = data.write_study(tmp_path / "a", [data.result(precision=p) for p in ("bf16", "fp16")] * 2)
    b = data.write_study(tmp_path / "b", [data.result(precision="fp32")] * 3)
    result = invoke(a, b, "--by", "precision")
    assert result.exit_code == 2
    assert "would pool them" in result.output and "precision=bf16" in result.output


@pytest.mark.parametrize("field", ["presicion", "pytorch.bach_size"])
def test_by_a_field_that_is_not_in_the_config_is_a_usage_error(tmp_path: Path, field: str):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=13)
    result = invoke(a, a, "--by", field)
    assert result.exit_code == 2 and "not a config field" in result.output


def test_one_config_on_each_side_is_compared_even_when_they_differ(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=14, batch_size=8)
    b = side(tmp_path / "b", tok_s=1500, j=0.35, n=3, seed=15, batch_size=64)
    c = compare(a, b)
    assert len(c.pairs) == 1 and c.pairs[0].differs == {"pytorch.batch_size": [8, 64]}
    assert "differ in: pytorch.batch_size" in c.notes[0]


def test_sides_may_be_comma_separated_lists_of_result_files_and_folders_of_runs(tmp_path: Path):
    results = [data.result(tok_s=t) for t in data.cycles(750, 0.02, 3, 16)]
    folder = data.write_experiments(tmp_path / "a", results)  # experiment dirs, no study
    files = ",".join(str(folder / f"run{i:02d}" / "result.json") for i in (1, 2, 3))
    b = side(tmp_path / "b", tok_s=900, j=0.55, n=3, seed=17)
    from_files = compare(files.split(","), b)
    from_folder = compare(folder, b)
    assert from_files.pairs[0].runs_a == from_folder.pairs[0].runs_a == 3
    assert invoke(files, b).exit_code == 0


@pytest.mark.parametrize("what", ["missing", "not-a-result"])
def test_an_unusable_side_is_a_usage_error_naming_it(tmp_path: Path, what: str):
    b = side(tmp_path / "b", tok_s=750, j=0.55, n=3, seed=18)
    bad = tmp_path / "bad.json"
    if what == "not-a-result":
        bad.write_text('{"hello": 1}')
    result = invoke(bad, b)
    assert result.exit_code == 2 and "bad.json" in result.output


# --- the gate -----------------------------------------------------------------------------------


@pytest.fixture
def regression(tmp_path: Path) -> tuple[Path, Path]:
    """B is ~20 % slower than A (5 cycles, 2 % spread) at about the same J/token."""
    a = side(tmp_path / "a", tok_s=1000, j=0.55, n=5, seed=19)
    b = side(tmp_path / "b", tok_s=800, j=0.55, n=5, seed=20)
    return a, b


def test_the_gate_fails_with_exit_1_when_b_is_worse_by_more_than_pct(regression):
    a, b = regression
    result = invoke(a, b, "--fail-if-worse", "tokens_per_s=5")
    assert result.exit_code == 1
    assert re.search(r"FAIL\s+tokens_per_s worse by > 5 %", result.stdout)


def test_the_gate_passes_when_the_worsening_may_be_within_pct(regression):
    a, b = regression
    result = invoke(a, b, "--fail-if-worse", "tokens_per_s=30", "--fail-if-worse", "j_per_token=5")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("PASS") == 2


def test_the_gate_needs_an_interval_and_exits_2_without_one(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=1000, j=0.55, n=2, seed=21)
    b = side(tmp_path / "b", tok_s=500, j=0.55, n=3, seed=22)
    result = invoke(a, b, "--fail-if-worse", "tokens_per_s=5")
    assert result.exit_code == 2
    assert "UNEVALUABLE" in result.stdout and "gate cannot decide" in result.stderr


@pytest.mark.parametrize("spec", ["tokens_per_s", "speed=5", "tokens_per_s=-1", "j_per_token=100"])
def test_a_malformed_gate_is_a_usage_error(regression, spec: str):
    a, b = regression
    result = invoke(a, b, "--fail-if-worse", spec)
    assert result.exit_code == 2 and "--fail-if-worse" in result.output


def test_json_carries_every_verdict_the_gate_and_the_exit_code(regression):
    a, b = regression
    result = invoke(a, b, "--json", "--fail-if-worse", "tokens_per_s=5")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["exit_code"] == 1 and out["gate"][0]["status"] == "fail"
    assert out["environment"][0]["name"] == "GPU"
    tps = next(m for m in out["pairs"][0]["metrics"] if m["metric"] == "tokens_per_s")
    assert tps["verdict"] == "worse" and tps["ci_high"] < 0.95


def test_json_and_markdown_together_is_a_usage_error(regression):
    a, b = regression
    result = invoke(a, b, "--json", "--markdown")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["exit_code"] == 2


# --- markdown and html ----------------------------------------------------------------------------


def test_markdown_is_well_formed_tables_for_a_pull_request_comment(regression):
    a, b = regression
    result = invoke(a, b, "--markdown", "--fail-if-worse", "tokens_per_s=5")
    assert result.exit_code == 1
    md = result.stdout
    assert md.startswith("### llem compare")
    for block in md.split("\n\n"):
        lines = [x for x in block.splitlines() if x.startswith("|")]
        if lines:
            counts = {line.replace("\\|", "").count("|") for line in lines}
            assert len(counts) == 1, block
    assert "| output tokens / s |" in md and "**worse**" in md and "**fail**" in md


def test_html_is_one_offline_page_with_the_environment_and_the_verdicts(regression, tmp_path: Path):
    a, b = regression
    page = tmp_path / "out" / "compare.html"
    result = invoke(a, b, "--html", page)
    assert result.exit_code == 0 and f"html  {page}" in result.stdout
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower() and "http" not in text.replace("http-equiv", "")
    assert text.index("Environment") < text.index("output tokens / s")
    assert '<span class="bad">worse</span>' in text


# --- planning -----------------------------------------------------------------------------------


def test_plan_says_how_many_cycles_detect_the_chosen_difference(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=4, seed=23, spread=0.04)
    result = invoke(a, "--plan", "--detect", "3", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    tps = next(r for r in plan["rows"] if r["metric"] == "tokens_per_s")
    values = data.cycles(750, 0.04, 4, 23)
    sd = log_spread(values)
    assert tps["spread_pct"] == pytest.approx(sd * 100)  # type: ignore[operator]
    assert tps["cycles_needed"] == cycles_needed(sd, sd, 3.0)  # type: ignore[arg-type]
    text = invoke(a, "--plan", "--detect", "3").stdout
    assert "cycles per side to detect a 3 % difference" in text


def test_plan_and_gate_do_not_mix_and_b_is_needed_without_plan(tmp_path: Path):
    a = side(tmp_path / "a", tok_s=750, j=0.55, n=3, seed=24)
    assert invoke(a, "--plan", "--fail-if-worse", "tokens_per_s=5").exit_code == 2
    alone = invoke(a)
    assert alone.exit_code == 2 and "two sides" in alone.output


def test_the_study_dry_run_plans_cycles_from_an_earlier_study(tmp_path: Path):
    earlier = side(tmp_path / "earlier", tok_s=750, j=0.55, n=4, seed=25, spread=0.05)
    base = data.result().config.model_dump(mode="json", exclude_none=True)
    study = {"name": "next", **base, "sweep": {"pytorch.batch_size": [8, 16]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = cli.invoke(
        app, ["run", str(path), "--dry-run", "--plan-from", str(earlier), "--detect", "5"]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    values = data.cycles(750, 0.05, 4, 25)
    needed = cycles_needed(log_spread(values), log_spread(values), 5.0)  # type: ignore[arg-type]
    assert re.search(
        rf"#1 batch_size=8\s+output tokens / s: spread [\d.]+ %, cycles {needed} \(this study "
        r"has 3: too few\)",
        out,
    ), out
    # batch 16 has no earlier runs: it is planned from the largest spread seen, and says so
    assert "#2 batch_size=16" in out and "the largest spread seen in the others" in out
    as_json = cli.invoke(
        app, ["run", str(path), "--dry-run", "--plan-from", str(earlier), "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)["plan"]["rows"]
    assert {(r["config"], r["metric"]) for r in rows} == {
        (f"#{i} batch_size={b}", m)
        for i, b in ((1, 8), (2, 16))
        for m in ("j_per_token", "tokens_per_s")
    }


def test_plan_from_applies_to_dry_runs_only(tmp_path: Path):
    earlier = side(tmp_path / "earlier", tok_s=750, j=0.55, n=3, seed=26)
    result = cli.invoke(app, ["run", "--model", "builtin:tiny", "--plan-from", str(earlier)])
    assert result.exit_code == 2 and "--dry-run" in result.output


# --- without scipy ------------------------------------------------------------------------------


def test_without_scipy_compare_names_the_install_from_the_checkout(
    regression, monkeypatch: pytest.MonkeyPatch
):
    import sys

    a, b = regression
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)
    result = invoke(a, b)
    assert result.exit_code == 2
    assert 'pip install -e ".[report]"' in result.output
    assert "pip install llenergymeasure" not in result.output
    assert 'pip install "llenergymeasure' not in result.output


# --- real builtin:tiny studies: batch 1 against batch 8 ---------------------------------------


TINY: dict[str, Any] = {
    "model": "builtin:tiny",
    "backend": "pytorch",
    "precision": "fp32",
    "dataset": {"n": 32, "input_len": 8, "output_len": 8},
    "n": 32,
    "decoder": {"ignore_eos": True},
    "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
    "baseline": {"enabled": False},
}


@pytest.fixture(scope="module")
def tiny_studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real studies on this CPU, 3 cycles each: batch 1 (A) and batch 8 (B), 32 prompts.

    One intra-op thread per run: on a small CPU shared with other jobs, torch's default OpenMP
    threads spin against them and the same tiny run then varies 60-8,000 tok/s (measured on
    the 2-core CI-like machine); with one thread it varies a few per cent.
    """
    dirs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned study workers
        for batch in (1, 8):
            dirs.append(_tiny_study(batch, tmp_path_factory))
    return dirs[0], dirs[1]


def _tiny_study(batch: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    execution = {"n_cycles": 3, "config_gap_seconds": 0, "cycle_gap_seconds": 0}
    study = StudyConfig.from_dict(
        {
            "name": f"tiny-b{batch}",
            **TINY,
            "pytorch": {"batch_size": batch},
            "execution": {**execution, "reuse_engine": True},
        }
    )
    runner = StudyRunner.create(study, tmp_path_factory.mktemp(f"b{batch}"), quiet=True)
    assert runner.run().ok
    return runner.study_dir


def test_real_tiny_runs_batch_8_has_the_better_throughput_with_confidence(tiny_studies):
    a, b = tiny_studies
    c = compare(a, b, by=["pytorch.batch_size"])
    (pair,) = c.pairs
    assert (pair.runs_a, pair.runs_b) == (3, 3)
    assert pair.differs == {"pytorch.batch_size": [1, 8]}
    tps = row(c, "tokens_per_s")
    means = [
        math.exp(sum(math.log(r) for r in rs) / 3)
        for rs in (
            [x.tokens_per_second for x in _results(a)],
            [x.tokens_per_second for x in _results(b)],
        )
    ]
    assert tps.ratio == pytest.approx(means[1] / means[0])
    assert tps.verdict == "better" and tps.ci_low > 1
    # no energy sensor on this machine: the energy metrics are not compared
    assert not [m for m in pair.metrics if m.metric.startswith("j_per")]


def test_real_tiny_runs_through_the_gate_exit_0_1_and_2(tiny_studies):
    a, b = tiny_studies
    by = ("--by", "pytorch.batch_size")
    assert invoke(a, b, *by, "--fail-if-worse", "tokens_per_s=5").exit_code == 0
    reverse = invoke(b, a, *by, "--fail-if-worse", "tokens_per_s=5")
    assert reverse.exit_code == 1 and "FAIL" in reverse.stdout
    no_energy = invoke(a, b, *by, "--fail-if-worse", "j_per_token=5")
    assert no_energy.exit_code == 2 and "no matched config measured this metric" in no_energy.stdout


def _results(study_dir: Path) -> list[ExperimentResult]:
    return [ExperimentResult.from_json(p) for p in sorted(study_dir.glob("*/result.json"))]


def test_online_runs_are_compared_on_energy_per_request_too(tmp_path: Path):
    from llenergymeasure.compare.core import compare_sides
    from llenergymeasure.compare.inputs import Run, Side
    from llenergymeasure.results.online import OnlineMetrics, OnlineResult

    def online(j_per_request: float) -> ExperimentResult:
        metrics = OnlineMetrics.model_construct(
            energy_per_request_j=j_per_request, adjusted_energy_per_request_j=j_per_request / 2
        )
        return data.result().model_copy(
            update={"online": OnlineResult.model_construct(metrics=metrics)}
        )

    def make(name: str, values: list[float]) -> Side:
        runs = [Run(result=online(v), path=tmp_path / name) for v in values]
        return Side(name=name, paths=[tmp_path / name], runs=runs)

    c = compare_sides(make("A", [40.0, 41.0, 39.5]), make("B", [30.0, 31.0, 29.0]))
    jpr = row(c, "j_per_request")
    assert jpr.verdict == "better" and jpr.ratio == pytest.approx(
        (30 * 31 * 29 / (40 * 41 * 39.5)) ** (1 / 3)
    )
    assert row(c, "j_per_request_adjusted").mean_a == pytest.approx(120.5 / 6)


def test_html_never_writes_over_a_compared_result(regression):
    a, b = regression
    target = next(a.glob("*/result.json"))
    before = target.read_bytes()
    result = invoke(a, b, "--html", target)
    assert result.exit_code == 2 and "one of the results being compared" in result.output
    assert target.read_bytes() == before
