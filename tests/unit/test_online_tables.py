"""``benchmarks/online_tables.py``: the BENCHMARKS.md section of a live server (issue 20).

The online results are real ``OnlineRunResult`` files, as ``benchmarks/online_vllm_rates.py``
writes them: ``run_online`` against the fake OpenAI server with a fake energy backend (100 J over
5 requests of 4 tokens: 5 J per output token at every rate), in ``rate-<r>`` folders made in an
order that is not the rate order. The offline reference is a hand-made study whose run holds only
the fields the script reads, with 2.5 J per output token, so the inf point is 2x the offline run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import benchmark_scripts
import pytest
from benchmark_scripts import (
    BENCHMARKS,
    assert_tables_well_formed,
    load_benchmark_script,
    redirect_sections,
    refuse_writes,
)
from fake_openai_server import FakeOpenAIServer
from online_runs import five_request_run

ot = load_benchmark_script("online_tables")

RATES = ("16", "inf", "4")  # the order the folders are made in


@pytest.fixture(scope="module")
def online_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rate-16``, ``rate-inf``, ``rate-4``: 5 requests each, 100 J on an "NVIDIA H200"."""
    out = tmp_path_factory.mktemp("online")
    with FakeOpenAIServer(token_delay_s=0.001) as server:
        for rate in RATES:
            rate_value = rate if rate == "inf" else float(rate)
            result = five_request_run(server.url, rate_value, out / f"rate-{rate}")
            data = json.loads(result.model_dump_json())
            data["energy"]["devices"][0]["device_name"] = "NVIDIA H200"
            (out / f"rate-{rate}").mkdir(parents=True, exist_ok=True)
            (out / f"rate-{rate}" / "result.json").write_text(json.dumps(data))
    return out


def offline_result(j: float = 2.5) -> dict[str, Any]:
    """An offline run's result.json with only what the script reads."""
    return {
        "config": {"model": "m", "backend": "vllm", "mode": "offline"},
        "energy_per_output_token_j": j,
        "energy_per_output_token_adjusted_j": j * 0.8,
        "tokens_per_second": 4000.0,
        "mean_power_w": 600.0,
        "duration_s": 12.5,
        "environment": {"gpus": [{"name": "NVIDIA H200"}], "driver_version": "580.159.04"},
    }


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    """The offline reference study: one completed run, one failed."""
    runs = [(1, json.dumps(offline_result())), (2, None)]
    return benchmark_scripts.write_study(tmp_path / "vllm_offline_ref", runs)


