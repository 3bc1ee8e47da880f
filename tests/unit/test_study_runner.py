"""The study runner: run order, gaps, per-run subprocesses, failures, manifest, resume.

Runs go through the real ``spawn`` path with picklable fake workers (``testing.study``), which
drive the real orchestrator with a fake engine, so each run costs a fraction of a second.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.study import ExecutionConfig, StudyConfig
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import StudyResult
from llenergymeasure.study.manifest import StudyManifest, load_manifest, write_manifest
from llenergymeasure.study.runner import (
    StudyRunner,
    gap_before,
    plan_runs,
    resolve_gaps,
    resume_study_dir,
    run_order,
    run_study_config,
)
from llenergymeasure.study.summary import format_study_summary, study_exit_code
from llenergymeasure.testing.configs import tiny_experiment
from llenergymeasure.testing.study import ScriptedWorker

BASE: dict[str, Any] = tiny_experiment()


def make_study(sweep: dict[str, Any] | None = None, **execution: Any) -> StudyConfig:
    execution = {"config_gap_seconds": 0, "cycle_gap_seconds": 0, **execution}
    data = {"name": "unit-study", **BASE, "execution": execution}
    if sweep:
        data["sweep"] = sweep
    return StudyConfig.from_dict(data)


GRID_2X2 = {"precision": ["fp32", "bf16"], "pytorch.batch_size": [1, 2]}
TWO_CONFIGS = {"pytorch.batch_size": [1, 2]}


def run(study: StudyConfig, root: Path, worker: Any = None, **kwargs: Any) -> StudyRunner:
    kwargs.setdefault("quiet", True)
    runner = StudyRunner.create(study, root, worker=worker or ScriptedWorker(), **kwargs)
    runner.run()
    return runner


# --- order and gaps (pure) -------------------------------------------------------------------


def test_sequential_order_runs_every_cycle_of_a_config_before_the_next_config():
    order = run_order(3, ExecutionConfig(n_cycles=2, cycle_order="sequential"))
    assert order == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]


def test_interleaved_order_runs_the_whole_grid_once_per_cycle():
    order = run_order(3, ExecutionConfig(n_cycles=2, cycle_order="interleaved"))
    assert order == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]


def test_shuffled_order_is_a_seeded_permutation_of_the_grid_in_each_cycle():
    execution = ExecutionConfig(n_cycles=3, cycle_order="shuffled", shuffle_seed=7)
    order = run_order(6, execution)
    assert order == run_order(6, execution)  # deterministic
    for cycle in (1, 2, 3):
        assert sorted(i for i, c in order if c == cycle) == list(range(6))
    assert [c for _, c in order] == [1] * 6 + [2] * 6 + [3] * 6
    cycles = [[i for i, c in order if c == k] for k in (1, 2, 3)]
    assert len({tuple(p) for p in cycles}) > 1, "each cycle draws its own order"
    other = run_order(6, execution.model_copy(update={"shuffle_seed": 8}))
    assert other != order


def test_a_new_cycle_waits_the_cycle_gap_except_in_sequential_order():
    study = make_study(TWO_CONFIGS, n_cycles=2, cycle_order="interleaved")
    a1, b1, a2, _ = plan_runs(study)
    gaps = (10.0, 60.0)
    assert gap_before(a1, b1, "interleaved", gaps) == ("config gap", 10.0)
    assert gap_before(b1, a2, "interleaved", gaps) == ("cycle gap", 60.0)
    assert gap_before(b1, a2, "shuffled", gaps) == ("cycle gap", 60.0)
    assert gap_before(a1, a2, "sequential", gaps) == ("config gap", 10.0)


def test_unset_gaps_come_from_the_user_config(isolated_user_env):
    config = isolated_user_env / "config" / "llenergymeasure" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("execution: {config_gap_seconds: 7, cycle_gap_seconds: 11}\n")
    assert resolve_gaps(ExecutionConfig()) == (7.0, 11.0)
    assert resolve_gaps(ExecutionConfig(config_gap_seconds=0)) == (0.0, 11.0)


def test_built_in_gap_defaults_are_60_and_300_seconds():
    assert resolve_gaps(ExecutionConfig()) == (60.0, 300.0)


# --- running through spawned subprocesses ----------------------------------------------------


def test_a_2x2_grid_in_2_interleaved_cycles_runs_8_runs_in_order_with_gaps(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llenergymeasure")
    # reuse_engine: false keeps the pure cycle order (engine groups would regroup by precision)
    study = make_study(
        GRID_2X2,
        n_cycles=2,
        cycle_order="interleaved",
        config_gap_seconds=0.5,
        cycle_gap_seconds=0.25,
        reuse_engine=False,
    )
    sleeps: list[float] = []
    stderr = io.StringIO()
    runner = run(
        study,
        tmp_path,
        worker=ScriptedWorker(with_sensor=True),
        sleep=sleeps.append,
        quiet=False,
        stream=stderr,
    )

    manifest = load_manifest(runner.study_dir)
    hashes = [measurement_config_hash(c) for c in study.experiments]
    assert len(set(hashes)) == 4
    assert [r.config_hash for r in manifest.runs] == hashes + hashes
    assert [r.cycle for r in manifest.runs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [r.position for r in manifest.runs] == list(range(1, 9))
    assert all(r.status == "completed" and r.attempts == 1 for r in manifest.runs)
    started = [r.started_at for r in manifest.runs]
    assert started == sorted(started), "runs executed in manifest order"

    # one sub-directory per run with its result and timeseries
    for entry in manifest.runs:
        run_dir = runner.study_dir / entry.run_id
        assert entry.run_id.endswith(f"_tiny_pytorch_c{entry.cycle}")
        assert entry.result_path == f"{entry.run_id}/result.json"
        result = ExperimentResult.from_json(run_dir / "result.json")
        assert result.measurement_config_hash == entry.config_hash
        assert (run_dir / "timeseries.parquet").is_file()

    # config gap between runs, cycle gap between cycles; the countdown and the phase lines of
    # the runs (forwarded from the children) are log records of the study
    assert sleeps == [0.5, 0.5, 0.5, 0.25, 0.5, 0.5, 0.5]
    assert stderr.getvalue() == ""  # no bar on a stream that is not a terminal
    messages = [r.getMessage() for r in caplog.records]
    assert "config gap: 1 s" in messages
    assert "cycle gap: 1 s" in messages
    forwarded = [r for r in caplog.records if getattr(r, "llem_run", None)]
    assert {r.llem_run for r in forwarded} == {e.run_id for e in manifest.runs}
    assert "pre-flight checks" in {r.getMessage() for r in forwarded}

    summary = StudyResult.from_json(runner.study_dir / "study_summary.json")
    assert (summary.counts.runs_planned, summary.counts.completed, summary.counts.failed) == (
        8,
        8,
        0,
    )
    assert summary.result_files == [f"{r.run_id}/result.json" for r in manifest.runs]
    table = pq.read_table(runner.study_dir / "results.parquet").to_pylist()
    assert [row["run_id"] for row in table] == [r.run_id for r in manifest.runs]
    assert [row["cycle"] for row in table] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [row["measurement_config_hash"] for row in table] == hashes + hashes
    # where the joules go: the same flat columns on every row, filled where measured
    from llenergymeasure.phase_split.columns import PHASE_COLUMNS

    assert all(set(PHASE_COLUMNS) <= set(row) for row in table)


def test_failed_crashed_and_killed_runs_are_recorded_and_the_study_continues(tmp_path):
    study = make_study(TWO_CONFIGS, n_cycles=2, cycle_order="interleaved")
    worker = ScriptedWorker(fail_at=frozenset({1}), exit_at=frozenset({2}), kill_at=frozenset({3}))
    runner = StudyRunner.create(study, tmp_path, worker=worker, quiet=True)
    result = runner.run()

    runs = load_manifest(runner.study_dir).runs
    assert [r.status for r in runs] == ["failed", "failed", "failed", "completed"]
    raised, exited, killed, _ = (r.error for r in runs)
    assert raised is not None and raised.type == "ValueError"
    assert raised.message == "scripted failure in run 1"
    assert raised.traceback and "ValueError: scripted failure in run 1" in raised.traceback
    assert exited is not None and exited.type == "WorkerCrashed"
    assert "exited with code 3" in exited.message
    assert killed is not None and killed.type == "WorkerCrashed"
    assert "SIGKILL" in killed.message and "out-of-memory" in killed.message

    assert (result.counts.ran, result.counts.completed, result.counts.failed) == (4, 1, 3)
    assert not result.ok and study_exit_code(result) == 1
    assert [(f.config_hash, f.cycle, f.error_type) for f in result.failed] == [
        (runs[0].config_hash, 1, "ValueError"),
        (runs[1].config_hash, 1, "WorkerCrashed"),
        (runs[2].config_hash, 2, "WorkerCrashed"),
    ]
    assert len(result.results) == 1
    text = format_study_summary(result, runner.manifest)
    assert "1/4 completed, 3 failed" in text
    assert f"{runs[0].run_id}  [failed] ValueError: scripted failure in run 1" in text


def test_a_run_past_its_timeout_is_terminated_and_recorded_as_a_timeout(tmp_path):
    # the timeout counts from the child's "ready", so 3 s is ample for a fake run, even on a
    # loaded machine; the hang (60 s) cut short is what makes the first run a TimeoutError
    # (waited out, it would have completed)
    study = make_study(TWO_CONFIGS, experiment_timeout_seconds=3.0)
    runner = run(study, tmp_path, worker=ScriptedWorker(hang_at=frozenset({1}), hang_s=60))

    first, second = load_manifest(runner.study_dir).runs
    assert first.status == "failed" and first.error is not None
    assert first.error.type == "TimeoutError"
    assert "experiment_timeout_seconds=3" in first.error.message
    assert second.status == "completed"


def test_the_run_timeout_does_not_count_the_child_process_start_up(tmp_path):
    # start-up (spawn, imports) slower than the timeout; the run itself well within it
    study = make_study(experiment_timeout_seconds=2.0, reuse_engine=False)
    runner = run(study, tmp_path, worker=ScriptedWorker(start_delay_s=3.0))
    assert [r.status for r in load_manifest(runner.study_dir).runs] == ["completed"]


def test_the_manifest_is_valid_after_every_write_and_leaves_no_temp_files(tmp_path):
    snapshots: list[list[str]] = []

    def checking_writer(manifest: StudyManifest, path: Path) -> None:
        write_manifest(manifest, path)
        on_disk = StudyManifest.model_validate_json(path.read_text())  # parses and validates
        snapshots.append([r.status for r in on_disk.runs])
        assert not list(path.parent.glob("*.tmp")), "temp files left behind"

    study = make_study(n_cycles=2)
    run(study, tmp_path, manifest_writer=checking_writer)

    assert snapshots[0] == ["pending", "pending"]
    assert snapshots[-1] == ["completed", "completed"]
    assert ["running", "pending"] in snapshots
    assert ["completed", "running"] in snapshots
    first_run_states = [s[0] for s in snapshots]
    assert first_run_states.index("running") < first_run_states.index("completed")
    manifest_file = next(tmp_path.glob("*/study_manifest.json"))
    assert json.loads(manifest_file.read_text())["study_name"] == "unit-study"


def test_the_study_lock_file_is_removed_when_the_study_ends(tmp_path):
    runner = run(make_study(), tmp_path)
    assert runner.manifest.counts()["completed"] == 1
    assert not (runner.study_dir / ".study.lock").exists()


def test_only_the_first_run_of_a_study_measures_the_idle_baseline(tmp_path):
    study = StudyConfig.from_dict(
        {
            "name": "baseline-cache",
            **BASE,
            "baseline": {"enabled": True, "duration_seconds": 0.05},
            "execution": {"n_cycles": 3, "config_gap_seconds": 0, "cycle_gap_seconds": 0},
        }
    )
    runner = StudyRunner.create(
        study, tmp_path, worker=ScriptedWorker(with_sensor=True), quiet=True
    )
    result = runner.run()

    baselines = [r.energy.baseline for r in result.results]
    assert all(b is not None for b in baselines)
    assert [b.from_cache for b in baselines if b is not None] == [False, True, True]
    assert (result.protocol.baseline_runs_measured, result.protocol.baseline_runs_from_cache) == (
        1,
        2,
    )
    assert (runner.study_dir / ".baseline_cache.json").is_file()


def test_output_dir_none_keeps_results_in_memory_and_nothing_on_disk(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)

    result = run_study_config(
        make_study(TWO_CONFIGS), output_dir=None, worker=ScriptedWorker(), quiet=True
    )

    assert result.counts.completed == 2
    assert [r.measurement_config_hash for r in result.results] == [
        measurement_config_hash(c) for c in make_study(TWO_CONFIGS).experiments
    ]
    assert result.study_dir is None and result.result_files == []
    assert list(scratch.iterdir()) == [], "the private temporary directory is removed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]


def test_resume_reruns_only_the_runs_that_did_not_complete(tmp_path):
    study = make_study(TWO_CONFIGS, n_cycles=2, cycle_order="interleaved")
    runner = run(study, tmp_path, worker=ScriptedWorker(fail_at=frozenset({2})))
    before = {r.run_id: r for r in load_manifest(runner.study_dir).runs}
    assert [r.status for r in before.values()].count("failed") == 1

    result = resume_study_dir(runner.study_dir, worker=ScriptedWorker(), quiet=True)

    after = {r.run_id: r for r in load_manifest(runner.study_dir).runs}
    for run_id, entry in after.items():
        assert entry.status == "completed"
        if before[run_id].status == "completed":
            assert entry.finished_at == before[run_id].finished_at
            assert entry.attempts == 1
        else:
            assert entry.attempts == 2 and entry.error is None
    assert result.ok and result.counts.completed == 4 and result.failed == []
    assert len(pq.read_table(runner.study_dir / "results.parquet")) == 4
    assert len(load_manifest(runner.study_dir).sessions) == 2


def test_a_study_with_local_vllm_and_tensorrt_is_refused_before_anything_runs(tmp_path) -> None:
    import pytest

    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.exceptions import PreFlightError
    from llenergymeasure.study.runner import run_study_config

    study = StudyConfig.from_dict(
        {
            "model": "m",
            "backend": ["vllm", "tensorrt"],
            "precision": "fp16",
            "sweep": {"n": [1]},
        }
    )
    with pytest.raises(PreFlightError, match="cannot share one process"):
        run_study_config(study, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
