"""Energy-vs-load curve of online runs: points in rate order, the table, the figure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer
from online_runs import five_request_run

from llenergymeasure.online.run_result import OnlineRunResult
from llenergymeasure.report.online_curve import (
    online_curve_markdown,
    online_curve_points,
    plot_online_curve,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[OnlineRunResult]:
    out = tmp_path_factory.mktemp("curve")
    runs = []
    with FakeOpenAIServer(token_delay_s=0.001) as server:
        for rate in ("inf", 50, 200):
            runs.append(five_request_run(server.url, rate, out))
    return runs


def test_points_are_ordered_by_rate_with_inf_last(results):
    points = online_curve_points(results)
    assert [p.rate_label for p in points] == ["50", "200", "inf"]
    assert math.isinf(points[-1].target_rate)
    assert all(p.j_per_request == pytest.approx(20.0) for p in points)  # 100 J / 5 requests
    assert all(p.j_per_request_adjusted == pytest.approx(10.0) for p in points)  # - 50 W x 1 s
    assert all(p.j_per_token == pytest.approx(5.0) for p in points)
    assert all(p.mean_power_w == pytest.approx(100.0) for p in points)


def test_the_table_has_a_row_per_run(results):
    table = online_curve_markdown(online_curve_points(results))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| rate (req/s) |") and len(lines) == 2 + 3
    assert lines[2].startswith("| 50 | - |") and lines[4].startswith("| inf | - |")
    assert "| 20.00 | 10.00 | 5.0000 | 2.5000 |" in lines[2]


def test_the_figure_is_written(results, tmp_path: Path):
    pytest.importorskip("matplotlib")
    path = plot_online_curve(online_curve_points(results), tmp_path / "curve.png")
    assert path.exists() and path.stat().st_size > 1000


def test_no_points_no_figure(tmp_path: Path):
    with pytest.raises(ValueError, match="no online runs"):
        plot_online_curve([], tmp_path / "x.png")


def test_latency_over_part_of_the_requests_is_marked_as_such(results):
    """A server whose chunks carry no text for most tokens must not pass for a complete TTFT."""
    partial = results[0].model_copy(deep=True)
    ttft = partial.metrics.ttft
    assert ttft is not None and partial.metrics.n_ok == 5
    partial.metrics.ttft = ttft.model_copy(update={"count": 2})
    (point,) = online_curve_points([partial])
    assert point.latency_partial and point.latency_n == 2
    table = online_curve_markdown([point])
    row = table.splitlines()[2]
    assert row.count("(2 of 5)") == 3  # TTFT, ITL and goodput
    assert "cover only the k of n completed requests" in table
    complete = online_curve_markdown(online_curve_points(results))
    assert "of 5)" not in complete and "cover only" not in complete
