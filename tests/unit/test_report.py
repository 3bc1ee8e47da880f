"""``llem report``: a self-contained HTML report with plots, from experiment and study directories.

The study under test is real: a 2-config x 2-cycle builtin:tiny study run by the study runner
through spawned subprocesses, with a fake GPU sensor injected through the worker so each run
has a power/temperature timeseries (``testing.study.ScriptedWorker(with_sensor=True)``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import compare_data as data
import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.report.loader import StudySource, load_source
from llenergymeasure.results.study import HEADLINE_METRICS, StudyResult
from llenergymeasure.study.runner import run_study_config
from llenergymeasure.testing.configs import tiny_experiment
from llenergymeasure.testing.study import ScriptedWorker

pytest.importorskip("matplotlib")
np = pytest.importorskip("numpy")

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTORCH_MODES = REPO_ROOT / "benchmarks" / "results" / "pytorch_modes"

cli = CliRunner()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-config (batch_size 1, 2) x 2-cycle tiny study, run once for this module."""
    study = StudyConfig.from_dict(
        {
            "name": "report-study",
            **tiny_experiment(),
            "sweep": {"pytorch.batch_size": [1, 2]},
            "execution": {
                "n_cycles": 2,
                "cycle_order": "interleaved",
                "config_gap_seconds": 0,
                "cycle_gap_seconds": 0,
            },
        }
    )
    result = run_study_config(
        study,
        output_dir=tmp_path_factory.mktemp("studies"),
        worker=ScriptedWorker(with_sensor=True),
        quiet=True,
    )
    assert result.ok and result.study_dir is not None
    return Path(result.study_dir)


