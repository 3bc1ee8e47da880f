"""The slurm runner against a real one-node SLURM cluster (``.ci/slurm-up.sh``).

Skipped unless ``sinfo`` answers (``SLURM_CONF`` from the environment, else the file that
``.ci/slurm-up.sh`` writes). builtin:tiny on CPU; the test cluster has no accounting storage, so
final states come from ``scontrol show job`` and the jobs' status files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llenergymeasure.runners.slurm import slurm_settings
from llenergymeasure.study.manifest import StudyManifest, load_manifest
from llenergymeasure.study.runner import StudyRunner
from llenergymeasure.study.slurm_executor import SlurmStudyExecutor
from llenergymeasure.testing.configs import tiny_batch_study_yaml

pytestmark = pytest.mark.slurm

DEFAULT_CONF = Path(os.environ.get("LLEM_SLURM_DIR", "/tmp/llem-slurm")) / "slurm.conf"
STUDY = tiny_batch_study_yaml("slurm-e2e")


def _slurm_conf() -> str | None:
    conf = os.environ.get("SLURM_CONF") or (str(DEFAULT_CONF) if DEFAULT_CONF.is_file() else None)
    if conf is None or shutil.which("sinfo") is None:
        return None
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return conf if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.fixture
def slurm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    conf = _slurm_conf()
    if conf is None:
        pytest.skip("no SLURM cluster (start one with .ci/slurm-up.sh)")
    config = tmp_path / "user-config.yaml"
    config.write_text(
        "slurm:\n  gpus_per_run: 0\n  poll_interval_seconds: 1\n  array_limit: 1\n"
        "measurement:\n  energy_backend: none\n"
    )
    monkeypatch.setenv("SLURM_CONF", conf)
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    return {**os.environ, "SLURM_CONF": conf, "LLEM_CONFIG": str(config)}


def llem(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "llem"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scontrol(env: dict[str, str], job: str) -> str:
    proc = subprocess.run(
        ["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True
    )
    return proc.stdout


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_jobs_run_through_the_scheduler_a_cancelled_one_fails_and_resume_completes_it(
    slurm_env, tmp_path
):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    out = tmp_path / "results"
    first = llem(
        slurm_env, "run", str(study), "-o", str(out), "--runner", "slurm", "--detach", "--no-gaps"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    (study_dir,) = out.iterdir()
    manifest: StudyManifest = load_manifest(study_dir)
    job0, job1 = (str(r.slurm_job_id) for r in manifest.runs)
    array = job0.split("_")[0]
    assert job1 == f"{array}_1"

    # The array is in SLURM's queue; with array_limit 1 the second task waits: cancel it.
    queue = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", array],
        env=slurm_env,
        capture_output=True,
        text=True,
    ).stdout
    assert job1 in queue
    subprocess.run(["scancel", job1], env=slurm_env, check=True)

    wait_until(lambda: "JobState=COMPLETED" in scontrol(slurm_env, array), 240, f"{job0} done")
    runner = StudyRunner.resume(study_dir, quiet=True)
    SlurmStudyExecutor(runner, settings=slurm_settings()).collect(final=True)
    done, cancelled = load_manifest(study_dir).runs
    assert done.status == "completed", done.error
    assert (study_dir / str(done.result_path)).is_file()
    assert cancelled.status == "failed" and cancelled.slurm_state == "CANCELLED"

    resumed = llem(slurm_env, "run", "--resume", str(study_dir), "--no-gaps")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done, again = load_manifest(study_dir).runs
    assert done.attempts == 1 and again.status == "completed" and again.attempts == 2
    assert [j.state for j in again.slurm_jobs] == ["CANCELLED", "COMPLETED"]
    assert (study_dir / str(again.result_path)).is_file()
    new_array = str(again.slurm_job_id).split("_")[0]
    assert "JobState=COMPLETED" in scontrol(slurm_env, new_array)
    assert (study_dir / "study_summary.json").is_file()
