"""Runners: resolution, engine isolation, and the Docker runner against a fake ``docker``.

The fake ``docker`` is a small Python script put first on PATH: it records its argv, answers
``docker info``, and for ``docker run`` reads the config from the mounted volume and writes a
``result.json`` (a real result produced by ``container_entry.main`` on CPU) into it. No real
Docker is involved.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ExperimentError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.runners import (
    DockerRunner,
    RunnerSpec,
    check_runner_isolation,
    resolve_runner,
)
from llenergymeasure.runners.container_entry import main as container_main
from llenergymeasure.testing.configs import tiny_experiment

FAKE_DOCKER = """#!{python}
import json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_ARGV"], "a") as f:
    f.write(json.dumps(args) + "\\n")
mode = os.environ.get("FAKE_DOCKER_MODE", "ok")
if args[0] == "info":
    if mode == "info_fail":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
if args[0] == "run":
    host = args[args.index("-v") + 1].rsplit(":", 1)[0]
    config = json.loads(Path(host, "config.json").read_text())
    print("container: measuring " + config["model"])
    out = Path(host, "out")
    out.mkdir(exist_ok=True)
    if mode == "fail":
        print("RuntimeError: CUDA out of memory", file=sys.stderr)
        (out / "error.json").write_text(
            json.dumps({{"type": "BackendError", "message": "CUDA out of memory"}})
        )
        sys.exit(3)
    if mode == "noresult":
        sys.exit(0)
    shutil.copy(os.environ["FAKE_DOCKER_RESULT"], out / "result.json")
