"""``llem run study.yaml`` and ``llem run --resume``: real processes, signals, bad input.

Killing and interrupting use a small driver script that runs the real CLI with a scripted
fake worker (``llenergymeasure.testing.study``) as the default worker, in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import llenergymeasure as llem
from llenergymeasure.cli.app import app
from llenergymeasure.study.design import expand_study_file
from llenergymeasure.study.manifest import StudyManifest, load_manifest
from llenergymeasure.study.runner import StudyRunner

STUDY_YAML = """\
name: {name}
model: builtin:tiny
backend: pytorch
dataset: {{n: 2, input_len: 8, output_len: 4}}
n: 2
warmup: {{n_warmup: 0, thermal_floor_seconds: 0}}
baseline: {{enabled: false}}
sweep:
  pytorch.batch_size: {batch_sizes}
execution: {{n_cycles: {cycles}, config_gap_seconds: 0, cycle_gap_seconds: 0}}
"""

DRIVER = """\
import sys

import llenergymeasure.study.runner as runner
from llenergymeasure.testing.study import ScriptedWorker

runner.DEFAULT_WORKER = ScriptedWorker({worker_args})

if __name__ == "__main__":
    from llenergymeasure.cli.app import main

    sys.argv = ["llem", *sys.argv[1:]]
    main()
