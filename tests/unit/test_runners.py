"""Runners: resolution, engine isolation, and the Docker runner against a fake ``docker``.

The fake ``docker`` is a small Python script put first on PATH: it records its argv, answers
``docker info``, and for ``docker run`` reads the config from the mounted volume and writes a
``result.json`` (a real result produced by ``container_entry.main`` on CPU) into it. No real
Docker is involved.

An engine group's container (``docker run -i ... container_entry --serve /llem``, engine reuse)
is faked by a real process: the fake ``docker`` becomes ``FAKE_CONTAINER`` (exec), which runs
the real serving entry point with ``/llem`` mapped to the mounted host directory, on the real
``builtin:tiny`` engine. ``FAKE_CONTAINER_<FAIL|FATAL|DIE|HANG>_AT`` (run-id prefixes such as
``002``) make chosen runs raise, fail fatally, kill the container, or hang;
``FAKE_CONTAINER_ENGINE=fake`` puts a fake engine and energy backend in it (no torch to import:
a container starts in under a second). ``docker kill NAME`` kills the process recorded under
that name.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
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
import json, os, shutil, sys, time
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
if args[0] == "kill":
    pid = int(Path(os.environ["FAKE_DOCKER_STATE"], args[1]).read_text())
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        sys.exit(1)
    sys.exit(0)
if args[0] == "run" and "--serve" in args:
    host = args[args.index("-v") + 1].rsplit(":", 1)[0]
    name = args[args.index("--name") + 1]
    Path(os.environ["FAKE_DOCKER_STATE"], name).write_text(str(os.getpid()))
    container = os.environ["FAKE_CONTAINER"]
    os.execv(sys.executable, [sys.executable, container, host, name])
if args[0] == "run":
    host = args[args.index("-v") + 1].rsplit(":", 1)[0]
    name = args[args.index("--name") + 1]
    Path(os.environ["FAKE_DOCKER_STATE"], name).write_text(str(os.getpid()))
    if mode == "hang":
        time.sleep(60)
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

FAKE_CONTAINER = """\
import os, sys, time

from llenergymeasure.harness.session import EngineSession

host, name = sys.argv[1], sys.argv[2]
print(f"fake container {name} serving {host}", file=sys.stderr, flush=True)


def scripted(var):
    return {x for x in os.environ.get(var, "").split(",") if x}


real_measure = EngineSession.measure


def measure(self, config, *, run_id=None, **kwargs):
    at = (run_id or "")[:3]
    if at in scripted("FAKE_CONTAINER_FAIL_AT"):
        raise ValueError(f"scripted failure in run {run_id}")
    if at in scripted("FAKE_CONTAINER_FATAL_AT"):
        raise RuntimeError("CUDA error: out of memory (scripted)")
    if at in scripted("FAKE_CONTAINER_DIE_AT"):
        os._exit(137)  # what the OOM killer leaves behind
    if at in scripted("FAKE_CONTAINER_HANG_AT"):
        time.sleep(600)
    return real_measure(self, config, run_id=run_id, **kwargs)


EngineSession.measure = measure
if os.environ.get("FAKE_CONTAINER_ENGINE") == "fake":  # a fake engine: no torch to import
    from llenergymeasure.harness import orchestrator
    from llenergymeasure.testing.energy import FakeEnergyBackend
    from llenergymeasure.testing.engines import FakeEngine

    orchestrator.energy_backend_for = lambda settings, sensor: FakeEnergyBackend(10.0)
    orchestrator.default_components = lambda config, settings: (
        FakeEngine(output_tokens=config.max_new_tokens, seconds_per_token=0.0),
        FakeEnergyBackend(10.0),
        None,
    )
from llenergymeasure.runners.container_entry import main

raise SystemExit(main(["--serve", host]))
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
    container = bin_dir / "fake_container.py"
    container.write_text(FAKE_CONTAINER)
    state = tmp_path / "containers"
    state.mkdir()
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_CONTAINER", str(container))
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
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


def test_an_interrupted_run_kills_its_container_by_name(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setenv("FAKE_DOCKER_MODE", "hang")
    ctrl_c = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()  # while the container runs
    with pytest.raises(KeyboardInterrupt):
        DockerRunner("img").run(vllm_cfg(), tmp_path / "run")

    started, killed = calls(fake_docker)
    assert started[0] == "run" and killed == ["kill", started[started.index("--name") + 1]]


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


# ─── Engine groups: one container per group (engine reuse) ────────────────────
@pytest.fixture
def fake_engine_in_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CONTAINER_ENGINE", "fake")


def docker_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep: dict[str, Any], **execution: Any
) -> Any:
    """A study of ``TINY`` x ``sweep`` whose pytorch runner is the fake docker; its runner."""
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.study.runner import StudyRunner

    monkeypatch.setenv("LLEM_RUNNER_PYTORCH", "docker:llem/pytorch:test")
    execution = {"config_gap_seconds": 0, "cycle_gap_seconds": 0, **execution}
    study = StudyConfig.from_dict(
        {**TINY, "name": "in-docker", "sweep": sweep, "execution": execution}
    )
    return StudyRunner.create(study, tmp_path / "results", quiet=True)