"""

TINY = tiny_experiment(precision="fp32", dataset={"n": 2, "input_len": 8, "output_len": 3})


@pytest.fixture(scope="module")
def real_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A result.json written by ``container_entry.main`` (builtin:tiny on CPU)."""
    folder = tmp_path_factory.mktemp("entry")
    (folder / "config.json").write_text(ExperimentConfig.model_validate(TINY).model_dump_json())
    mp = pytest.MonkeyPatch()
    mp.setenv("LLEM_CACHE_DIR", str(tmp_path_factory.mktemp("llem-cache")))
    mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
    try:
        assert container_main([str(folder / "config.json"), str(folder / "out")]) == 0
    finally:
        mp.undo()
    return folder / "out" / "result.json"


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_result: Path) -> Path:
    """A fake ``docker`` first on PATH; returns the file its argv lines are recorded in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_ARGV", str(record))
    monkeypatch.setenv("FAKE_DOCKER_RESULT", str(real_result))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return record


def calls(record: Path) -> list[list[str]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def vllm_cfg(**kw: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": "org/m", "backend": "vllm", **kw})


# ─── Resolution ───────────────────────────────────────────────────────────────
def test_runner_defaults_to_local(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_runner("vllm") == RunnerSpec("vllm", "local", None, "default")


def test_env_beats_user_config_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "config.yaml"
    user.write_text("runners:\n  vllm: docker:vllm/vllm-openai:v0.11.0\n")
    monkeypatch.setenv("LLEM_CONFIG", str(user))
    spec = resolve_runner("vllm")
    assert (spec.kind, spec.image, spec.value) == (
        "docker",
        "vllm/vllm-openai:v0.11.0",
        "docker:vllm/vllm-openai:v0.11.0",
    )
    assert spec.source.startswith("user config")
    monkeypatch.setenv("LLEM_RUNNER_VLLM", "local")
    assert resolve_runner("vllm") == RunnerSpec("vllm", "local", None, "env LLEM_RUNNER_VLLM")
    assert resolve_runner("tensorrt").kind == "local"


def test_vllm_and_tensorrt_both_local_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    (problem,) = check_runner_isolation(["pytorch", "vllm", "tensorrt", "vllm"])
    assert "vllm and tensorrt" in problem
    assert "docker:<image>" in problem and "LLEM_RUNNER_VLLM" in problem
    assert check_runner_isolation(["pytorch", "vllm"]) == []
    assert check_runner_isolation(["tensorrt"]) == []
    monkeypatch.setenv("LLEM_RUNNER_TENSORRT", "docker:nvcr.io/nvidia/tensorrt-llm:1.0")
    assert check_runner_isolation(["vllm", "tensorrt"]) == []


# ─── Command line ─────────────────────────────────────────────────────────────
def test_exact_docker_command_for_vllm(tmp_path: Path) -> None:
    env = {"HF_TOKEN": "secret", "LLEM_CARBON_INTENSITY": "350", "UNRELATED": "x"}
    cmd = DockerRunner("vllm/vllm-openai:v0.11.0").build_command(
        vllm_cfg(), tmp_path, name="llem-abc", env=env
    )
    assert cmd == [
        "docker", "run", "--rm", "--name", "llem-abc",
        "--gpus", "all",
        "--shm-size", "8g",
        "-v", f"{tmp_path.resolve()}:/llem",
        "-e", "LLEM_CONFIG_PATH=/llem/config.json",
        "-e", "LLEM_CARBON_INTENSITY",
        "-e", "HF_TOKEN",  # passed by name: the value never appears in argv
        "vllm/vllm-openai:v0.11.0",
        "python", "-m", "llenergymeasure.runners.container_entry",
        "/llem/config.json", "/llem/out",
    ]  # fmt: skip


def test_gpu_selection_follows_cuda_visible_devices(tmp_path: Path) -> None:
    runner = DockerRunner("img")
    pt = ExperimentConfig.model_validate({"model": "m", "backend": "pytorch"})
    cmd = runner.build_command(pt, tmp_path, name="n", env={"CUDA_VISIBLE_DEVICES": "0, 2"})
    assert cmd[5:7] == ["--gpus", '"device=0,2"']
    assert "--shm-size" not in cmd  # only the multi-process engines need a big /dev/shm
    assert "--gpus" not in runner.build_command(
        pt, tmp_path, name="n", env={"CUDA_VISIBLE_DEVICES": ""}
    )


# ─── Running ──────────────────────────────────────────────────────────────────
def test_run_executes_the_command_and_reads_the_result_back(
    fake_docker: Path, tmp_path: Path, real_result: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    out = DockerRunner("vllm/vllm-openai:v0.11.0").run(vllm_cfg(), run_dir)
    (argv,) = calls(fake_docker)
    assert ["docker", *argv] == out.command
    assert argv[:2] == ["run", "--rm"] and "-e" in argv and "HF_HUB_OFFLINE" in argv
    assert argv[argv.index("-v") + 1] == f"{run_dir.resolve()}:/llem"
    assert (
        ExperimentConfig.model_validate_json((run_dir / "config.json").read_text()).model == "org/m"
    )
    assert out.result == ExperimentResult.from_json(real_result)
    assert out.result_path == run_dir / "out" / "result.json"
    assert "container: measuring org/m" in out.log_path.read_text()


def test_failure_keeps_the_logs_and_names_the_reason(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", "fail")
    run_dir = tmp_path / "run"
    with pytest.raises(ExperimentError) as err:
        DockerRunner("img").run(vllm_cfg(), run_dir)
    text = str(err.value)
    assert "exited with code 3" in text
    assert "BackendError: CUDA out of memory" in text
    log = run_dir / "container.log"
    assert str(log) in text
    assert "RuntimeError: CUDA out of memory" in log.read_text()  # stderr captured too
    assert not (run_dir / "out" / "result.json").exists()


def test_success_without_result_is_an_error(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", "noresult")
    with pytest.raises(ExperimentError, match=r"wrote no result\.json"):
        DockerRunner("img").run(vllm_cfg(), tmp_path / "run")


def test_preflight_reports_missing_or_broken_docker(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DockerRunner("img").preflight() == []
    assert calls(fake_docker) == [["info"]]
    monkeypatch.setenv("FAKE_DOCKER_MODE", "info_fail")
    (problem,) = DockerRunner("img").preflight()
    assert "`docker info` failed" in problem and "Cannot connect" in problem
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    (problem,) = DockerRunner("img").preflight()
    assert "not on PATH" in problem


# ─── Container entry point ────────────────────────────────────────────────────
def test_container_entry_measures_and_saves(real_result: Path) -> None:
    result = ExperimentResult.from_json(real_result)
    assert (result.config.model, result.config.n) == ("builtin:tiny", 2)


def test_container_entry_reports_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model": "m", "backend": "nope"}')
    assert container_main([str(tmp_path / "config.json"), str(tmp_path / "out")]) == 1
    err = json.loads((tmp_path / "out" / "error.json").read_text())
    assert err["type"] == "ValidationError" and "backend" in err["message"]


def test_a_study_run_whose_runner_is_docker_goes_through_one_container(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.study.runner import run_study_config

    monkeypatch.setenv("LLEM_RUNNER_PYTORCH", "docker:llem/pytorch:test")
    study = StudyConfig.from_dict({**TINY, "name": "in-docker", "sweep": {"n": [2]}})
    result = run_study_config(study, output_dir=tmp_path / "results", quiet=True)
    assert result.counts.completed == 1
    runs = [c for c in calls(fake_docker) if c[0] == "run"]
    assert len(runs) == 1 and "llem/pytorch:test" in runs[0] and "--rm" in runs[0]
    assert result.study_dir is not None
    (run_dir,) = [p for p in Path(result.study_dir).iterdir() if p.is_dir()]
    assert (run_dir / "container.log").is_file()
    assert (run_dir / "result.json").is_file()