"""

cli = CliRunner()


def study_file(
    write_yaml: Callable[..., Path],
    *,
    name: str = "cli-study",
    batch_sizes: str = "[1]",
    cycles: int = 1,
) -> Path:
    text = STUDY_YAML.format(name=name, batch_sizes=batch_sizes, cycles=cycles)
    return write_yaml(text, "study.yaml")


def start_driver(tmp_path: Path, worker_args: str, *args: str) -> subprocess.Popen[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(worker_args=worker_args))
    return subprocess.Popen(
        [sys.executable, str(driver), *args],
        cwd=tmp_path,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def read_manifest(root: Path) -> StudyManifest | None:
    paths = list(root.glob("*/study_manifest.json"))
    if not paths:
        return None
    try:
        return StudyManifest.model_validate_json(paths[0].read_text())
    except ValueError:
        return None


def first_completed_second_running(root: Path) -> bool:
    m = read_manifest(root)
    return (
        m is not None
        and m.runs[0].status == "completed"
        and m.runs[1].status == "running"
        and m.runs[1].pid is not None
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the real worker, end to end ----------------------------------------------------------


def test_llem_run_study_yaml_runs_builtin_tiny_end_to_end(write_yaml, tmp_path):
    path = study_file(write_yaml, name="tiny-e2e", cycles=2)
    out = tmp_path / "results"

    result = cli.invoke(app, ["run", str(path), "--no-gaps", "-o", str(out)])

    assert result.exit_code == 0, result.output
    (study_dir,) = out.iterdir()
    assert study_dir.name.startswith("tiny-e2e_")
    summary = llem.StudyResult.from_json(study_dir / "study_summary.json")
    assert (summary.counts.completed, summary.counts.failed) == (2, 0)
    assert summary.protocol.energy_backends == ["none"], "no NVML here: energy not measured"
    for rel in summary.result_files:
        experiment = llem.ExperimentResult.from_json(study_dir / rel)
        assert experiment.output_tokens == 2 * 4 and experiment.energy_total_j is None
    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert [(r["cycle"], r["config.model"]) for r in rows] == [(1, "builtin:tiny")] * 1 + [
        (2, "builtin:tiny")
    ]
    assert "2/2 completed, 0 failed" in result.stdout
    assert "n/a" in result.stdout  # J/token without an energy sensor
    assert "run 1/2" in result.stderr and "loading builtin:tiny" in result.stderr


def test_run_study_api_with_output_dir_none_returns_results_and_writes_nothing(
    write_yaml, tmp_path, monkeypatch
):
    path = study_file(write_yaml, name="api-study")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    result = llem.run_study(path, output_dir=None, quiet=True)

    assert isinstance(result, llem.StudyResult)
    assert result.ok and result.study_dir is None and result.result_files == []
    (experiment,) = result.results
    assert experiment.config.model == "builtin:tiny" and experiment.n_requests == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- kill, interrupt, resume -------------------------------------------------------------------


@pytest.mark.parametrize("reuse", ["--no-reuse-engine", "--reuse-engine"])
def test_a_study_killed_mid_way_is_completed_by_resume_without_rerunning_finished_runs(
    write_yaml, tmp_path, reuse
):
    path = study_file(write_yaml, name="killed", batch_sizes="[1, 2, 3]")
    worker = "hang_first_attempt_at=frozenset({2}), hang_s=60"
    proc = start_driver(tmp_path, worker, "run", str(path), "-o", "out", "--quiet", reuse)
    try:
        wait_for(lambda: first_completed_second_running(tmp_path / "out"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    killed = read_manifest(tmp_path / "out")
    assert killed is not None
    study_dir = next((tmp_path / "out").iterdir())
    assert [r.status for r in killed.runs] == ["completed", "running", "pending"]
    wait_for(lambda: not pid_alive(killed.runs[1].pid or 0))  # child follows parent

    resumed = start_driver(tmp_path, worker, "run", "--resume", str(study_dir), "--quiet")
    out, err = resumed.communicate(timeout=60)

    if resumed.returncode != 0:
        pytest.fail(f"exit {resumed.returncode}\n{out}\n{err}", pytrace=False)
    final = load_manifest(study_dir)
    assert [r.status for r in final.runs] == ["completed"] * 3
    assert final.runs[0].finished_at == killed.runs[0].finished_at
    assert final.runs[0].attempts == 1
    # the killed run measures again, unless it had saved its result just before the kill
    # (a race the kill can win under load): that finished measurement is kept, not redone
    kept = final.runs[1].started_at == killed.runs[1].started_at
    assert [r.attempts for r in final.runs[1:]] == [1 if kept else 2, 1]
    assert [r.run_id for r in final.runs] == [r.run_id for r in killed.runs]
    assert len(pq.read_table(study_dir / "results.parquet")) == 3
    assert "3/3 completed" in out


@pytest.mark.parametrize("reuse", ["--no-reuse-engine", "--reuse-engine"])
def test_sigint_exits_130_and_leaves_a_consistent_manifest(write_yaml, tmp_path, reuse):
    path = study_file(write_yaml, name="interrupted", batch_sizes="[1, 2, 3]")
    proc = start_driver(
        tmp_path, "hang_at=frozenset({2}), hang_s=60", "run", str(path), "-o", "out", reuse
    )
    try:
        wait_for(lambda: first_completed_second_running(tmp_path / "out"))
        child = read_manifest(tmp_path / "out").runs[1].pid  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()

    assert proc.returncode == 130, err
    assert "interrupted" in err
    manifest = read_manifest(tmp_path / "out")
    assert manifest is not None
    assert [r.status for r in manifest.runs] == ["completed", "interrupted", "pending"]
    error = manifest.runs[1].error
    assert error is not None and error.type == "KeyboardInterrupt"
    assert manifest.sessions[-1].outcome == "interrupted"
    assert child is not None and not pid_alive(child)
    assert not (next((tmp_path / "out").iterdir()) / "study_summary.json").exists()


# --- bad input to --resume ---------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return cli.invoke(app, ["run", *args])


def created_study(path: Path, root: Path) -> Path:
    """A study directory as `llem run` creates it, before any run (nothing executed)."""
    study = expand_study_file(path)
    return StudyRunner.create(study, root, quiet=True).study_dir


def test_resume_of_a_missing_directory_exits_2(tmp_path):
    result = invoke("--resume", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "study directory not found" in result.stderr


def test_resume_of_a_directory_that_is_not_a_study_exits_2(tmp_path):
    result = invoke("--resume", str(tmp_path))
    assert result.exit_code == 2
    assert "is not a study directory (no study_manifest.json" in result.stderr


def test_resume_of_a_directory_with_an_invalid_manifest_exits_2(tmp_path):
    (tmp_path / "study_manifest.json").write_text('{"study_name": "x"')
    result = invoke("--resume", str(tmp_path))
    assert result.exit_code == 2
    assert "is not a valid study manifest" in result.stderr


def test_resume_after_the_study_file_changed_exits_2(write_yaml, tmp_path):
    path = study_file(write_yaml, batch_sizes="[1, 2]")
    study_dir = created_study(path, tmp_path / "out")
    study_file(write_yaml, batch_sizes="[1, 4]")  # edited in place

    result = invoke("--resume", str(study_dir))

    assert result.exit_code == 2
    assert "study design mismatch" in result.stderr
    assert load_manifest(study_dir).runs[0].status == "pending", "nothing ran"


def test_resume_with_a_different_study_file_exits_2(write_yaml, tmp_path):
    study_dir = created_study(study_file(write_yaml, batch_sizes="[1, 2]"), tmp_path / "out")
    other = write_yaml(
        STUDY_YAML.format(name="cli-study", batch_sizes="[8]", cycles=1), "other.yaml"
    )

    result = invoke("--resume", str(study_dir), str(other))

    assert result.exit_code == 2
    assert "study design mismatch" in result.stderr
    assert "other.yaml" in result.stderr


def test_resume_rejects_flags_that_would_change_the_study(write_yaml, tmp_path):
    study_dir = created_study(study_file(write_yaml), tmp_path / "out")
    result = invoke("--resume", str(study_dir), "--cycles", "5")
    assert result.exit_code == 2
    assert "--cycles cannot be used with --resume" in result.stderr


@pytest.mark.parametrize("manifest_text", [json.dumps({"runs": []}), "[]"])
def test_resume_names_the_manifest_when_it_does_not_validate(tmp_path, manifest_text):
    (tmp_path / "study_manifest.json").write_text(manifest_text)
    result = invoke("--resume", str(tmp_path))
    assert result.exit_code == 2
    assert str(tmp_path / "study_manifest.json") in result.stderr
