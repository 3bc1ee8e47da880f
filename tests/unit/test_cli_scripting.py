"""The CLI for newcomers and scripts: -h, --json, --verbose, missing engines, exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.catalogue import EngineSpec, register_engine
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

runner = CliRunner()
TINY_RUN = ["run", "--model", "builtin:tiny", "--dataset", "synthetic", "-n", "3"]


@pytest.fixture
def fake_measure(monkeypatch):
    """``llem run`` measures with a fake engine (no model, no torch work)."""

    def measure(config, **_):
        orchestrator = ExperimentOrchestrator(
            engine=FakeEngine(), energy_backend=FakeEnergyBackend()
        )
        quick = config.warmup.model_copy(update={"thermal_floor_seconds": 0.0, "n_warmup": 1})
        return orchestrator.run(config.model_copy(update={"warmup": quick}))

    monkeypatch.setattr("llenergymeasure.harness.measure.measure", measure)


@pytest.fixture
def absent_engine() -> Iterator[str]:
    spec = EngineSpec(
        name="absent",
        engine_class="llem_absent_engine:Engine",
        import_module="llem_absent_engine",
        distribution="llem-absent-engine",
        extra="absent",
        precisions=("fp16",),
        decoding_strategies=("greedy",),
        config_section=None,
    )
    with register_engine(spec):
        yield "absent"


@pytest.mark.parametrize("args", [["-h"], ["run", "-h"], ["config", "-h"], ["report", "-h"]])
def test_dash_h_is_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_run_json_prints_one_json_object_with_the_summary(tmp_path: Path, fake_measure):
    result = runner.invoke(app, [*TINY_RUN, "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_requests"] == 3
    assert summary["tokens_per_second"] > 0
    assert Path(summary["result_path"]).is_file()
    assert "phase timings" not in result.stderr


def test_verbose_prints_phase_timings_on_stderr(tmp_path: Path, fake_measure):
    result = runner.invoke(app, [*TINY_RUN, "-o", str(tmp_path), "--verbose"])
    assert result.exit_code == 0, result.output
    assert "phase timings" in result.stderr
    assert "measurement window" in result.stderr
    assert "llem result" in result.stdout


def test_dry_run_json_is_the_resolved_config():
    result = runner.invoke(app, [*TINY_RUN, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    preview = json.loads(result.stdout)
    assert preview["valid"] is True
    assert preview["experiments"][0]["model"] == "builtin:tiny"


def test_errors_with_json_are_one_json_object_on_stdout_too():
    result = runner.invoke(app, ["run", "-m", "x", "-b", "nope", "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2
    assert "unknown backend 'nope'" in error["error"]


def test_config_json_prints_one_json_object():
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "pytorch" in report["engines"]
    assert report["settings"]["execution.max_cycles"]["value"] == 1000


def test_report_json_names_the_files_it_wrote(tmp_path: Path, fake_measure):
    run = runner.invoke(app, [*TINY_RUN, "-o", str(tmp_path), "--json"])
    result_dir = Path(json.loads(run.stdout)["result_path"]).parent
    result = runner.invoke(app, ["report", str(result_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Path(report["html"]).is_file()


def test_run_with_an_engine_that_is_not_installed_exits_2(tmp_path: Path, absent_engine):
    result = runner.invoke(
        app, [*TINY_RUN, "-b", absent_engine, "--precision", "fp16", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "engine 'absent' is not installed" in result.stderr
    assert list((tmp_path / "o").iterdir()) == []  # no empty run directory left


def test_dry_run_says_the_engine_is_not_installed(absent_engine):
    result = runner.invoke(
        app, [*TINY_RUN, "-b", absent_engine, "--precision", "fp16", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "engine 'absent' is not installed here" in result.stdout