@pytest.fixture
def study_copy(study_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the study directory that a test may change."""
    return Path(shutil.copytree(study_dir, tmp_path / "study"))


def assert_offline_html(text: str) -> None:
    """No script, stylesheet, font or link to anywhere: every image is a data URI."""
    assert text.startswith("<!DOCTYPE html>")
    lowered = text.lower()
    for forbidden in ("<script", "<link", "@import", "url(", "<iframe"):
        assert forbidden not in lowered, forbidden
    attrs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', text, flags=re.IGNORECASE)
    assert not [a for a in attrs if not a.startswith("data:image/png;base64,")]
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*https?://', text, flags=re.IGNORECASE)


def assert_real_image(path: Path) -> None:
    """A PNG of a few KB that is not a single colour."""
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5_000, path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    rgb = pixels[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02, f"{path.name} looks blank"
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20


# --- study statistics in study_summary.json -------------------------------------------------


def test_the_study_runner_writes_per_config_statistics_into_study_summary(study_dir: Path):
    summary = StudyResult.from_json(study_dir / "study_summary.json")
    assert summary.statistics is not None
    stats = summary.statistics
    assert stats.confidence_level == 0.95 and stats.metrics == list(HEADLINE_METRICS)
    assert [c.label for c in stats.configs] == ["batch_size=1", "batch_size=2"]
    for config in stats.configs:
        assert config.runs_completed == config.runs_planned == 2
        assert config.cycles == [1, 2]
        tps = config.metrics["tokens_per_second"]
        # two cycles: mean and spread, but no interval (and the reason why)
        assert tps.n == 2 and tps.std is not None and tps.geometric_mean is not None
        assert tps.ci_low is None and tps.ci_high is None and tps.ci_method is None
        assert tps.ci_note == "2 cycles: no interval below 3"
        # baseline disabled: no adjusted energy in any run, so nothing to summarise
        assert config.metrics["energy_per_output_token_adjusted_j"].n == 0
    raw = json.loads((study_dir / "study_summary.json").read_text())
    assert set(raw["statistics"]["configs"][0]["metrics"]) == set(HEADLINE_METRICS)


# --- the study report ----------------------------------------------------------------------


def test_a_study_report_is_one_offline_html_file_with_its_pngs_beside_it(
    study_dir: Path, tmp_path: Path
):
    out = tmp_path / "out" / "study.html"
    result = cli.invoke(app, ["report", str(study_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert_offline_html(text)
    pngs = sorted(p.name for p in out.parent.glob("study_*.png"))
    assert {"study_efficiency.png", "study_configs.png", "study_sweep.png"} <= set(pngs)
    assert "study_power.png" in pngs  # every run's power over time, one panel each
    assert "study_latency.png" in pngs
    for name in pngs:
        assert_real_image(out.parent / name)
    assert text.count('src="data:image/png;base64,') == len(pngs)
    # what a reader needs: configs by what varies, Pareto marking, CI method, runs, phases
    assert "batch_size=1" in text and "batch_size=2" in text
    assert "Pareto" in text and "n/a (2 cycles: no interval below 3)" in text
    assert "no interval below 3 cycles" in text  # the caption says why
    for run_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        assert run_dir.name in text
    assert "measurement window" in text
    # the statistics table also goes to stdout
    assert "per-config statistics" in result.stdout
    assert "config 2  batch_size=2" in result.stdout and "2/2 run(s) completed" in result.stdout


def test_by_default_the_report_is_written_into_the_directory(study_copy: Path):
    result = cli.invoke(app, ["report", str(study_copy)])
    assert result.exit_code == 0, result.output
    assert (study_copy / "report.html").is_file()
    assert (study_copy / "report_efficiency.png").is_file()
    assert str(study_copy / "report.html") in result.stdout


def test_a_partly_finished_study_is_reported_from_its_manifest(study_copy: Path, tmp_path: Path):
    manifest_file = study_copy / "study_manifest.json"
    manifest = json.loads(manifest_file.read_text())
    last = manifest["runs"][-1]
    shutil.rmtree(study_copy / last["run_id"])
    last.update(status="pending", result_path=None, finished_at=None)
    manifest["runs"][-2].update(
        status="failed", result_path=None, error={"type": "ValueError", "message": "boom"}
    )
    manifest["sessions"][-1]["outcome"] = "interrupted"
    manifest_file.write_text(json.dumps(manifest))
    (study_copy / "study_summary.json").unlink()

    source = load_source(study_copy)
    assert isinstance(source, StudySource) and not source.finished
    assert [r.status for r in source.runs] == ["completed", "completed", "failed", "pending"]
    assert [c.runs_completed for c in source.statistics.configs] == [1, 1]
    one = source.statistics.configs[0].metrics["tokens_per_second"]
    assert one.n == 1 and one.std is None and one.ci_low is None

    out = tmp_path / "partial.html"
    result = cli.invoke(app, ["report", str(study_copy), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "has not finished" in text and "ValueError: boom" in text and "pending" in text
    assert_offline_html(text)


def test_flattened_run_files_beside_the_manifest_are_found(study_copy: Path, tmp_path: Path):
    """The layout of benchmarks/results/pytorch_modes: <run_id>.json next to the manifest."""
    for run_dir in [p for p in study_copy.iterdir() if p.is_dir()]:
        (run_dir / "result.json").rename(study_copy / f"{run_dir.name}.json")
        shutil.rmtree(run_dir)
    source = load_source(study_copy)
    assert isinstance(source, StudySource)
    assert len(source.completed) == 4 and all(r.timeseries is None for r in source.runs)
    result = cli.invoke(app, ["report", str(study_copy), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "No run has a timeseries" in (tmp_path / "r.html").read_text()


@pytest.mark.skipif(not PYTORCH_MODES.is_dir(), reason="benchmark results not in this checkout")
def test_the_recorded_h100_modes_study_puts_compile_alone_on_the_pareto_front(tmp_path: Path):
    source = load_source(PYTORCH_MODES)
    assert isinstance(source, StudySource)
    labels = [c.label for c in source.statistics.configs]
    assert labels == ["torch_compile=False", "torch_compile=True", "load_in_4bit=True"]
    out = tmp_path / "modes.html"
    result = cli.invoke(app, ["report", str(PYTORCH_MODES), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "Pareto front (circled, dashed line): #2." in text
    assert_real_image(tmp_path / "modes_efficiency.png")


# --- a single experiment -------------------------------------------------------------------


def test_an_experiment_directory_gets_a_summary_and_a_timeseries_plot(
    study_dir: Path, tmp_path: Path
):
    run_dir = next(p for p in sorted(study_dir.iterdir()) if (p / "result.json").is_file())
    out = tmp_path / "one.html"
    result = cli.invoke(app, ["report", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert_offline_html(text)
    for row in (
        "energy (raw)",
        "J / output token (raw)",
        "J / output token (baseline-adjusted)",
        "throughput",
        "latency mean / p50 / p90 / p99",
        "TTFT mean",
        "ITL mean",
        "idle baseline",
        "energy method",
        "counter vs poll",
        "warnings",
        "GPU(s)",
        "driver / CUDA",
    ):
        assert f"<td>{row}" in text, row
    assert_real_image(tmp_path / "one_timeseries.png")
    assert result.stdout.startswith("single run:") and "at least 3 cycles" in result.stdout
    assert "CV %" not in result.stdout


def test_a_result_json_path_is_reported_as_its_directory(study_dir: Path, tmp_path: Path):
    run_dir = next(p for p in sorted(study_dir.iterdir()) if (p / "result.json").is_file())
    result = cli.invoke(
        app, ["report", str(run_dir / "result.json"), "-o", str(tmp_path / "x.html")]
    )
    assert result.exit_code == 0, result.output


# --- errors --------------------------------------------------------------------------------


def test_a_missing_directory_is_a_usage_error(tmp_path: Path):
    result = cli.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_directory_that_is_not_a_result_is_a_usage_error(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    result = cli.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not an experiment or study directory" in result.output
    assert "result.json" in result.output
    with pytest.raises(ConfigError):
        load_source(tmp_path / "notes.txt")


def test_a_broken_result_json_is_a_usage_error(tmp_path: Path):
    (tmp_path / "result.json").write_text("{not json")
    result = cli.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a valid llem result" in result.output


def test_without_matplotlib_the_statistics_and_tables_are_complete_and_figures_left_out(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "r.html"
    result = cli.invoke(app, ["report", str(study_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "per-config statistics across cycles" in result.stdout
    assert 'pip install -e ".[report]"' in result.stderr  # the note names the extra
    text = out.read_text(encoding="utf-8")
    assert "Figures are left out" in text and "<img" not in text
    assert "Per-config statistics across cycles" in text and "<h2>Runs</h2>" in text
    assert not list(tmp_path.glob("*.png"))
    as_json = cli.invoke(app, ["report", str(study_dir), "-o", str(out), "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["images"] == [] and payload["notes"]
    assert len(payload["statistics"]["configs"]) == 2


# --- intervals at 2, 3 and 10 cycles ---------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10])
def test_the_report_intervals_at_2_3_and_10_cycles(n: int, tmp_path: Path):
    # tokens/s with a large spread: at 3 cycles a raw-scale t interval of the mean reaches
    # below zero (as in the issue: [-2,671, 4,572]); the log-scale one cannot
    values = {2: [500.0, 1500.0], 3: [300.0, 900.0, 3600.0]}.get(n) or data.cycles(
        1000.0, 0.6, n, seed=n
    )
    study = data.write_study(tmp_path / "study", [data.result(tok_s=v) for v in values])
    out = tmp_path / "r.html"
    result = cli.invoke(app, ["report", str(study), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    (config,) = json.loads(result.stdout)["statistics"]["configs"]
    tps = config["metrics"]["tokens_per_second"]
    text = cli.invoke(app, ["report", str(study), "-o", str(out)]).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("output tokens / s"))
    if n == 2:
        assert tps["ci_low"] is None and tps["ci_note"] == "2 cycles: no interval below 3"
        assert line.endswith("n/a (2 cycles: no interval below 3)")
        return
    assert tps["ci_method"] == "log_t"
    assert 0 < tps["ci_low"] < tps["geometric_mean"] < tps["ci_high"]
    assert line.endswith("(log_t)") and "n/a" not in line
    if n == 3:
        from scipy import stats as sps

        raw_low = sps.t.interval(0.95, 2, loc=np.mean(values), scale=sps.sem(values))[0]
        assert raw_low < 0 < tps["ci_low"]
    assert "too uncertain to bound the mean" in text


def test_the_plots_draw_whiskers_from_the_interval_bounds_unclipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from llenergymeasure.report import plots

    # a wide spread: the arithmetic mean lies off-centre in the geometric mean's interval
    values = data.cycles(1000.0, 0.6, 3, seed=3)
    study = data.write_study(tmp_path / "study", [data.result(tok_s=v) for v in values])
    drawn: list[tuple[float, float]] = []
    real_save = plots.save_figure

    def keep(fig: Any, path: Path) -> Path:
        for ax in fig.axes:
            for coll in ax.collections:
                for seg in getattr(coll, "get_segments", lambda: [])():
                    (x0, y0), (x1, y1) = seg[0], seg[-1]
                    drawn.append(
                        (min(x0, x1), max(x0, x1)) if y0 == y1 else (min(y0, y1), max(y0, y1))
                    )
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    result = cli.invoke(app, ["report", str(study), "-o", str(tmp_path / "r.html"), "--json"])
    assert result.exit_code == 0, result.output
    tps = json.loads(result.stdout)["statistics"]["configs"][0]["metrics"]["tokens_per_second"]
    assert any(
        lo == pytest.approx(tps["ci_low"]) and hi == pytest.approx(tps["ci_high"])
        for lo, hi in drawn
    ), drawn
