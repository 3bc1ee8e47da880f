"""Engine reuse by default where it is proven (issue 31 item 5).

Each engine's catalogue entry says whether reuse was shown equivalent on hardware and where;
``execution.reuse_engine`` left unset (study and user config) means each engine's own default,
so a study mixing engines reuses one and not the other. ``--reuse-engine`` /
``--no-reuse-engine`` and explicit settings still decide for every engine; ``--dry-run`` says
which engines reuse and why; the decision is kept in the manifest for ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.catalogue import ENGINES, engine_spec
from llenergymeasure.config.study import ExecutionConfig, StudyConfig
from llenergymeasure.study.manifest import load_manifest, manifest_path
from llenergymeasure.study.planning import (
    ENGINE_DEFAULT,
    manifest_engine_reuse,
    plan_runs,
    resolve_engine_reuse,
    reuse_map,
)
from llenergymeasure.study.runner import StudyRunner
from llenergymeasure.testing.study import ReusingFakeWorker

BASE: dict[str, Any] = {
    "model": "builtin:tiny",
    "dataset": {"n": 3, "input_len": 6, "output_len": 4},
    "n": 3,
    "precision": "bf16",
    "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
    "baseline": {"enabled": False},
}
NO_GAPS = {"config_gap_seconds": 0, "cycle_gap_seconds": 0}


def mixed_study(**execution: Any) -> StudyConfig:
    """Two PyTorch and two vLLM configs (each pair one engine group), interleaved cycles."""
    return StudyConfig.from_dict(
        {
            "name": "mixed",
            **BASE,
            "experiments": [
                {"backend": "pytorch", "pytorch": {"batch_size": 1}},
                {"backend": "vllm", "vllm": {"max_num_seqs": 4}},
                {"backend": "pytorch", "pytorch": {"batch_size": 2}},
                {"backend": "vllm", "vllm": {"max_num_seqs": 4}, "n": 2},
            ],
            "execution": {"n_cycles": 2, "cycle_order": "interleaved", **NO_GAPS, **execution},
        }
    )


def write_user_config(home: Path, text: str) -> None:
    path = home / "config" / "llenergymeasure" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- the catalogue ---------------------------------------------------------------------------


def test_every_engine_says_whether_reuse_is_proven_and_where_that_comes_from():
    for spec in ENGINES.values():
        assert spec.reuse_evidence.startswith("proven" if spec.reuse_proven else "not proven")
    assert engine_spec("vllm").reuse_proven
    assert "0.3 %" in engine_spec("vllm").reuse_evidence  # J/token, BENCHMARKS.md issue 14
    assert "Engine reuse (issue 14)" in engine_spec("vllm").reuse_evidence
    assert not engine_spec("pytorch").reuse_proven
    assert "batch 8" in engine_spec("pytorch").reuse_evidence
    assert not engine_spec("tensorrt").reuse_proven
    assert "never run on hardware" in engine_spec("tensorrt").reuse_evidence


# --- resolution ------------------------------------------------------------------------------


def test_unset_everywhere_each_engine_gets_its_proven_default():
    decisions = resolve_engine_reuse(ExecutionConfig(), ["pytorch", "vllm", "tensorrt"])
    assert {n: d.reuse for n, d in decisions.items()} == {
        "pytorch": False,
        "vllm": True,
        "tensorrt": False,
    }
    assert all(d.source == ENGINE_DEFAULT for d in decisions.values())
    assert decisions["vllm"].describe().startswith("vllm: on (engine default: proven")
    assert decisions["pytorch"].describe().startswith("pytorch: off (engine default: not proven")


@pytest.mark.parametrize("value", [True, False])
def test_the_study_setting_decides_for_every_engine(value):
    decisions = resolve_engine_reuse(ExecutionConfig(reuse_engine=value), ["pytorch", "vllm"])
    assert [d.reuse for d in decisions.values()] == [value, value]
    assert all("set for this study" in d.source for d in decisions.values())


@pytest.mark.parametrize("value", [True, False])
def test_the_user_config_setting_decides_for_every_engine(isolated_user_env, value):
    write_user_config(isolated_user_env, f"execution:\n  reuse_engine: {str(value).lower()}\n")
    decisions = resolve_engine_reuse(ExecutionConfig(), ["pytorch", "vllm"])
    assert [d.reuse for d in decisions.values()] == [value, value]
    sources = {d.source for d in decisions.values()}
    assert all(s.startswith("execution.reuse_engine in the user config") for s in sources)


def test_the_study_setting_wins_over_the_user_config(isolated_user_env):
    write_user_config(isolated_user_env, "execution:\n  reuse_engine: true\n")
    decisions = resolve_engine_reuse(ExecutionConfig(reuse_engine=False), ["vllm"])
    assert not decisions["vllm"].reuse


# --- the plan ----------------------------------------------------------------------------------


def test_a_mixed_study_groups_only_the_engine_that_reuses():
    study = mixed_study()
    assert reuse_map(study) == {"pytorch": False, "vllm": True}
    order = [(r.config_index + 1, r.cycle) for r in plan_runs(study)]
    # vLLM's two configs differ only in n (per-run): one engine group, gathered where it first
    # appears; the PyTorch runs keep their places in the interleaved order around it
    assert order == [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (3, 1), (1, 2), (3, 2)]
    assert [(r.config_index + 1, r.cycle) for r in plan_runs(study, reuse=False)] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (3, 2), (4, 2)
    ]  # fmt: skip


# --- running -----------------------------------------------------------------------------------


def test_a_mixed_study_reuses_vllm_and_gives_pytorch_a_fresh_process_per_run(tmp_path):
    log = tmp_path / "engine.jsonl"
    runner = StudyRunner.create(
        mixed_study(), tmp_path / "results", worker=ReusingFakeWorker(str(log)), quiet=True
    )
    assert runner.manifest.engine_reuse == {"pytorch": False, "vllm": True}
    runner.run()
    runs = sorted(runner.manifest.runs, key=lambda r: r.position)
    assert all(r.status == "completed" for r in runs)
    backend = {r.run_id: runner.manifest.experiments[r.config_index].backend for r in runs}
    vllm = [r for r in runs if backend[r.run_id] == "vllm"]
    pytorch = [r for r in runs if backend[r.run_id] == "pytorch"]
    assert len({r.pid for r in vllm}) == 1, "one process serves the vLLM engine group"
    assert len({r.pid for r in pytorch}) == len(pytorch), "a fresh process per PyTorch run"
    reused = {run_id: runner.results[run_id].engine_reused for run_id in backend}
    assert [reused[r.run_id] for r in vllm] == [False, True, True, True]
    assert not any(reused[r.run_id] for r in pytorch)
    loads = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert loads.count("load") == 1 + len(pytorch)


def test_per_gpu_reuses_vllm_on_each_gpu_and_runs_pytorch_fresh(tmp_path):
    from llenergymeasure.energy.devices import DeviceSlot

    gpus = [
        DeviceSlot(device="cuda:0", label=f"cuda:{k}", uuid=u, nvml_index=k, visible_devices=u)
        for k, u in enumerate(["GPU-aaaa-0000", "GPU-bbbb-1111"])
    ]
    log = tmp_path / "engine.jsonl"
    runner = StudyRunner.create(
        mixed_study(parallel="per_gpu"),
        tmp_path / "results",
        worker=ReusingFakeWorker(str(log)),
        quiet=True,
        devices=gpus,
    )
    runner.run()
    runs = runner.manifest.runs
    assert all(r.status == "completed" for r in runs)
    backend = {r.run_id: runner.manifest.experiments[r.config_index].backend for r in runs}
    pytorch = [r for r in runs if backend[r.run_id] == "pytorch"]
    vllm = [r for r in runs if backend[r.run_id] == "vllm"]
    assert not any(runner.results[r.run_id].engine_reused for r in pytorch)
    assert len({r.pid for r in pytorch}) == len(pytorch)
    vllm_loads = sum(1 for r in vllm if not runner.results[r.run_id].engine_reused)
    assert 1 <= vllm_loads <= len(vllm) - 1, "vLLM runs reuse a GPU's engine process"


def test_the_decision_is_kept_for_resume_even_if_the_user_config_changes(
    tmp_path, isolated_user_env
):
    runner = StudyRunner.create(mixed_study(), tmp_path / "results", quiet=True)
    write_user_config(isolated_user_env, "execution:\n  reuse_engine: false\n")
    resumed = StudyRunner.resume(runner.study_dir, quiet=True)
    assert resumed.engine_reuse == {"pytorch": False, "vllm": True}


def test_a_manifest_from_before_per_engine_defaults_keeps_its_one_setting(tmp_path):
    runner = StudyRunner.create(mixed_study(reuse_engine=True), tmp_path / "results", quiet=True)
    data = json.loads(manifest_path(runner.study_dir).read_text())
    del data["engine_reuse"]  # as written before: only execution.reuse_engine, resolved
    manifest_path(runner.study_dir).write_text(json.dumps(data))
    old = load_manifest(runner.study_dir)
    assert manifest_engine_reuse(old) == {"pytorch": True, "vllm": True}


# --- the dry run ---------------------------------------------------------------------------


def dry_run(write_yaml, data: dict[str, Any], *flags: str) -> str:
    path = write_yaml(yaml.safe_dump(data), "study.yaml")
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", *flags])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_dry_run_says_which_engines_reuse_and_why(write_yaml):
    study_yaml = {
        "name": "mixed",
        **BASE,
        "experiments": [
            {"backend": "pytorch", "pytorch": {"batch_size": 1}},
            {"backend": "vllm", "vllm": {"max_num_seqs": 4}},
        ],
        "execution": {"n_cycles": 2, **NO_GAPS},
    }
    out = dry_run(write_yaml, study_yaml)
    assert "engine reuse: on for vllm, off for pytorch" in out
    assert "1 engine group(s) + 2 run(s) in a fresh process = 3 engine loads for 4 runs" in out
    assert "  vllm: on (engine default: proven: vLLM 0.26 on one H200" in out
    assert "  pytorch: off (engine default: not proven:" in out
    assert "--reuse-engine / --no-reuse-engine set it for every engine" in out

    off = dry_run(write_yaml, study_yaml, "--no-reuse-engine")
    assert "engine reuse: off; 4 engine loads (one per run)" in off
    assert "  vllm: off (set for this study" in off and "engine default" not in off

    on = dry_run(write_yaml, study_yaml, "--reuse-engine")
    assert "engine reuse: on; 2 engine group(s) = 2 engine loads for 4 runs" in on
    assert "  pytorch: on (set for this study" in on


def test_dry_run_of_a_vllm_study_reuses_by_default(write_yaml):
    out = dry_run(
        write_yaml,
        {
            "name": "v",
            **BASE,
            "backend": "vllm",
            "sweep": {"vllm.max_num_seqs": [4, 8]},
            "execution": {"n_cycles": 3, **NO_GAPS},
        },
    )
    assert "engine reuse: on; 2 engine group(s) = 2 engine loads for 6 runs" in out
    assert "vllm: on (engine default: proven" in out


def test_dry_run_json_carries_each_engines_decision(write_yaml):
    study_yaml = {
        "name": "mixed",
        **BASE,
        "experiments": [{"backend": "pytorch"}, {"backend": "vllm"}],
    }
    data = json.loads(dry_run(write_yaml, study_yaml, "--json"))
    reuse = data["engine_reuse"]
    assert reuse["vllm"]["reuse"] and reuse["vllm"]["source"] == ENGINE_DEFAULT
    assert reuse["vllm"]["evidence"].startswith("proven")
    assert not reuse["pytorch"]["reuse"] and reuse["pytorch"]["evidence"].startswith("not proven")