def result_at(runner: Any, position: int) -> ExperimentResult:
    entry = runner.manifest.runs[position - 1]
    return ExperimentResult.from_json(runner.study_dir / str(entry.result_path))


def container_of(run_dir: Path) -> str:
    """The container a run was measured in, from the first line of its container.log."""
    first = (run_dir / "container.log").read_text().splitlines()[0]
    return first.split("--name ")[1].split()[0]


def serving_runs(record: Path) -> list[list[str]]:
    return [c for c in calls(record) if c[0] == "run" and "--serve" in c]


def test_an_engine_group_runs_in_one_container_that_loads_the_engine_once(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = docker_study(
        tmp_path, monkeypatch, {"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True
    )
    result = runner.run()

    assert result.counts.completed == 3
    (started,) = [c for c in calls(fake_docker) if c[0] == "run"]
    assert started[:3] == ["run", "-i", "--rm"] and started[-2:] == ["--serve", "/llem"]
    assert started[started.index("-v") + 1] == f"{runner.study_dir.resolve()}:/llem"
    runs = runner.manifest.runs
    run_dirs = [runner.study_dir / r.run_id for r in runs]
    assert {container_of(d) for d in run_dirs} == {started[started.index("--name") + 1]}
    first_id = runs[0].run_id
    for position, (entry, run_dir) in enumerate(zip(runs, run_dirs, strict=True), 1):
        measured = result_at(runner, position)
        assert entry.result_path == f"{entry.run_id}/result.json"
        assert measured.config.pytorch is not None
        assert measured.config.pytorch.batch_size == position  # each run's own config
        assert (run_dir / "out" / "result.json").is_file()  # written by the container
        assert measured.engine_loaded_by == first_id
        assert measured.engine_reused == (position > 1)
        assert (measured.timing.load_s == 0.0) == (position > 1)
    assert len({r.pid for r in runs}) == 1  # one engine-group process on the host
    assert not [c for c in calls(fake_docker) if c[0] == "kill"]  # it stopped when asked


def test_two_engine_groups_get_one_container_each(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweep = {"pytorch.attn_implementation": ["eager", "sdpa"], "pytorch.batch_size": [1, 2]}
    runner = docker_study(tmp_path, monkeypatch, sweep, reuse_engine=True)
    result = runner.run()

    assert result.counts.completed == 4
    assert len(serving_runs(fake_docker)) == 2
    containers = [container_of(runner.study_dir / r.run_id) for r in runner.manifest.runs]
    assert containers[0] == containers[1] != containers[2] == containers[3]
    assert [result_at(runner, p).engine_reused for p in (1, 2, 3, 4)] == [
        False, True, False, True,
    ]  # fmt: skip


def test_an_exception_in_one_run_leaves_the_container_serving_its_group(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CONTAINER_FAIL_AT", "002")
    runner = docker_study(
        tmp_path, monkeypatch, {"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True
    )
    runner.run()

    runs = runner.manifest.runs
    assert [r.status for r in runs] == ["completed", "failed", "completed"]
    error = runs[1].error
    assert error is not None and error.type == "ExperimentError"
    assert f"ValueError: scripted failure in run {runs[1].run_id}" in error.message
    failed_dir = runner.study_dir / runs[1].run_id
    assert json.loads((failed_dir / "out" / "error.json").read_text())["type"] == "ValueError"
    assert not (failed_dir / "result.json").exists()
    assert len(serving_runs(fake_docker)) == 1  # the same container served run 3
    third = result_at(runner, 3)
    assert third.engine_reused and third.engine_loaded_by == runs[0].run_id


@pytest.mark.parametrize(
    ("misbehaviour", "reason"),
    [
        ("FAKE_CONTAINER_DIE_AT", "exited with code 137 during run 002"),
        ("FAKE_CONTAINER_FATAL_AT", "RuntimeError: CUDA error: out of memory"),
    ],
)
def test_a_container_that_dies_or_fails_fatally_fails_its_run_and_the_group_goes_on_in_a_new_one(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    misbehaviour: str,
    reason: str,
) -> None:
    monkeypatch.setenv(misbehaviour, "002")
    runner = docker_study(
        tmp_path, monkeypatch, {"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True
    )
    runner.run()

    runs = runner.manifest.runs
    assert [r.status for r in runs] == ["completed", "failed", "completed"]
    assert runs[1].error is not None and reason in runs[1].error.message
    assert len(serving_runs(fake_docker)) == 2
    first, second, third = (container_of(runner.study_dir / r.run_id) for r in runs)
    assert first == second != third
    fresh = result_at(runner, 3)  # the new container loaded the engine again
    assert not fresh.engine_reused and fresh.engine_loaded_by == runs[2].run_id


def test_a_run_past_its_timeout_kills_its_container_and_the_group_goes_on(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CONTAINER_HANG_AT", "002")
    runner = docker_study(
        tmp_path,
        monkeypatch,
        {"pytorch.batch_size": [1, 2, 3]},
        reuse_engine=True,
        experiment_timeout_seconds=8,
    )
    runner.run()

    runs = runner.manifest.runs
    assert [r.status for r in runs] == ["completed", "failed", "completed"]
    assert runs[1].error is not None and runs[1].error.type == "TimeoutError"
    hung = container_of(runner.study_dir / runs[1].run_id)
    assert ["kill", hung] in calls(fake_docker)  # by name: the docker client alone is not enough
    assert not pid_alive(int((tmp_path / "containers" / hung).read_text()))
    assert len(serving_runs(fake_docker)) == 2


def test_without_engine_reuse_every_run_gets_its_own_container(
    fake_docker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = docker_study(tmp_path, monkeypatch, {"pytorch.batch_size": [1, 2]}, reuse_engine=False)
    assert runner.run().counts.completed == 2

    started = [c for c in calls(fake_docker) if c[0] == "run"]
    assert len(started) == 2 and not serving_runs(fake_docker)
    assert all(c[:2] == ["run", "--rm"] and c[-2:] == ["/llem/config.json", "/llem/out"]
               for c in started)  # fmt: skip
    mounts = {c[c.index("-v") + 1] for c in started}
    assert mounts == {
        f"{(runner.study_dir / r.run_id).resolve()}:/llem" for r in runner.manifest.runs
    }


def test_resume_reruns_a_failed_run_of_a_group_in_a_fresh_container(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llenergymeasure.study.runner import StudyRunner

    monkeypatch.setenv("FAKE_CONTAINER_FAIL_AT", "002")
    runner = docker_study(
        tmp_path, monkeypatch, {"pytorch.batch_size": [1, 2, 3]}, reuse_engine=True
    )
    runner.run()
    assert [r.status for r in runner.manifest.runs] == ["completed", "failed", "completed"]

    monkeypatch.delenv("FAKE_CONTAINER_FAIL_AT")
    resumed = StudyRunner.resume(runner.study_dir, quiet=True)
    assert resumed.run().counts.completed == 3

    runs = resumed.manifest.runs
    assert [r.attempts for r in runs] == [1, 2, 1]
    assert len(serving_runs(fake_docker)) == 2  # the resumed session started one for run 2
    second_dir = runner.study_dir / runs[1].run_id
    assert not (second_dir / "out" / "error.json").exists()  # the failed attempt's is gone
    again = result_at(resumed, 2)
    assert not again.engine_reused and again.engine_loaded_by == runs[1].run_id


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_cli_study(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """``llem run`` of a three-run study (one engine group, reuse on) in its own process, its
    runs in the fake docker's containers (``env``: scripted misbehaviour)."""
    import yaml

    study = {**TINY, "name": "cli", "sweep": {"pytorch.batch_size": [1, 2, 3]}}
    study["execution"] = {"n_cycles": 1, "config_gap_seconds": 0, "cycle_gap_seconds": 0}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "llenergymeasure", "run", str(path), "-o", str(tmp_path / "out")]
    return subprocess.Popen(
        [*cmd, "--reuse-engine", "--quiet"],
        env={**os.environ, "LLEM_RUNNER_PYTORCH": "docker:img", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_run_2_is_sent(out: Path, proc: subprocess.Popen[str]) -> Path:
    """The study directory's run 2 is running and its request went to the container (its
    ``container.log`` exists); returns that log."""
    from llenergymeasure.study.manifest import StudyManifest

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for path in out.glob("*/study_manifest.json"):
            try:
                second = StudyManifest.model_validate_json(path.read_text()).runs[1]
            except ValueError:
                continue
            log = path.parent / second.run_id / "container.log"
            if second.status == "running" and log.is_file():
                return log
        time.sleep(0.05)
    raise AssertionError("run 2 never reached its container")


def test_ctrl_c_during_a_group_run_stops_its_container_and_resume_finishes_the_study(
    fake_docker: Path,
    fake_engine_in_container: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llenergymeasure.study.manifest import load_manifest
    from llenergymeasure.study.runner import StudyRunner

    proc = start_cli_study(tmp_path, FAKE_CONTAINER_HANG_AT="002")
    try:
        log = wait_until_run_2_is_sent(tmp_path / "out", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()

    assert proc.returncode == 130, err
    name = container_of(log.parent)
    assert ["kill", name] in calls(fake_docker)
    assert not pid_alive(int((tmp_path / "containers" / name).read_text()))
    study_dir = log.parent.parent
    manifest = load_manifest(study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "interrupted", "pending"]

    monkeypatch.setenv("LLEM_RUNNER_PYTORCH", "docker:img")
    assert StudyRunner.resume(study_dir, quiet=True).run().counts.completed == 3
    assert len(serving_runs(fake_docker)) == 2  # one per session


def test_a_container_whose_study_process_is_killed_ends_by_itself(
    fake_docker: Path, fake_engine_in_container: None, tmp_path: Path
) -> None:
    proc = start_cli_study(tmp_path, FAKE_CONTAINER_HANG_AT="002")
    try:
        log = wait_until_run_2_is_sent(tmp_path / "out", proc)
        proc.send_signal(signal.SIGKILL)  # nothing unwinds: no `docker kill` is sent
        proc.wait(10)
    finally:
        proc.kill()

    name = container_of(log.parent)
    pid = int((tmp_path / "containers" / name).read_text())
    deadline = time.monotonic() + 20  # the group process follows its parent, then stdin closes
    while pid_alive(pid):
        assert time.monotonic() < deadline, "the container outlived its study"
        time.sleep(0.1)
    assert ["kill", name] not in calls(fake_docker)


def test_the_serving_entry_point_measures_each_request_into_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llenergymeasure.harness import orchestrator
    from llenergymeasure.runners.container_entry import serve
    from llenergymeasure.testing.energy import FakeEnergyBackend
    from llenergymeasure.testing.engines import FakeEngine

    engine = FakeEngine(output_tokens=3, seconds_per_token=0.0)
    monkeypatch.setattr(orchestrator, "energy_backend_for", lambda s, sensor: FakeEnergyBackend())
    monkeypatch.setattr(
        orchestrator, "default_components", lambda c, s: (engine, FakeEnergyBackend(), None)
    )
    for run_id, batch in (("r1", 1), ("r2", 2), ("r3", 3)):
        (tmp_path / run_id).mkdir()
        config = ExperimentConfig.model_validate({**TINY, "pytorch": {"batch_size": batch}})
        (tmp_path / run_id / "config.json").write_text(config.model_dump_json())
    requests = [
        json.dumps({"run_id": "r1", "dir": "r1", "keep_engine": True}),
        json.dumps({"run_id": "r2", "dir": "../outside", "keep_engine": True}),
        json.dumps({"run_id": "r3", "dir": "r3", "keep_engine": True}),
        json.dumps({"stop": True}),
        json.dumps({"run_id": "never", "dir": "r1"}),
    ]
    replies: list[dict[str, Any]] = []

    assert serve(tmp_path, requests, replies.append) == 0

    final = [r for r in replies if "progress" not in r]
    assert [(r["run_id"], r["ok"]) for r in final] == [("r1", True), ("r2", False), ("r3", True)]
    assert final[1]["type"] == "ValueError" and not final[1]["fatal"]
    assert {r["run_id"] for r in replies if "progress" in r} == {"r1", "r3"}
    first = ExperimentResult.from_json(tmp_path / "r1" / "out" / "result.json")
    third = ExperimentResult.from_json(tmp_path / "r3" / "out" / "result.json")
    assert (first.engine_reused, first.engine_loaded_by) == (False, "r1")
    assert (third.engine_reused, third.engine_loaded_by) == (True, "r1")
    assert third.config.pytorch is not None and third.config.pytorch.batch_size == 3
    assert engine.loads == 1 and engine.unloaded  # unloaded when serving stopped
    assert not (tmp_path / "outside").exists()


def test_a_fatal_error_ends_serving_after_its_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llenergymeasure.harness.session import EngineSession
    from llenergymeasure.runners.container_entry import serve

    def measure(self: Any, config: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(EngineSession, "measure", measure)
    for run_id in ("r1", "r2"):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "config.json").write_text(
            ExperimentConfig.model_validate(TINY).model_dump_json()
        )
    requests = [json.dumps({"run_id": r, "dir": r}) for r in ("r1", "r2")]
    replies: list[dict[str, Any]] = []

    assert serve(tmp_path, requests, replies.append) == 1
    assert [(r["run_id"], r["fatal"]) for r in replies] == [("r1", True)]
    assert json.loads((tmp_path / "r1" / "out" / "error.json").read_text())["type"] == (
        "RuntimeError"
    )