def table_rows(table: str) -> dict[str, list[str]]:
    """The body rows of a Markdown table, by their first cell."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {cells[0]: cells for cells in rows}


# -- the rate curve ------------------------------------------------------------------------


def test_the_rates_are_read_in_numeric_order_with_inf_last(online_dir: Path) -> None:
    runs = ot.load_online(online_dir)
    assert [r.online.request_rate for r in runs] == [4.0, 16.0, "inf"]


def test_the_curve_is_report_online_curves_table_one_row_per_rate(online_dir: Path) -> None:
    body = ot.build_body(online_dir, None)
    curve = body[body.index("| rate (req/s)") :].split("\n\n")[0]
    assert list(table_rows(curve)) == ["4", "16", "inf"]
    assert all("| 20.00 |" in line and "| 5.0000 |" in line for line in curve.splitlines()[2:])


def test_an_online_result_without_an_environment_names_the_gpu_from_its_energy(
    online_dir: Path,
) -> None:
    line = ot.machine_line(ot.load_online(online_dir), [])
    assert line == "Machine: online: NVIDIA H200, driver not recorded."


# -- the inf point against the offline run -------------------------------------------------


def test_the_inf_point_is_set_against_the_offline_run_with_the_ratio(
    online_dir: Path, offline_dir: Path
) -> None:
    online = ot.online_figures(ot.load_online(online_dir))
    offline = ot.offline_figures(ot.load_runs(offline_dir))
    rows = table_rows(ot.inf_vs_offline(online, offline))
    assert rows["J/output-token raw"][1:] == ["5.0000", "2.5000", "2.000"]  # 5 J vs 2.5 J
    assert rows["mean W"][2] == "600"
    assert rows["window s"][1:3] == [f"{online.window_s:.1f}", "12.5"]
    assert list(rows) == [label for label, _, _ in ot.FIGURES]


def test_the_offline_figures_are_the_mean_over_its_cycles(tmp_path: Path) -> None:
    runs = [(1, json.dumps(offline_result(2.0))), (2, json.dumps(offline_result(3.0)))]
    study = benchmark_scripts.write_study(tmp_path / "two_cycles", runs)
    assert ot.offline_figures(ot.load_runs(study)).j_per_token == pytest.approx(2.5)


def test_a_missing_side_is_said_in_one_line_instead_of_the_table(
    online_dir: Path, offline_dir: Path
) -> None:
    online = ot.online_figures(ot.load_online(online_dir))
    offline = ot.offline_figures(ot.load_runs(offline_dir))
    assert ot.inf_vs_offline(online, None) == (
        "No inf-vs-offline comparison: no completed offline reference run."
    )
    no_inf = ot.online_figures([r for r in ot.load_online(online_dir) if r.rate != float("inf")])
    assert ot.inf_vs_offline(no_inf, offline) == (
        "No inf-vs-offline comparison: no online run at request_rate inf."
    )


def test_an_offline_study_not_run_yet_is_a_missing_side(online_dir: Path, tmp_path: Path) -> None:
    body = ot.build_body(online_dir, tmp_path / "not_run")
    assert "No inf-vs-offline comparison: no completed offline reference run." in body


# -- the section ---------------------------------------------------------------------------


def test_the_section_printed_and_written(
    online_dir: Path,
    offline_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    md = redirect_sections(ot, monkeypatch, tmp_path / "BENCHMARKS.md")
    extra = tmp_path / "extra.md"
    extra.write_text("Commands: made by hand.\n")
    ot.main(["--online", str(online_dir), "--offline", str(offline_dir), "--extra", str(extra)])
    out = capsys.readouterr().out
    assert "Machine: online: NVIDIA H200, driver not recorded; offline reference: " in out
    assert "offline reference: NVIDIA H200, driver 580.159.04." in out
    assert "1 completed run(s)" in out and out.rstrip().endswith("Commands: made by hand.")
    assert_tables_well_formed(out, ["| rate (req/s)", "| figure |"])
    text = md.read_text()
    assert "## Other\n\nkept" in text and "## Energy of a live server (issue 20)" in text


def test_no_write_only_prints(
    online_dir: Path,
    offline_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refuse_writes(ot, monkeypatch)
    benchmarks_md = BENCHMARKS.parent / "BENCHMARKS.md"
    before = benchmarks_md.read_bytes()
    ot.main(["--online", str(online_dir), "--offline", str(offline_dir), "--no-write"])
    assert "| J/output-token raw | 5.0000 | 2.5000 | 2.000 |" in capsys.readouterr().out
    assert benchmarks_md.read_bytes() == before


def test_counter_vs_poll_is_listed_per_rate_where_the_sweep_polled(online_dir: Path) -> None:
    runs = ot.load_online(online_dir)
    assert ot.counter_vs_poll_line(runs).startswith("Counter vs poll: not measured")
    polled = [
        ot.OnlineRun(r.path, r.online, r.machine, gap)
        for r, gap in zip(runs, (0.5, -1.25, None), strict=True)
    ]
    line = ot.counter_vs_poll_line(polled)
    assert "4 req/s: +0.50 % (" in line and "16 req/s: -1.25 % (" in line
    assert "inf:" not in line and "1 rate(s) not polled" in line


def test_latency_coverage_says_whether_every_completed_request_was_timed(
    online_dir: Path, tmp_path: Path
) -> None:
    runs = ot.load_online(online_dir)
    line = ot.latency_coverage_line(runs)
    assert "every completed request at every rate" in line
    assert "4 req/s: 5 of 5, 16 req/s: 5 of 5, inf: 5 of 5" in line
    partial = json.loads((online_dir / "rate-16" / "result.json").read_text())
    partial["metrics"]["ttft"]["count"] = 3  # two requests streamed no token chunk
    (tmp_path / "rate-16").mkdir()
    (tmp_path / "rate-16" / "result.json").write_text(json.dumps(partial))
    line = ot.latency_coverage_line(ot.load_online(tmp_path))
    assert "**not every completed request**" in line and "16 req/s: 3 of 5" in line
