"""The slurm runner against fake ``sbatch``/``squeue``/``sacct``/``scontrol`` executables.

One small Python script is put first on PATH under every SLURM command name. It records its
argv, hands out job ids, and answers queries from a JSON "cluster state" file the test edits:
``{"<array>_<task>": [STATE, REASON]}``. A test plays the scheduler by writing that file and, for
a job that "ran", calling ``slurm_entry.main`` in-process with the fake measurement worker, which
writes the result and the job's status file exactly as a real job would.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.config.user_config import SlurmSection, load_user_config
from llenergymeasure.exceptions import StudyError
from llenergymeasure.runners import resolve_runner
from llenergymeasure.runners.slurm import (
    STATUS_NAME,
    SlurmClient,
    batch_script,
    format_time_limit,
    sbatch_command,
)
from llenergymeasure.study.manifest import load_manifest
from llenergymeasure.study.runner import StudyRunner
from llenergymeasure.study.slurm_entry import main as entry_main
from llenergymeasure.testing.configs import tiny_experiment
from llenergymeasure.testing.study import ScriptedWorker, fake_measure_worker

FAKE_SLURM = """#!{python}
import json, os, sys
from pathlib import Path

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
state_dir = Path(os.environ["FAKE_SLURM_DIR"])
with open(state_dir / "argv.jsonl", "a") as f:
    f.write(json.dumps([name, *args]) + "\\n")
jobs_file = state_dir / "jobs.json"
jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else {{}}
live = {{"PENDING", "RUNNING", "COMPLETING"}}
if name == "sbatch":
    counter = state_dir / "next_id"
    job = int(counter.read_text()) if counter.exists() else 4242
    counter.write_text(str(job + 1))
    print(f"{{job}};fakecluster")
elif name == "squeue":
    for job_id, (state, reason) in jobs.items():
        if state in live:
            print(f"{{job_id}}|{{state}}|{{reason}}")
elif name == "sacct":
    if os.environ.get("FAKE_SLURM_NO_ACCOUNTING"):
        print("Slurm accounting storage is disabled", file=sys.stderr)
        sys.exit(1)
    for job_id, (state, reason) in jobs.items():
        if state not in live:
            suffix = " by 0" if state == "CANCELLED" else ""
            print(f"{{job_id}}|{{state}}{{suffix}}|0:0|{{reason}}")
