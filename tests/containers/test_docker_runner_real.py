"""The Docker runner against a real container engine (``.ci/podman-up.sh``: podman behind a
``docker`` shim, an image with this checkout installed).

Skipped unless ``docker`` on PATH answers ``docker info`` and has the image named by
``LLEM_CONTAINER_IMAGE`` (default ``localhost/llem-test:latest``). CPU only: builtin:tiny, no
GPU flags take effect under podman. The fake-``docker`` tests in ``tests/unit/test_runners.py``
keep the argv details; these check what only a real engine can: the volume, exit codes and logs
crossing the container boundary, the kill by name, a study whose runs each get a container, and
an engine group (``--reuse-engine``) whose runs share one container that loads the engine once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ExperimentError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.runners import DockerRunner
from llenergymeasure.testing.configs import tiny_batch_study_yaml, tiny_experiment

pytestmark = pytest.mark.containers

# Read at import: the autouse fixture in tests/conftest.py clears LLEM_* before each test.
IMAGE = os.environ.get("LLEM_CONTAINER_IMAGE", "localhost/llem-test:latest")

TINY = tiny_experiment(precision="fp32", dataset={"n": 2, "input_len": 8, "output_len": 3})
STUDY = tiny_batch_study_yaml("in-containers")


def _engine_problem() -> str | None:
    """Why the container tests cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` on PATH (start podman with .ci/podman-up.sh, then . <dir>/env.sh)"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=60, check=False)
        image = subprocess.run(
            [docker, "image", "inspect", IMAGE], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`docker` does not answer ({type(e).__name__})"
    if info.returncode != 0:
        return "`docker info` fails: no container engine (see .ci/podman-up.sh)"
    if image.returncode != 0:
        return f"no image {IMAGE} (build it with .ci/podman-up.sh)"
    return None


@pytest.fixture(scope="module")
def engine() -> str:
    problem = _engine_problem()
    if problem is not None:
        pytest.skip(problem)
    return IMAGE


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handed into the container by name: builtin:tiny needs no download, nothing may try one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def container_names() -> set[str]:
    proc = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(proc.stdout.split())


def test_an_experiment_runs_in_a_container_and_its_result_comes_back(
    engine: str, offline: None, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    outcome = DockerRunner(engine).run(
        ExperimentConfig.model_validate(TINY), run_dir, timeout_s=300
    )
    assert outcome.result_path == run_dir / "out" / "result.json"
    assert outcome.result.config.model == "builtin:tiny"
    assert (outcome.result.config.n, outcome.result.config.precision) == (2, "fp32")
    assert outcome.result.n_requests == 2 and outcome.result.output_tokens > 0
    # Measured inside the container (its own hostname), not in this process.
    assert outcome.result.environment.hostname not in (None, socket.gethostname())
    log = (run_dir / "container.log").read_text()
    assert log.startswith("$ docker run --rm --name llem-") and engine in log.splitlines()[0]
    assert "HF_HUB_OFFLINE" in outcome.command
    # The container ran as a different process tree: its name is gone once it exited (--rm).
    assert not {n for n in container_names() if n in log.splitlines()[0]}


def test_a_failure_inside_the_container_is_reported_with_its_reason_and_log(
    engine: str, offline: None, tmp_path: Path
) -> None:
    missing = "/models/not-in-this-image"
    config = ExperimentConfig.model_validate({**TINY, "model": missing})
    run_dir = tmp_path / "run"
    with pytest.raises(ExperimentError) as err:
        DockerRunner(engine).run(config, run_dir, timeout_s=300)
    text = str(err.value)
    assert "exited with code 1" in text
    error = json.loads((run_dir / "out" / "error.json").read_text())
    assert f"{error['type']}: {error['message']}" in text
    assert missing in error["message"]
    log = run_dir / "container.log"
    assert f"log: {log}" in text
    assert "Traceback" in log.read_text()  # the container's stderr is kept
    assert not (run_dir / "out" / "result.json").exists()


# A run that cannot end within its 20 s timeout on any machine: one sequence at a time, each
# forced to its full 1,920 new tokens (64 + 1 + 1,920 fits the tiny model's 2,048 positions),
# after 1,000 warmup runs of the same: about 3.8 million sequential decode steps, each a whole
# forward pass (tens of ms of CPU here; even at 10 us it would take over 30 s). The container is
# still loading or generating when the timeout fires however fast the machine is. (400 prompts
# x 400 tokens in batches once finished inside the timeout on a fast runner.)
ENDLESS = {
    **TINY,
    "n": 1000,
    "dataset": {"n": 1000, "input_len": 64, "output_len": 1920},
    "decoder": {"ignore_eos": True},
    "pytorch": {"batch_size": 1},
    "warmup": {"n_warmup": 1000, "thermal_floor_seconds": 0},
}


def test_a_container_past_its_timeout_is_killed_by_name(
    engine: str, offline: None, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(ExperimentError) as err:
        DockerRunner(engine).run(ExperimentConfig.model_validate(ENDLESS), run_dir, timeout_s=20)
    text = str(err.value)
    match = re.search(r"container (llem-[0-9a-f]{12}) \(.*\) ran past 20 s and was killed", text)
    assert match, text
    name = match.group(1)
    deadline = time.monotonic() + 60
    while name in container_names():  # `--rm` removes it once the kill has landed
        assert time.monotonic() < deadline, f"container {name} still exists after the kill"
        time.sleep(1)
    assert time.monotonic() - started < 120
    assert not (run_dir / "out" / "result.json").exists()


def run_study_in_containers(
    engine: str, tmp_path: Path, *flags: str
) -> tuple[Path, list[Path], list[str]]:
    """``llem run`` of the two-run study with ``--runner docker:<engine>``; the study dir, its
    run dirs and the first line (the ``docker run`` command) of each run's container.log."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "llenergymeasure", "run", str(study), "-o", str(out)),
            *("--runner", f"docker:{engine}", *flags, "--no-gaps", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (study_dir,) = out.iterdir()
    run_dirs = sorted(p for p in study_dir.iterdir() if p.is_dir())
    assert len(run_dirs) == 2, run_dirs
    commands = [(d / "container.log").read_text().splitlines()[0] for d in run_dirs]
    return study_dir, run_dirs, commands


def container_name(command: str) -> str:
    return command.split("--name ")[1].split()[0]


def test_a_study_whose_backend_runs_in_containers(
    engine: str, offline: None, tmp_path: Path
) -> None:
    study_dir, run_dirs, commands = run_study_in_containers(engine, tmp_path)
    for run_dir, first in zip(run_dirs, commands, strict=True):
        assert (run_dir / "result.json").is_file()
        assert first.startswith("$ docker run --rm --name llem-") and engine in first
    assert len({container_name(c) for c in commands}) == 2  # one container per run
    assert (study_dir / "study_summary.json").is_file()


def test_an_engine_group_runs_in_one_container_that_loads_the_engine_once(
    engine: str, offline: None, tmp_path: Path
) -> None:
    _, run_dirs, commands = run_study_in_containers(engine, tmp_path, "--reuse-engine")
    names = {container_name(c) for c in commands}
    for run_dir, first in zip(run_dirs, commands, strict=True):
        assert first.startswith("$ docker run -i --rm --name llem-") and engine in first
        assert first.endswith("--serve /llem")
        assert (run_dir / "out" / "result.json").is_file()  # written inside the container
    assert len(names) == 1  # one container for the engine group
    first_result, second_result = (
        ExperimentResult.from_json(run_dir / "result.json") for run_dir in run_dirs
    )
    assert (first_result.engine_reused, first_result.engine_loaded_by) == (False, run_dirs[0].name)
    assert (second_result.engine_reused, second_result.engine_loaded_by) == (
        True,
        run_dirs[0].name,
    )
    assert second_result.timing.load_s == 0.0 and first_result.timing.load_s > 0
    assert [
        r.config.pytorch.batch_size for r in (first_result, second_result) if r.config.pytorch
    ] == [1, 2]
    # Measured inside the container, and the container is gone once the group is done (--rm).
    assert first_result.environment.hostname not in (None, socket.gethostname())
    assert not names & container_names()
