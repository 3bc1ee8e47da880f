"""Engine reuse across a study's runs (issue 14): engine groups, one load per group, clean
state before every window, warmup prompts that are never measured, failures inside a group.

The study tests go through the real spawn path (``StudyRunner`` -> engine-group processes) with
``ReusingFakeWorker``, whose fake engine logs every load / clear / generate to a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.catalogue import engine_load_key, run_concurrency
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.datasets.warmup import warmup_prompts
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import load_manifest
from llenergymeasure.study.planning import engine_groups, plan_runs
from llenergymeasure.study.runner import StudyRunner
from llenergymeasure.study.worker import is_fatal
from llenergymeasure.testing.engines import FakeTokenizer
from llenergymeasure.testing.study import ReusingFakeWorker

BASE: dict[str, Any] = {
    "model": "builtin:tiny",
    "backend": "pytorch",
    "dataset": {"n": 3, "input_len": 6, "output_len": 4},
    "n": 3,
    "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
    "baseline": {"enabled": False},
}


def config(**overrides: Any) -> ExperimentConfig:
    data = {**BASE, **overrides}
    return ExperimentConfig.model_validate(data)


def make_study(sweep: dict[str, Any], **execution: Any) -> StudyConfig:
    execution = {"config_gap_seconds": 0, "cycle_gap_seconds": 0, **execution}
    return StudyConfig.from_dict({"name": "reuse", **BASE, "sweep": sweep, "execution": execution})


def run_study(study: StudyConfig, root: Path, worker: Any, **kwargs: Any) -> StudyRunner:
    runner = StudyRunner.create(study, root, worker=worker, quiet=True, **kwargs)
    runner.run()
    return runner


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def result_of(runner: StudyRunner, position: int) -> ExperimentResult:
    entry = next(r for r in runner.manifest.runs if r.position == position)
    return ExperimentResult.from_json(runner.study_dir / str(entry.result_path))


# --- which runs share an engine ------------------------------------------------------------------


def test_per_run_fields_do_not_change_the_engine_load_key():
    key = engine_load_key(config())
    for per_run in (
        {"pytorch": {"batch_size": 8, "batching_strategy": "dynamic"}},
        {"n": 2, "max_new_tokens": 7, "random_seed": 1},
        {"decoder": {"decoding_strategy": "sampling", "temperature": 0.7}},
        {"warmup": {"n_warmup": 4, "thermal_floor_seconds": 5}},
        {"dataset": {"n": 3, "input_len": 9, "output_len": 2}},
    ):
        assert engine_load_key(config(**per_run)) == key, per_run


def test_load_time_fields_change_the_engine_load_key():
    key = engine_load_key(config())
    for load_time in (
        {"precision": "fp32"},
        {"model": "other/model"},
        {"pytorch": {"torch_compile": True}},
        {"pytorch": {"attn_implementation": "eager"}},
        {"pytorch": {"load_in_8bit": True}},
        {"passthrough_kwargs": {"low_cpu_mem_usage": True}},
        {"lora": {"adapter_id": "some/adapter"}},
    ):
        assert engine_load_key(config(**load_time)) != key, load_time
    vllm = config(backend="vllm", vllm={"max_num_seqs": 8})
    assert engine_load_key(vllm) != engine_load_key(vllm.model_copy(update={"vllm": None}))


def test_run_concurrency_is_the_batch_size_or_max_num_seqs():
    assert run_concurrency(config()) == 1
    assert run_concurrency(config(pytorch={"batch_size": 4})) == 4
    assert run_concurrency(config(backend="vllm", vllm={"max_num_seqs": 32})) == 32
    assert run_concurrency(config(backend="vllm")) == 256


def test_groups_run_one_after_another_and_keep_the_cycle_order_inside():
    study = make_study(
        {"precision": ["fp32", "bf16"], "pytorch.batch_size": [1, 2]},
        n_cycles=2,
        cycle_order="interleaved",
        reuse_engine=True,
    )
    runs = plan_runs(study)
    # configs 0,1 = fp32 (batch 1, 2); 2,3 = bf16: two groups, interleaved within each
    assert [(r.config_index, r.cycle) for r in runs] == [
        (0, 1), (1, 1), (0, 2), (1, 2), (2, 1), (3, 1), (2, 2), (3, 2),
    ]  # fmt: skip
    assert [r.position for r in runs] == list(range(1, 9))
    assert [len(g.runs) for g in engine_groups(runs)] == [4, 4]
    unchanged = plan_runs(study, reuse=False)
    assert [(r.config_index, r.cycle) for r in unchanged][:4] == [(0, 1), (1, 1), (2, 1), (3, 1)]


# --- warmup prompts ------------------------------------------------------------------------------


def test_synthetic_warmup_prompts_have_the_same_lengths_and_a_different_seed():
    tok = FakeTokenizer()
    spec = config().dataset
    measured = [Prompt("a b c d e f", 4, index=i) for i in range(3)]
    warm = warmup_prompts(spec, 3, 2, measured=measured, tokenizer=tok)
    assert len(warm.prompts) == 2
    assert all(len(tok.encode(p.text)) == 6 and p.max_new_tokens == 4 for p in warm.prompts)
    from llenergymeasure.datasets import load_prompts

    measured_texts = {p.text for p in load_prompts(spec, 3, tokenizer=tok)}
    assert not measured_texts & {p.text for p in warm.prompts}
    assert "seed" in warm.source


def test_file_warmup_prompts_are_the_rows_after_the_measured_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(5)))
    warm = warmup_prompts(str(path), 3, 2, measured=[], tokenizer=None)
    assert [p.text for p in warm.prompts] == ["prompt 3", "prompt 4"]
    assert "rows 3..4" in warm.source


def test_a_file_without_spare_rows_warms_up_on_same_length_synthetic_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"alpha beta {i}"}) + "\n" for i in range(3)))
    from llenergymeasure.datasets import load_prompts

    measured = load_prompts(str(path), 3)
    tok = FakeTokenizer()
    warm = warmup_prompts(str(path), 3, 2, measured=measured, tokenizer=tok)
    assert [len(tok.encode(p.text)) for p in warm.prompts] == [3, 3]
    assert not {p.text for p in measured} & {p.text for p in warm.prompts}
    assert "token lengths of the measured prompts" in warm.source


# --- through the real spawn path -----------------------------------------------------------------


def test_one_engine_load_per_group_and_a_clean_state_before_every_window(tmp_path):
    log = tmp_path / "engine.log"
    study = make_study(
        {"precision": ["fp32", "bf16"], "pytorch.batch_size": [1, 2]},
        n_cycles=2,
        cycle_order="interleaved",
        reuse_engine=True,
    )
    runner = run_study(study, tmp_path / "out", ReusingFakeWorker(str(log)))

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed"] * 8
    seen = events(log)
    loads = [e for e in seen if e["event"] == "load"]
    assert len(loads) == 2, "one load per engine group"
    assert len({e["pid"] for e in loads}) == 2, "each group in its own process"
    assert [r.pid for r in manifest.runs] == [loads[0]["pid"]] * 4 + [loads[1]["pid"]] * 4
    # every measurement window is preceded by clear_run_state, after that run's warmup
    for run_id in (r.run_id for r in manifest.runs):
        mine = [
            e["event"] + ":" + e.get("phase", "")
            for e in seen
            if e["run_id"] == run_id and e["event"] != "unload"
        ]
        assert mine[-3:] == ["execute:warmup", "clear_run_state:", "execute:measurement"]
        # a reused engine is first told a new run begins (before that run's warmup)
        assert mine[0] in ("load:", "begin_reused_run:")
    # warmup prompts are never measured prompts
    for run_id in (r.run_id for r in manifest.runs):
        warm = {t for e in seen if e["run_id"] == run_id and e.get("phase") == "warmup"
                for t in e["texts"]}  # fmt: skip
        measured = {t for e in seen if e["run_id"] == run_id and e.get("phase") == "measurement"
                    for t in e["texts"]}  # fmt: skip
        assert warm and measured and not warm & measured
    first = result_of(runner, 1)
    assert (first.engine_reused, first.engine_loaded_by) == (False, manifest.runs[0].run_id)
    assert first.timing.load_s is not None
    for position in (2, 3, 4):
        later = result_of(runner, position)
        assert later.engine_reused and later.engine_loaded_by == manifest.runs[0].run_id
        assert later.timing.load_s == 0.0
        assert later.run_state_notes == [
            "fake: state of the previous run dropped",
            "fake: run state cleared",
        ]
    assert result_of(runner, 5).engine_loaded_by == manifest.runs[4].run_id
    assert first.run_state_notes == ["fake: run state cleared"], "the loading run has no reset"
    assert [e["event"] for e in seen].count("begin_reused_run") == 6, "every reused run, once"
    assert [e["event"] for e in seen].count("unload") == 2, "each group unloads at its end"
    assert "seed" in (first.warmup.prompt_source or "")


def test_reuse_engine_false_loads_a_fresh_engine_for_every_run(tmp_path):
    log = tmp_path / "engine.log"
    study = make_study({"pytorch.batch_size": [1, 2]}, n_cycles=2, reuse_engine=False)
    runner = run_study(study, tmp_path / "out", ReusingFakeWorker(str(log)))

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed"] * 4
    seen = events(log)
    assert len([e for e in seen if e["event"] == "load"]) == 4
    assert len({r.pid for r in manifest.runs}) == 4
    assert not [e for e in seen if e["event"] == "clear_run_state"]
    assert not any(result_of(runner, p).engine_reused for p in range(1, 5))


def test_an_exception_in_one_run_leaves_the_worker_serving_its_group(tmp_path):
    log = tmp_path / "engine.log"
    study = make_study({"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True)
    runner = run_study(study, tmp_path / "out", ReusingFakeWorker(str(log), fail_at=frozenset({2})))

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "failed", "completed"]
    assert manifest.runs[1].error is not None and manifest.runs[1].error.type == "ValueError"
    assert len({r.pid for r in manifest.runs}) == 1
    assert len([e for e in events(log) if e["event"] == "load"]) == 1


@pytest.mark.parametrize(
    ("misbehaviour", "error_type"),
    [("fatal_at", "RuntimeError"), ("exit_at", "WorkerCrashed")],
)
def test_a_fatal_error_or_crash_ends_the_worker_and_the_group_goes_on_in_a_fresh_one(
    tmp_path, misbehaviour, error_type
):
    log = tmp_path / "engine.log"
    study = make_study({"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True)
    worker = ReusingFakeWorker(str(log), **{misbehaviour: frozenset({2})})
    runner = run_study(study, tmp_path / "out", worker)

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "failed", "completed"]
    assert manifest.runs[1].error is not None and manifest.runs[1].error.type == error_type
    assert manifest.runs[0].pid == manifest.runs[1].pid != manifest.runs[2].pid
    assert len([e for e in events(log) if e["event"] == "load"]) == 2
    third = result_of(runner, 3)
    assert not third.engine_reused and third.engine_loaded_by == manifest.runs[2].run_id


def test_a_run_past_its_timeout_ends_the_worker_and_the_group_goes_on(tmp_path):
    log = tmp_path / "engine.log"
    study = make_study(
        {"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True, experiment_timeout_seconds=4
    )
    worker = ReusingFakeWorker(str(log), hang_at=frozenset({2}), hang_s=60)
    runner = run_study(study, tmp_path / "out", worker)

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "failed", "completed"]
    assert manifest.runs[1].error is not None and manifest.runs[1].error.type == "TimeoutError"
    assert manifest.runs[0].pid != manifest.runs[2].pid


def test_cuda_and_out_of_memory_errors_are_fatal_other_exceptions_are_not():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_fatal(OutOfMemoryError("whatever"))
    assert is_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_fatal(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_fatal(SystemExit(143))
    assert not is_fatal(ValueError("bad prompt"))


# --- the real worker and the CLI ------------------------------------------------------------------


def test_the_real_worker_loads_builtin_tiny_once_for_a_batch_size_sweep(tmp_path):
    study = make_study({"pytorch.batch_size": [1, 2]}, reuse_engine=True)
    runner = StudyRunner.create(study, tmp_path, quiet=True)
    result = runner.run()

    assert result.ok and len(result.results) == 2
    first, second = result_of(runner, 1), result_of(runner, 2)
    assert not first.engine_reused and first.timing.load_s > 0
    assert second.engine_reused and second.engine_loaded_by == runner.manifest.runs[0].run_id
    assert second.timing.load_s == 0.0 and second.run_state_notes
    assert runner.manifest.runs[0].pid == runner.manifest.runs[1].pid
    assert second.warmup.prompts_per_run == 2 and "seed" in (second.warmup.prompt_source or "")


def test_reuse_is_opt_in_and_dry_run_shows_the_engine_groups(write_yaml):
    import yaml
    from typer.testing import CliRunner

    from llenergymeasure.cli.app import app

    data = {
        **BASE,
        "name": "dry",
        "sweep": {"precision": ["fp32", "bf16"], "pytorch.batch_size": [1, 2]},
        "execution": {"n_cycles": 2, "cycle_order": "interleaved"},
    }
    path = write_yaml(yaml.safe_dump(data), "study.yaml")
    cli = CliRunner()
    default = cli.invoke(app, ["run", str(path), "--dry-run"])
    assert default.exit_code == 0, default.output
    assert "engine reuse: off; 8 engine loads" in default.stdout

    shown = cli.invoke(app, ["run", str(path), "--dry-run", "--reuse-engine"])
    assert shown.exit_code == 0, shown.output
    assert "2 engine group(s) = 2 engine loads for 8 runs" in shown.stdout
    assert "run order (experiment/cycle): #1/c1 #2/c1 #1/c2 #2/c2 #3/c1" in shown.stdout

    off = cli.invoke(app, ["run", str(path), "--dry-run", "--no-reuse-engine"])
    assert off.exit_code == 0, off.output
    assert "engine reuse: off; 8 engine loads" in off.stdout
    assert "run order (experiment/cycle): #1/c1 #2/c1 #3/c1 #4/c1" in off.stdout

    data["execution"]["reuse_engine"] = True
    path = write_yaml(yaml.safe_dump(data), "study_reuse.yaml")
    from_yaml = cli.invoke(app, ["run", str(path), "--dry-run"])
    assert "2 engine group(s) = 2 engine loads for 8 runs" in from_yaml.stdout


def test_the_real_worker_gives_each_reused_run_a_fresh_energy_backend_and_sampler(
    monkeypatch, tmp_path
):
    """A sampler starts only once: every run on a kept engine needs its own."""
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.harness import orchestrator as orch
    from llenergymeasure.study.worker import ReusingMeasureWorker, RunRequest
    from llenergymeasure.testing.energy import FakeEnergyBackend, FakeGpuSensor
    from llenergymeasure.testing.engines import FakeEngine

    engine, sensor = FakeEngine(output_tokens=4, seconds_per_token=0.0), FakeGpuSensor()

    def energy_backend_for(settings: Any, sensor: Any) -> Any:
        backend = FakeEnergyBackend(total_energy_j=3.0)
        backend.sampler = EnergySampler(sensor, interval_ms=10)  # type: ignore[attr-defined]
        return backend

    monkeypatch.setattr(orch, "energy_backend_for", energy_backend_for)
    monkeypatch.setattr(
        orch, "default_components", lambda c, s: (engine, energy_backend_for(s, sensor), sensor)
    )
    worker = ReusingMeasureWorker()
    results = []
    for position, batch in enumerate((1, 2), 1):
        request = RunRequest(
            run_id=f"r{position}",
            config=config(pytorch={"batch_size": batch}),
            run_dir=str(tmp_path / f"r{position}"),
            cycle=1,
            position=position,
            attempt=1,
            runner="local",
            reuse_engine=True,
        )
        results.append(worker(request, lambda _m: None))
    worker.close()

    assert engine.loads == 1 and engine.clears == 2 and engine.unloaded
    assert [m.result.engine_reused for m in results] == [False, True]
    assert all(m.timeseries is not None and m.result.timeseries_samples > 0 for m in results)


def test_per_gpu_keeps_one_engine_process_per_gpu_and_loads_once_per_gpu(tmp_path):
    from llenergymeasure.energy.devices import DeviceSlot

    gpus = [
        DeviceSlot(device="cuda:0", label=f"cuda:{k}", uuid=u, nvml_index=k, visible_devices=u)
        for k, u in enumerate(["GPU-aaaa-0000", "GPU-bbbb-1111"])
    ]
    log = tmp_path / "engine.log"
    study = make_study(
        {"pytorch.batch_size": [1, 2]}, n_cycles=3, parallel="per_gpu", reuse_engine=True
    )
    runner = run_study(study, tmp_path / "out", ReusingFakeWorker(str(log)), devices=gpus)

    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed"] * 6
    loads = [e for e in events(log) if e["event"] == "load"]
    assert len(loads) == 2, "one engine load per GPU for the one engine group"
    pids_by_gpu: dict[str | None, set[int | None]] = {}
    for r in manifest.runs:
        pids_by_gpu.setdefault(r.device, set()).add(r.pid)
    assert len(pids_by_gpu) == 2 and all(len(p) == 1 for p in pids_by_gpu.values())
    reused = [result_of(runner, p).engine_reused for p in range(1, 7)]
    assert reused.count(False) == 2 and reused.count(True) == 4