elif name == "scontrol":
    array = args[-1]
    found = False
    for job_id, (state, reason) in jobs.items():
        a, t = job_id.split("_")
        if a == array:
            found = True
            print(f"JobId=9{{t}} ArrayJobId={{a}} ArrayTaskId={{t}} JobState={{state}} "
                  f"Reason={{reason}} ExitCode=0:15")
    if not found:
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        sys.exit(1)
"""

BASE: dict[str, Any] = tiny_experiment()


def two_run_study(**execution: Any) -> StudyConfig:
    execution = {"config_gap_seconds": 0, "cycle_gap_seconds": 0, **execution}
    data = {"name": "slurm-study", **BASE, "sweep": {"pytorch.batch_size": [1, 2]}}
    return StudyConfig.from_dict({**data, "execution": execution})


class FakeCluster:
    """The fake SLURM commands' shared state."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def set(self, **states: tuple[str, str]) -> None:
        """Job states, e.g. ``set(**{"4242_0": ("COMPLETED", "None")})``."""
        path = self.root / "jobs.json"
        jobs = json.loads(path.read_text()) if path.exists() else {}
        jobs.update(states)
        path.write_text(json.dumps(jobs))

    def calls(self, name: str | None = None) -> list[list[str]]:
        path = self.root / "argv.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        argvs = [json.loads(line) for line in lines]
        return [a for a in argvs if name is None or a[0] == name]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "fake_slurm.py"
    script.write_text(FAKE_SLURM.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    for name in ("sbatch", "squeue", "sacct", "scontrol", "scancel"):
        (bin_dir / name).symlink_to(script)
    state = tmp_path / "cluster"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    config = tmp_path / "user-config.yaml"
    config.write_text(
        "slurm:\n  partition: debug\n  gpus_per_run: 0\n  poll_interval_seconds: 0.01\n"
    )
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    return FakeCluster(state)


def run_job(study_dir: Path, position: int, job_id: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """What a SLURM job does: slurm_entry in the job's environment (fake measurement)."""
    array, task = job_id.split("_")
    with monkeypatch.context() as m:
        m.setenv("SLURM_ARRAY_JOB_ID", array)
        m.setenv("SLURM_ARRAY_TASK_ID", task)
        return entry_main([str(study_dir), str(position)], worker=fake_measure_worker)


def scheduler(steps: list[Callable[[], None]]) -> Callable[[float], None]:
    """A ``sleep`` for the runner that plays one scheduler step per poll."""
    pending = list(steps)

    def sleep(_: float) -> None:
        if pending:
            pending.pop(0)()

    return sleep


# --- command lines ------------------------------------------------------------------------------


def test_sbatch_submits_one_job_array_with_the_user_configs_slurm_settings(tmp_path):
    settings = SlurmSection(
        partition="gpu",
        account="proj42",
        qos="short",
        gpus_per_run=1,
        array_limit=4,
        extra_args=["--exclusive"],
    )
    cmd = sbatch_command(
        tmp_path / "submit_001.sh",
        n_tasks=6,
        settings=settings,
        job_name="llem-s",
        log_dir=tmp_path,
        timeout_seconds=90,
    )
    assert cmd[0] == "sbatch" and cmd[-1] == str(tmp_path / "submit_001.sh")
    for option in (
        "--parsable",
        "--array=0-5%4",
        "--partition=gpu",
        "--account=proj42",
        "--qos=short",
        "--gres=gpu:1",
        "--time=0-00:02:00",
        "--exclusive",
        f"--output={tmp_path / '%A_%a.log'}",
    ):
        assert option in cmd


def test_no_gpu_request_when_gpus_per_run_is_0_and_time_limit_from_user_config(tmp_path):
    settings = SlurmSection(gpus_per_run=0, time_limit="01:30:00")
    cmd = sbatch_command(
        tmp_path / "s.sh", n_tasks=2, settings=settings, job_name="j", log_dir=tmp_path
    )
    assert not any(c.startswith("--gres") for c in cmd)
    assert "--time=01:30:00" in cmd and "--array=0-1" in cmd
    assert not any(c.startswith(("--partition", "--account", "--qos")) for c in cmd)


def test_the_studys_experiment_timeout_wins_over_the_user_configs_time_limit(tmp_path):
    settings = SlurmSection(time_limit="10:00:00")
    cmd = sbatch_command(
        tmp_path / "s.sh",
        n_tasks=1,
        settings=settings,
        job_name="j",
        log_dir=tmp_path,
        timeout_seconds=3601,
    )
    assert "--time=0-01:01:00" in cmd and "--time=10:00:00" not in cmd


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(1, "0-00:01:00"), (60, "0-00:01:00"), (61, "0-00:02:00"), (90000, "1-01:00:00")],
)
def test_time_limits_round_up_to_whole_minutes(seconds, expected):
    assert format_time_limit(seconds) == expected


def test_the_batch_script_maps_each_array_task_to_its_run_and_attempt(tmp_path):
    text = batch_script(tmp_path / "my study", [2, 5], [1, 3], "/opt/venv/bin/python")
    assert text.startswith("#!/bin/bash\n")
    assert "POSITIONS=(2 5)" in text and "ATTEMPTS=(1 3)" in text
    assert (
        f"exec /opt/venv/bin/python -m llenergymeasure.study.slurm_entry '{tmp_path}/my study'"
        in text
    )
    assert '"${POSITIONS[$TASK]}" "${ATTEMPTS[$TASK]}"' in text


def test_squeue_and_sacct_are_called_with_the_array_ids(cluster):
    cluster.set(**{"7_0": ("RUNNING", "None"), "7_1": ("TIMEOUT", "TimeLimit")})
    client = SlurmClient()
    live = client.live(["7"])
    done = client.finished(["7"])
    assert set(live) == {"7_0"} and live["7_0"].state == "RUNNING"
    assert done["7_1"].state == "TIMEOUT" and done["7_1"].reason == "TimeLimit"
    squeue, sacct = cluster.calls("squeue")[0], cluster.calls("sacct")[0]
    assert squeue[squeue.index("-j") + 1] == "7" and "-r" in squeue
    assert "-X" in sacct and sacct[sacct.index("-j") + 1] == "7"


