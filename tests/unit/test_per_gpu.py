"""``execution.parallel: per_gpu``: concurrent runs, one per GPU, on CPU with fake devices.

Two fake GPUs (``DeviceSlot``s with UUIDs) are injected; runs go through the real spawn path
with ``ScriptedWorker`` (fake engine, real orchestrator), each slow enough for two to overlap.
The child's ``CUDA_VISIBLE_DEVICES`` is visible in its result's environment snapshot.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.study import ExecutionConfig, StudyConfig
from llenergymeasure.energy.devices import DeviceSlot
from llenergymeasure.exceptions import StudyError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import StudyManifest, load_manifest, write_manifest
from llenergymeasure.study.parallel import THERMAL_NOTE
from llenergymeasure.study.runner import StudyRunner
from llenergymeasure.testing.configs import tiny_experiment
from llenergymeasure.testing.study import ScriptedWorker

GPUS = [
    DeviceSlot(device="cuda:0", label=f"cuda:{k}", uuid=uuid, nvml_index=k, visible_devices=uuid)
    for k, uuid in enumerate(["GPU-aaaa-0000", "GPU-bbbb-1111"])
]
BASE: dict[str, Any] = tiny_experiment()


def study(n_configs: int = 4, **execution: Any) -> StudyConfig:
    execution = {
        "config_gap_seconds": 0,
        "cycle_gap_seconds": 0,
        "parallel": "per_gpu",
        **execution,
    }
    sweep = {"pytorch.batch_size": list(range(1, n_configs + 1))}
    return StudyConfig.from_dict({"name": "pg", **BASE, "sweep": sweep, "execution": execution})


class CheckingWriter:
    """A manifest writer that checks every manifest it writes."""

    def __init__(self) -> None:
        self.max_running = 0
        self.writes = 0

    def __call__(self, manifest: StudyManifest, path: Path) -> None:
        write_manifest(manifest, path)
        reread = StudyManifest.model_validate_json(path.read_text())  # valid JSON, valid model
        running = [r for r in reread.runs if r.status == "running"]
        assert len(running) <= len(GPUS)
        devices = [r.device for r in running]
        assert len(set(devices)) == len(devices), f"two running runs share a GPU: {devices}"
        self.max_running = max(self.max_running, len(running))
        self.writes += 1


def overlap(a: Any, b: Any) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_runs_overlap_one_per_gpu_and_each_child_sees_only_its_gpu(tmp_path):
    writer = CheckingWriter()
    runner = StudyRunner.create(
        study(4),
        tmp_path,
        worker=ScriptedWorker(sleep_s=1.0),
        devices=GPUS,
        quiet=True,
        manifest_writer=writer,
    )
    result = runner.run()
    manifest = load_manifest(runner.study_dir)
    runs = manifest.runs
    assert [r.status for r in runs] == ["completed"] * 4
    assert result.counts.completed == 4
    assert writer.max_running == 2  # both GPUs busy at once
    # some runs on different GPUs really ran at the same time (which pairs depends on how long
    # each GPU's process took to start on a loaded machine)
    assert any(overlap(a, b) for a, b in itertools.combinations(runs, 2) if a.device != b.device)
    assert {r.device for r in runs} == {"GPU-aaaa-0000", "GPU-bbbb-1111"}
    for run in runs:
        saved = ExperimentResult.from_json(runner.study_dir / str(run.result_path))
        assert saved.environment.cuda_visible_devices == run.device


def test_each_run_records_the_runs_that_overlapped_it_and_the_thermal_caveat(tmp_path):
    runner = StudyRunner.create(
        study(2), tmp_path, worker=ScriptedWorker(sleep_s=1.0), devices=GPUS, quiet=True
    )
    runner.run()
    first, second = load_manifest(runner.study_dir).runs
    assert first.device != second.device
    assert [(c.run_id, c.device) for c in first.concurrent_runs] == [(second.run_id, second.device)]
    assert [(c.run_id, c.device) for c in second.concurrent_runs] == [(first.run_id, first.device)]
    saved = ExperimentResult.from_json(runner.study_dir / str(first.result_path))
    (note,) = [w for w in saved.measurement_warnings if THERMAL_NOTE in w]
    assert second.run_id in note and str(second.device) in note
    assert runner.results[first.run_id].measurement_warnings == saved.measurement_warnings


def test_with_one_gpu_runs_do_not_overlap_and_record_no_concurrency(tmp_path):
    runner = StudyRunner.create(
        study(2), tmp_path, worker=ScriptedWorker(sleep_s=0.3), devices=GPUS[:1], quiet=True
    )
    runner.run()
    first, second = load_manifest(runner.study_dir).runs
    assert not overlap(first, second)
    assert first.concurrent_runs == [] and second.concurrent_runs == []
    assert first.device == second.device == "GPU-aaaa-0000"


def test_a_failing_run_does_not_stop_its_neighbour_and_is_recorded(tmp_path):
    runner = StudyRunner.create(
        study(3),
        tmp_path,
        worker=ScriptedWorker(fail_at=frozenset({1}), kill_at=frozenset({2}), sleep_s=0.3),
        devices=GPUS,
        quiet=True,
    )
    runner.run()
    runs = load_manifest(runner.study_dir).runs
    assert [r.status for r in runs] == ["failed", "failed", "completed"]
    assert runs[0].error is not None and runs[0].error.type == "ValueError"
    assert runs[1].error is not None and runs[1].error.type == "WorkerCrashed"


def test_a_hanging_run_times_out_while_the_other_gpu_keeps_working(tmp_path):
    runner = StudyRunner.create(
        study(3, experiment_timeout_seconds=3),
        tmp_path,
        worker=ScriptedWorker(hang_at=frozenset({1}), hang_s=60),
        devices=GPUS,
        quiet=True,
    )
    runner.run()
    runs = load_manifest(runner.study_dir).runs
    assert runs[0].status == "failed" and runs[0].error is not None
    assert runs[0].error.type == "TimeoutError"
    assert runs[1].status == runs[2].status == "completed"
    assert runs[2].device == runs[1].device  # the hung GPU stayed busy


def test_per_gpu_without_any_gpu_is_a_clear_error(tmp_path):
    runner = StudyRunner.create(study(2), tmp_path, worker=ScriptedWorker(), devices=[], quiet=True)
    with pytest.raises(StudyError, match="per_gpu needs GPUs"):
        runner.run()


def test_parallel_defaults_to_none_and_does_not_change_the_design_hash():
    assert ExecutionConfig().parallel == "none"
    assert study(2).study_design_hash == study(2, parallel="none").study_design_hash
