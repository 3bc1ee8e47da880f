"""``llem report``'s figures and page: the metrics along the swept field, the latency
distribution per config, power over time with its phases, no energy panels where nothing was
measured, single-run wording, labelled versions, and a page rendered from autoescaped templates.

The CPU study is real: ``builtin:tiny`` measured on this machine (no energy sensor), batch size
1 and 2 x 3 cycles. The GPU-like studies are synthetic (``report_data``) with known values.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import compare_data as data
import pytest
from report_data import (
    axis_texts,
    drawn_figures,
    grid,
    labelled_lines,
    legend_texts,
    varied,
    with_pytorch,
    without_energy,
    write_timeseries,
)
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.report.loader import StudySource, load_source
from llenergymeasure.report.render import render_report
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.configs import tiny_experiment

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

cli = CliRunner()


def page_text(path: Path) -> str:
    """The HTML without its inlined images (so searches do not hit base64 by chance)."""
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", path.read_text(encoding="utf-8"))


def images(outcome_images: list[Path]) -> set[str]:
    return {p.name for p in outcome_images}


# --- a real CPU study: no energy sensor ------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory: pytest.TempPathFactory) -> list[ExperimentResult]:
    """builtin:tiny measured here, batch size 1 and 2, three cycles each (in process)."""
    from llenergymeasure import run_experiment

    home = tmp_path_factory.mktemp("cpu-home")
    results = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLEM_CACHE_DIR", str(home / "llem-cache"))
        env.setenv("XDG_CONFIG_HOME", str(home / "config"))
        env.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
        for batch_size in (1, 2):
            config = ExperimentConfig.model_validate(
                tiny_experiment(
                    n=4,
                    dataset={"n": 4, "input_len": 8, "output_len": 4},
                    pytorch={"batch_size": batch_size},
                )
            )
            results += [run_experiment(config) for _ in range(3)]
    if any(r.energy_total_j is not None for r in results):
        pytest.skip("this machine measured energy: the CPU tests need one without a sensor")
    return results


@pytest.fixture(scope="module")
def cpu_study(cpu_results: list[ExperimentResult], tmp_path_factory: pytest.TempPathFactory):
    return data.write_study(tmp_path_factory.mktemp("cpu") / "study", cpu_results, "cpu")


def test_a_cpu_study_has_no_energy_panel_and_says_energy_was_not_measured_once(
    cpu_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with drawn_figures(monkeypatch) as drawn:
        outcome = render_report(cpu_study, tmp_path / "r.html")
    assert images(outcome.images) == {"r_sweep.png", "r_configs.png", "r_latency.png"}
    for name in ("r_sweep.png", "r_configs.png"):
        texts = " ".join(axis_texts(drawn[name])).lower()
        assert "energy" not in texts and "j/" not in texts, (name, texts)
        assert "throughput" in texts
    assert len(drawn["r_sweep.png"].axes) == 2  # throughput and latency, no energy panel
    assert len(drawn["r_configs.png"].axes) == 1
    text = page_text(outcome.html_path)
    assert text.count("Energy not measured (no sensor)") == 1
    assert "J/out-token" not in text and "mean power W" not in text  # runs table
    assert "<td>J / output token</td>" not in text  # statistics table
    assert "Not measured in any run (left out): J / output token" in text
    assert "Power over time" not in text and "Energy vs throughput" not in text


def test_a_cpu_experiment_page_leaves_out_its_energy_rows(cpu_study: Path, tmp_path: Path):
    outcome = render_report(cpu_study / "run01", tmp_path / "one.html")
    assert images(outcome.images) == {"one_latency.png"}
    text = page_text(outcome.html_path)
    assert text.count("Energy not measured (no sensor)") == 1
    for row in ("energy (raw)", "J / output token (raw)", "mean power", "counter vs poll"):
        assert f"<td>{row}</td>" not in text, row
    assert "<td>throughput</td>" in text and "<td>energy method</td>" in text
    assert "single run" in text.lower()


def test_the_engine_versions_are_torch_and_transformers_each_labelled(
    cpu_study: Path, tmp_path: Path
):
    torch_version = importlib.metadata.version("torch")
    transformers_version = importlib.metadata.version("transformers")
    expected = f"pytorch (torch {torch_version}, transformers {transformers_version})"
    outcome = render_report(cpu_study / "run01", tmp_path / "one.html")
    assert f"<td>engine</td><td>{expected}</td>" in page_text(outcome.html_path)
    study = render_report(cpu_study, tmp_path / "study.html")
    assert f"engine {expected}" in page_text(study.html_path)


def test_the_latency_figure_has_one_cdf_per_config_from_the_request_records(
    cpu_study: Path, cpu_results: list[ExperimentResult], tmp_path: Path, monkeypatch
):
    with drawn_figures(monkeypatch) as drawn:
        render_report(cpu_study, tmp_path / "r.html")
    fig = drawn["r_latency.png"]
    latency, ttft, itl = fig.axes
    assert [line.get_label() for line in labelled_lines(latency)] == [
        "#1 batch_size=1",
        "#2 batch_size=2",
    ]
    first = sorted(q.latency_s * 1000 for r in cpu_results[:3] for q in r.requests)
    xs = list(labelled_lines(latency)[0].get_xdata())
    assert xs[1:] == pytest.approx(first)  # the step starts at the smallest value, at 0
    assert list(labelled_lines(latency)[0].get_ydata())[-1] == pytest.approx(1.0)
    assert len(labelled_lines(ttft)) == 2
    assert "stored quantiles" in itl.get_title("left")  # ITL: only its summary is stored
    assert [t.get_text() for t in itl.get_yticklabels()] == ["min", "p50", "p90", "p99", "max"]


def test_text_and_json_statistics_of_a_cpu_study(cpu_study: Path, tmp_path: Path):
    result = cli.invoke(app, ["report", str(cpu_study), "-o", str(tmp_path / "r.html"), "--json"])
    assert result.exit_code == 0, result.output
    configs = json.loads(result.stdout)["statistics"]["configs"]
    assert [c["runs_completed"] for c in configs] == [3, 3]
    tps = configs[0]["metrics"]["tokens_per_second"]
    assert tps["ci_method"] == "log_t" and 0 < tps["ci_low"] < tps["ci_high"]
    assert configs[0]["metrics"]["energy_per_output_token_j"]["ci_note"] == "not measured"


# --- the metrics along the swept field ------------------------------------------------------


def test_the_sweep_figure_has_one_line_per_level_of_the_other_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    results = grid([1, 2, 4], ["bf16", "fp16"], cycles=3)
    study = data.write_study(tmp_path / "study", results)
    with drawn_figures(monkeypatch) as drawn:
        outcome = render_report(study, tmp_path / "r.html")
    fig = drawn["r_sweep.png"]
    assert len(fig.axes) == 3  # J/token, tokens/s, latency
    for ax in fig.axes:
        assert ax.get_xlabel() == "batch_size"
        lines = labelled_lines(ax)
        assert [line.get_label() for line in lines] == ["precision=bf16", "precision=fp16"]
        for line in lines:
            assert list(line.get_xdata()) == [1, 2, 4]
    assert "one line per precision" in axis_texts(fig)[0]
    # 3 cycles: each point has a whisker drawn from its interval's bounds
    source = load_source(study)
    assert isinstance(source, StudySource)
    whiskers = {
        tuple(round(v, 9) for v in (seg[0][1], seg[-1][1]))
        for coll in fig.axes[1].collections
        for seg in getattr(coll, "get_segments", lambda: [])()
        if len(seg) == 2 and seg[0][0] == seg[-1][0]
    }
    for config in source.statistics.configs:
        tps = config.metrics["tokens_per_second"]
        assert (round(tps.ci_low, 9), round(tps.ci_high, 9)) in whiskers
    assert "Along the swept field: batch_size" in page_text(outcome.html_path)


def test_a_field_set_per_point_is_not_a_line_and_is_shown_under_the_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    n_for = {1: 8, 8: 64, 32: 128}
    study = data.write_study(tmp_path / "s", grid([1, 8, 32], ["bf16"], 3, n_for_batch=n_for))
    with drawn_figures(monkeypatch) as drawn:
        render_report(study, tmp_path / "r.html")
    ax = drawn["r_sweep.png"].axes[0]
    assert ax.get_xlabel() == "batch_size" and ax.get_xscale() == "log"
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [f"{b}\ndataset.n={n}\nn={n}" for b, n in n_for.items()]  # config order
    (line,) = labelled_lines(ax)
    assert line.get_linewidth() > 0  # a sweep: its points are joined


def test_points_that_differ_in_an_on_off_setting_are_not_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # the template ran compiled; batch 16 ran eager: a different set-up, not a sweep point
    eager = [with_pytorch(r, torch_compile=False) for r in grid([16], ["bf16"], 3)]
    results = grid([8, 64], ["bf16"], 3) + eager
    study = data.write_study(tmp_path / "s", results)
    with drawn_figures(monkeypatch) as drawn:
        render_report(study, tmp_path / "r.html", x_field="pytorch.batch_size")
    fig = drawn["r_sweep.png"]
    (line,) = labelled_lines(fig.axes[0])
    assert line.get_linewidth() == 0
    assert "points not joined" in axis_texts(fig)[0]


def test_x_names_the_swept_field_and_an_unknown_one_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    study = data.write_study(tmp_path / "s", grid([1, 2], ["bf16", "fp16"], 1))
    with drawn_figures(monkeypatch) as drawn:
        result = cli.invoke(
            app, ["report", str(study), "-o", str(tmp_path / "r.html"), "--x", "precision"]
        )
    assert result.exit_code == 0, result.output
    ax = drawn["r_sweep.png"].axes[0]
    assert ax.get_xlabel() == "precision"
    assert [line.get_label() for line in labelled_lines(ax)] == ["batch_size=1", "batch_size=2"]
    bad = cli.invoke(app, ["report", str(study), "--x", "pytorch.bach_size"])
    assert bad.exit_code == 2
    assert "does not vary" in bad.output and "did you mean pytorch.batch_size?" in bad.output
    assert "fields that vary: precision, pytorch.batch_size" in bad.output


def test_an_unlimited_request_rate_sits_after_the_largest_rate():
    from llenergymeasure.report.sweep import SweepLayout
    from llenergymeasure.report.sweep_plot import x_positions

    layout = SweepLayout("online.request_rate", [1.0, 4.0, 16.0, "inf"], True, [], [])
    xs, log = x_positions(layout)
    assert log and xs == {"1": 1.0, "4": 4.0, "16": 16.0, "inf": 32.0}
    linear = SweepLayout("online.request_rate", [2.0, 4.0, 6.0, "inf"], True, [], [])
    assert x_positions(linear) == ({"2": 2.0, "4": 4.0, "6": 6.0, "inf": 8.0}, False)
    one = SweepLayout("online.request_rate", [20.0, "inf"], True, [], [])
    assert x_positions(one) == ({"20": 20.0, "inf": 40.0}, False)


# --- single runs ----------------------------------------------------------------------------


def test_a_study_of_single_runs_says_so_and_shows_values_not_spreads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    study = data.write_study(tmp_path / "s", grid([1, 2, 4], ["bf16"], 1))
    with drawn_figures(monkeypatch) as drawn:
        outcome = render_report(study, tmp_path / "r.html")
    text = page_text(outcome.html_path)
    assert "Per-config values (one run each)" in text
    assert "<th>value</th>" in text and "CV %" not in text and "geo mean" not in text
    assert text.count("One run per config") == 2  # the page's note and the table's
    for name in ("r_sweep.png", "r_configs.png", "r_efficiency.png"):
        title = " ".join(axis_texts(drawn[name]))
        assert "single run" in title or "one run per config" in title, name
        assert "mean across cycles" not in title, name
    assert outcome.statistics_text.startswith("single run:")


# --- power over time ------------------------------------------------------------------------


def test_a_study_gets_one_power_panel_per_run_with_its_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    results = grid([1, 2], ["bf16"], 2)
    study = data.write_study(tmp_path / "s", results)
    for run_dir in sorted(study.glob("run*")):
        write_timeseries(run_dir)
    with drawn_figures(monkeypatch) as drawn:
        outcome = render_report(study, tmp_path / "r.html")
    assert "r_power.png" in images(outcome.images)
    fig = drawn["r_power.png"]
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert len(panels) == 4  # 2 configs x 2 cycles
    assert [ax.get_title("left") for ax in panels][:2] == [
        "#1 batch_size=1 · cycle 1",
        "#1 batch_size=1 · cycle 2",
    ]
    legend = legend_texts(fig)
    for phase in ("idle baseline", "warmup", "measurement window", "prefill-only window"):
        assert phase in legend, legend
    assert "cooldown" in legend
    assert "Power over time" in page_text(outcome.html_path)


def test_an_experiment_timeseries_names_the_prefill_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run_dir = data.write_experiments(tmp_path / "e", [data.result()]) / "run01"
    write_timeseries(run_dir)
    with drawn_figures(monkeypatch) as drawn:
        render_report(run_dir, tmp_path / "one.html")
    texts = [t.get_text() for t in drawn["one_timeseries.png"].axes[0].texts]
    assert "prefill-only window" in legend_texts(drawn["one_timeseries.png"])
    assert "measurement window" in texts


def test_a_study_with_energy_but_no_timeseries_says_so(tmp_path: Path):
    study = data.write_study(tmp_path / "s", grid([1, 2], ["bf16"], 1))
    outcome = render_report(study, tmp_path / "r.html")
    assert "No run has a timeseries sidecar" in page_text(outcome.html_path)


# --- the page: templates, escaping, versions ------------------------------------------------


SCRIPT = "<script>alert('x')</script>"


def test_a_model_name_with_a_script_tag_is_escaped_everywhere(tmp_path: Path):
    results = [varied(data.result(tok_s=v), model=SCRIPT) for v in (700.0, 710.0)]
    results += [varied(data.result(tok_s=v), model="org/other") for v in (500.0, 520.0)]
    study = data.write_study(tmp_path / "s", results, name=SCRIPT)
    for target in (study, study / "run01"):
        outcome = render_report(target, tmp_path / f"{target.name}.html")
        raw = outcome.html_path.read_text(encoding="utf-8")
        assert "<script" not in raw.lower()
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in raw


def test_a_run_error_and_warnings_are_escaped_in_their_cells(tmp_path: Path):
    r = data.result(warnings=["<b>hot</b>"])
    study = data.write_study(tmp_path / "s", [r])
    raw = render_report(study, tmp_path / "r.html").html_path.read_text()
    assert '<span class="warn">&lt;b&gt;hot&lt;/b&gt;</span>' in raw


def test_engine_versions_come_from_the_environment_snapshot():
    from llenergymeasure.report.versions import engine_text

    env = data.result().environment
    assert (env.engine, env.engine_version, env.library_versions["torch"]) == (
        "pytorch",
        "5.17.0",
        "2.11.0",
    )
    assert engine_text(env) == "pytorch (torch 2.11.0, transformers 5.17.0)"
    unknown = env.model_copy(update={"engine": "dummy", "engine_version": "1.0"})
    assert engine_text(unknown) == "dummy (torch 2.11.0, dummy 1.0)"
    bare = env.model_copy(update={"engine_version": None, "library_versions": {}})
    assert engine_text(bare) == "pytorch (version not recorded)"


def test_the_templates_ship_with_the_package_and_autoescape():
    from importlib.resources import files

    from llenergymeasure.report.html import environment, render

    folder = files("llenergymeasure.report") / "templates"
    names = {p.name for p in folder.iterdir()}
    assert {"base.html.j2", "macros.html.j2", "report.html.j2", "report.css"} <= names
    assert environment().autoescape is True
    page = render(
        "report.html.j2",
        {"title": "<t>", "heading": "<h>", "meta": [], "notes": ["<n>"], "sections": [],
         "footer": []},
    )  # fmt: skip
    assert "<title>&lt;t&gt;</title>" in page and "&lt;n&gt;" in page and "<n>" not in page


def test_the_energy_not_measured_note_comes_from_the_results_not_the_machine(tmp_path: Path):
    results = [without_energy(data.result(tok_s=v, batch_size=b)) for b in (1, 2) for v in (1, 2)]
    study = data.write_study(tmp_path / "s", results)
    text = page_text(render_report(study, tmp_path / "r.html").html_path)
    assert text.count("Energy not measured (no sensor)") == 1
    assert "Where the energy goes" not in text