def test_without_accounting_storage_scontrol_gives_the_final_states(cluster, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")
    cluster.set(**{"7_0": ("CANCELLED", "None"), "7_1": ("COMPLETED", "None")})
    done = SlurmClient().finished(["7"])
    assert {k: v.state for k, v in done.items()} == {"7_0": "CANCELLED", "7_1": "COMPLETED"}
    assert cluster.calls("scontrol")[0][1:] == ["show", "job", "-o", "7"]


# --- studies -----------------------------------------------------------------------------------


def test_a_study_on_slurm_submits_every_run_as_one_array_and_collects_results(
    cluster, tmp_path, monkeypatch
):
    holder: dict[str, StudyRunner] = {}

    def jobs_run() -> None:
        cluster.set(**{"4242_0": ("RUNNING", "None"), "4242_1": ("PENDING", "Priority")})

    def jobs_end() -> None:
        study_dir = holder["runner"].study_dir
        assert run_job(study_dir, 1, "4242_0", monkeypatch) == 0
        assert run_job(study_dir, 2, "4242_1", monkeypatch) == 0
        cluster.set(**{"4242_0": ("COMPLETED", "None"), "4242_1": ("COMPLETED", "None")})

    runner = StudyRunner.create(
        two_run_study(),
        tmp_path / "results",
        runner="slurm",
        quiet=True,
        sleep=scheduler([jobs_run, jobs_end]),
    )
    holder["runner"] = runner
    result = runner.run()

    assert len(cluster.calls("sbatch")) == 1
    sbatch = cluster.calls("sbatch")[0]
    assert "--array=0-1" in sbatch and "--partition=debug" in sbatch
    script = Path(sbatch[-1])
    assert script.parent == runner.study_dir / "slurm" and "POSITIONS=(1 2)" in script.read_text()
    manifest = load_manifest(runner.study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "completed"]
    assert [r.slurm_job_id for r in manifest.runs] == ["4242_0", "4242_1"]
    assert [r.slurm_state for r in manifest.runs] == ["COMPLETED", "COMPLETED"]
    assert result.counts.completed == 2 and len(result.results) == 2
    for run in manifest.runs:
        assert (runner.study_dir / str(run.result_path)).is_file()


@pytest.mark.parametrize("state", ["CANCELLED", "TIMEOUT", "FAILED", "OUT_OF_MEMORY", "NODE_FAIL"])
def test_a_job_that_ends_badly_fails_its_run_with_slurms_state_and_reason(cluster, tmp_path, state):
    def end() -> None:
        cluster.set(**{"4242_0": (state, "SomeReason"), "4242_1": (state, "SomeReason")})

    runner = StudyRunner.create(
        two_run_study(), tmp_path / "r", runner="slurm", quiet=True, sleep=scheduler([end])
    )
    runner.run()
    manifest = load_manifest(runner.study_dir)
    for run in manifest.runs:
        assert run.status == "failed"
        assert run.slurm_state == state
        assert run.error is not None and run.error.type == state
        assert "SomeReason" in run.error.message and run.slurm_job_id in run.error.message
        assert run.slurm_jobs[-1].state == state


def test_a_python_exception_in_the_job_is_reported_with_its_type(cluster, tmp_path, monkeypatch):
    holder: dict[str, StudyRunner] = {}

    def end() -> None:
        study_dir = holder["runner"].study_dir
        with monkeypatch.context() as m:
            m.setenv("SLURM_ARRAY_JOB_ID", "4242")
            for task, position in ((0, 1), (1, 2)):
                m.setenv("SLURM_ARRAY_TASK_ID", str(task))
                code = entry_main(
                    [str(study_dir), str(position)], worker=ScriptedWorker(fail_at=frozenset({1}))
                )
                assert code == (1 if position == 1 else 0)
        cluster.set(**{"4242_0": ("FAILED", "NonZeroExitCode"), "4242_1": ("COMPLETED", "None")})

    runner = StudyRunner.create(
        two_run_study(), tmp_path / "r", runner="slurm", quiet=True, sleep=scheduler([end])
    )
    holder["runner"] = runner
    runner.run()
    first, second = load_manifest(runner.study_dir).runs
    assert first.status == "failed" and first.error is not None
    assert first.error.type == "ValueError" and "scripted failure" in first.error.message
    assert second.status == "completed"


def test_detach_submits_and_returns_and_resume_collects_and_resubmits_the_failed_run(
    cluster, tmp_path, monkeypatch
):
    def never(_: float) -> None:
        raise AssertionError("a detached study must not wait")

    runner = StudyRunner.create(
        two_run_study(), tmp_path / "r", runner="slurm", quiet=True, detach=True, sleep=never
    )
    runner.run()
    study_dir = runner.study_dir
    manifest = load_manifest(study_dir)
    assert [r.status for r in manifest.runs] == ["running", "running"]
    assert [r.slurm_job_id for r in manifest.runs] == ["4242_0", "4242_1"]
    assert manifest.sessions[-1].outcome == "detached"

    # The scheduler ran job 0; job 1 was cancelled.
    assert run_job(study_dir, 1, "4242_0", monkeypatch) == 0
    cluster.set(**{"4242_0": ("COMPLETED", "None"), "4242_1": ("CANCELLED", "None")})

    def resubmitted_job_runs() -> None:
        assert run_job(study_dir, 2, "4243_0", monkeypatch) == 0
        cluster.set(**{"4243_0": ("COMPLETED", "None")})

    resumed = StudyRunner.resume(study_dir, quiet=True, sleep=scheduler([resubmitted_job_runs]))
    resumed.run()
    sbatches = cluster.calls("sbatch")
    assert len(sbatches) == 2 and "--array=0-0" in sbatches[1]
    assert "POSITIONS=(2)" in Path(sbatches[1][-1]).read_text()
    first, second = load_manifest(study_dir).runs
    assert first.status == "completed" and first.attempts == 1
    assert second.status == "completed" and second.attempts == 2
    assert [(j.job_id, j.state) for j in second.slurm_jobs] == [
        ("4242_1", "CANCELLED"),
        ("4243_0", "COMPLETED"),
    ]


def test_a_job_slurm_no_longer_knows_and_that_never_started_is_recorded_cancelled(
    cluster, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")
    runner = StudyRunner.create(
        two_run_study(), tmp_path / "r", runner="slurm", quiet=True, detach=True
    )
    runner.run()
    study_dir = runner.study_dir
    assert run_job(study_dir, 1, "4242_0", monkeypatch) == 0
    cluster.set(**{"4242_0": ("COMPLETED", "None")})  # 4242_1 vanished (cancelled pending)
    resumed = StudyRunner.resume(study_dir, quiet=True, detach=True)
    resumed.run()
    first, second = load_manifest(study_dir).runs
    assert first.status == "completed"
    assert second.slurm_jobs[0].state == "CANCELLED"
    assert second.slurm_jobs[0].reason == "left the queue without starting"
    assert second.status == "running" and second.slurm_job_id == "4243_0"  # resubmitted


def test_a_stale_result_of_an_earlier_attempt_is_removed_before_resubmitting(
    cluster, tmp_path, monkeypatch
):
    runner = StudyRunner.create(
        two_run_study(), tmp_path / "r", runner="slurm", quiet=True, detach=True
    )
    runner.run()
    study_dir = runner.study_dir
    run_dir = study_dir / runner.manifest.runs[1].run_id
    assert run_job(study_dir, 2, "4242_1", monkeypatch) == 0
    cluster.set(**{"4242_0": ("TIMEOUT", "TimeLimit"), "4242_1": ("NODE_FAIL", "None")})
    StudyRunner.resume(study_dir, quiet=True, detach=True).run()
    assert not (run_dir / "result.json").exists() and not (run_dir / STATUS_NAME).exists()
    assert load_manifest(study_dir).runs[1].slurm_jobs[0].state == "NODE_FAIL"


def test_sbatch_failure_is_a_study_error_naming_sbatchs_message(cluster, tmp_path):
    bad = tmp_path / "fake-bin" / "sbatch"
    bad.unlink()
    bad.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: debug' >&2\nexit 1\n"
    )
    bad.chmod(0o755)
    runner = StudyRunner.create(two_run_study(), tmp_path / "r", runner="slurm", quiet=True)
    with pytest.raises(StudyError, match="invalid partition"):
        runner.run()


# --- selection ---------------------------------------------------------------------------------


def test_the_slurm_runner_is_selected_by_env_user_config_or_flag(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("runners:\n  pytorch: slurm\nslurm:\n  account: proj\n")
    assert resolve_runner("pytorch", user_config=config).kind == "slurm"
    assert load_user_config(config).slurm.account == "proj"
    assert load_user_config(config).slurm.gpus_per_run == 1
    monkeypatch.setenv("LLEM_RUNNER_PYTORCH", "slurm")
    assert resolve_runner("pytorch").kind == "slurm"
    runner = StudyRunner.create(two_run_study(), tmp_path / "a", quiet=True)
    assert runner.runner_kind() == "slurm"
    monkeypatch.delenv("LLEM_RUNNER_PYTORCH")
    assert StudyRunner.create(two_run_study(), tmp_path / "b", quiet=True).runner_kind() == "local"
    flagged = StudyRunner.create(two_run_study(), tmp_path / "c", quiet=True, runner="slurm")
    assert flagged.runner_kind() == "slurm"
    assert load_manifest(flagged.study_dir).runner == "slurm"


def test_a_study_mixing_slurm_and_local_backends_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_RUNNER_PYTORCH", "slurm")
    data = {
        "name": "mixed",
        **BASE,
        "experiments": [{"backend": "pytorch"}, {"backend": "vllm", "pytorch": None}],
    }
    try:
        study = StudyConfig.from_dict(data)
    except Exception:  # pragma: no cover - the grammar may reject this shape
        pytest.skip("cannot build a two-backend study here")
    if len({c.backend for c in study.experiments}) < 2:
        pytest.skip("the study did not keep both backends")
    runner = StudyRunner.create(study, tmp_path, quiet=True)
    with pytest.raises(StudyError, match="entirely on SLURM"):
        runner.runner_kind()


def test_cli_runner_slurm_detach_submits_and_prints_how_to_collect(cluster, write_yaml, tmp_path):
    path = write_yaml(
        "name: cli-slurm\nmodel: builtin:tiny\nbackend: pytorch\nn: 2\n"
        "dataset: {n: 2, input_len: 8, output_len: 4}\n"
        "warmup: {n_warmup: 0, thermal_floor_seconds: 0}\nbaseline: {enabled: false}\n"
        "sweep: {pytorch.batch_size: [1, 2]}\nexecution: {n_cycles: 1}\n",
        "study.yaml",
    )
    out = tmp_path / "results"
    res = CliRunner().invoke(
        app, ["run", str(path), "-o", str(out), "--runner", "slurm", "--detach", "--no-gaps"]
    )
    assert res.exit_code == 0, res.output
    assert "llem run --resume" in res.stdout
    (study_dir,) = out.iterdir()
    manifest = load_manifest(study_dir)
    assert manifest.runner == "slurm"
    assert [r.slurm_job_id for r in manifest.runs] == ["4242_0", "4242_1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runner", "nonsense"], "not a runner"),
        (["--detach"], "--detach needs the slurm runner"),
    ],
)
def test_cli_rejects_a_bad_runner_and_detach_without_slurm(write_yaml, tmp_path, args, message):
    path = write_yaml(
        "name: s\nmodel: builtin:tiny\nbackend: pytorch\nn: 2\n"
        "sweep: {pytorch.batch_size: [1, 2]}\nexecution: {n_cycles: 1}\n",
        "study.yaml",
    )
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["run", str(path), "-o", str(out), *args])
    assert res.exit_code == 2  # usage errors, found before any study directory exists
    assert message in res.output
    assert not out.exists() or list(out.iterdir()) == []


# --- the job's entry point ---------------------------------------------------------------------


def test_slurm_entry_measures_the_run_and_writes_result_and_status(tmp_path, monkeypatch):
    runner = StudyRunner.create(two_run_study(), tmp_path, quiet=True)
    assert run_job(runner.study_dir, 2, "11_1", monkeypatch) == 0
    run_dir = runner.study_dir / runner.manifest.runs[1].run_id
    assert (run_dir / "result.json").is_file()
    status = json.loads((run_dir / STATUS_NAME).read_text())
    assert status["state"] == "COMPLETED" and status["job_id"] == "11_1"
    assert load_manifest(runner.study_dir).runs[1].status == "pending"  # the job never writes it


def test_slurm_entry_rejects_an_unknown_position(tmp_path):
    runner = StudyRunner.create(two_run_study(), tmp_path, quiet=True)
    assert entry_main([str(runner.study_dir), "9"], worker=fake_measure_worker) == 2
