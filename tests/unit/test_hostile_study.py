"""Hostile studies: a lock that files cannot defeat, a folder that vanishes, results that do not
match their manifest, damaged manifests and their rebuild.

Runs go through the real spawn path with the fake workers of ``testing.study`` (a fraction of a
second each); the CLI case of a vanishing folder runs ``builtin:tiny`` for real.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hostile import LinkSwapWorker, tiny_yaml
from typer.testing import CliRunner

import llenergymeasure.rescue as rescue
from llenergymeasure.cli.app import EXIT_RESCUED, app
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError, MeasurementsRescued, StudyError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.lock import StudyLock
from llenergymeasure.study.manifest import load_manifest, manifest_path, write_manifest
from llenergymeasure.study.runner import StudyRunner, resume_study_dir
from llenergymeasure.testing.configs import tiny_experiment
from llenergymeasure.testing.study import ScriptedWorker

cli = CliRunner()


def make_study(n_cycles: int = 1, **extra: Any) -> StudyConfig:
    data = {
        "name": "hostile",
        **tiny_experiment(),
        "sweep": {"pytorch.batch_size": [1, 2]},
        "execution": {"n_cycles": n_cycles, "config_gap_seconds": 0, "cycle_gap_seconds": 0},
        **extra,
    }
    return StudyConfig.from_dict(data)


def finished_study(root: Path, **kwargs: Any) -> StudyRunner:
    runner = StudyRunner.create(make_study(**kwargs), root, worker=ScriptedWorker(), quiet=True)
    runner.run()
    return runner


@pytest.fixture
def rescue_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "rescue"
    monkeypatch.setenv(rescue.RESCUE_DIR_ENV, str(root))
    return root


# --- the lock --------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from llenergymeasure.study.runner import StudyLock
    lock = StudyLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_deleting_files_does_not_let_a_second_llem_resume_a_running_study(tmp_path: Path):
    runner = finished_study(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(runner.study_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for leftover in runner.study_dir.glob(".*"):  # whatever lock files there might be
            if leftover.is_file():
                leftover.unlink()
        result = cli.invoke(app, ["run", "--resume", str(runner.study_dir)])
        assert result.exit_code == 1, result.output
        assert "being run by another llem process" in result.output
    finally:
        holder.kill()
        holder.wait()
    assert cli.invoke(app, ["run", "--resume", str(runner.study_dir)]).exit_code == 0


def _no_directory_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``flock`` on a directory fail as on a filesystem without directory locks."""
    real = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOLCK, "no locks available")
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_without_directory_locks_a_deleted_lock_file_stops_the_study(tmp_path, monkeypatch):
    _no_directory_locks(monkeypatch)
    runner = finished_study(tmp_path)
    lock = StudyLock(runner.study_dir)
    lock.acquire()
    try:
        with pytest.raises(StudyError, match="being run by another"):
            StudyLock(runner.study_dir).acquire()
        (runner.study_dir / ".study.lock").unlink()
        with pytest.raises(StudyError, match="deleted or replaced"):
            lock.check()
    finally:
        lock.release()


# --- the study folder vanishes -----------------------------------------------------------------


def _delete_after_first_record(monkeypatch: pytest.MonkeyPatch) -> None:
    original = StudyRunner.record
    done: list[str] = []

    def record(self: StudyRunner, entry: Any, outcome: Any) -> None:
        original(self, entry, outcome)
        if not done:
            done.append(entry.run_id)
            shutil.rmtree(self.study_dir)

    monkeypatch.setattr(StudyRunner, "record", record)


def test_a_study_whose_folder_vanishes_stops_and_its_finished_results_are_rescued(
    tmp_path: Path, rescue_root: Path, monkeypatch
):
    _delete_after_first_record(monkeypatch)
    runner = StudyRunner.create(make_study(), tmp_path, worker=ScriptedWorker(), quiet=True)
    with pytest.raises(MeasurementsRescued, match="disappeared") as raised:
        runner.run()
    assert raised.value.exit_code == 3
    assert not runner.study_dir.exists(), "the vanished folder is not recreated"
    (rescued,) = list(rescue_root.iterdir())
    assert str(rescued) in raised.value.message
    manifest = load_manifest(rescued)
    assert [r.status for r in manifest.runs] == ["completed", "interrupted"]  # was starting
    assert ExperimentResult.from_json(rescued / manifest.runs[0].run_id / "result.json")
    monkeypatch.undo()
    result = resume_study_dir(rescued, worker=ScriptedWorker(), quiet=True)
    assert result.ok and result.counts.completed == 2


def test_llem_run_exits_3_naming_the_rescue_folder_when_the_study_folder_vanishes(
    tmp_path: Path, rescue_root: Path, monkeypatch, tiny_model_dir: Path
):
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tiny_model_dir.parent.parent))
    _delete_after_first_record(monkeypatch)
    study = tiny_yaml(
        tmp_path,
        "study.yaml",
        name="vanishing",
        sweep={"pytorch.batch_size": [1, 2]},
        execution={"n_cycles": 1},
    )
    out = tmp_path / "results"
    run = cli.invoke(app, ["run", str(study), "-o", str(out), "--no-gaps", "--quiet"])
    assert run.exit_code == EXIT_RESCUED, run.output
    assert "disappeared" in run.stderr and str(rescue_root) in run.stderr
    assert "llem run --resume" in run.stderr
    assert list(out.iterdir()) == []
    (rescued,) = list(rescue_root.iterdir())
    assert len(list(rescued.glob("*/result.json"))) == 1


def test_a_result_that_cannot_be_saved_in_its_run_folder_is_rescued_and_the_study_exits_3(
    tmp_path: Path, rescue_root: Path
):
    victim = tmp_path / "victim"
    victim.mkdir()
    worker = LinkSwapWorker(str(victim), frozenset({1}))
    runner = StudyRunner.create(make_study(), tmp_path / "results", worker=worker, quiet=True)
    result = runner.run()
    assert list(victim.iterdir()) == [], "nothing was written through the link"
    assert result.counts.completed == 2 and len(result.rescued) == 1
    from llenergymeasure.study.summary import format_study_summary, study_exit_code

    assert study_exit_code(result) == 3
    assert "rescued results" in format_study_summary(result, runner.manifest)
    entry = runner.manifest.runs[0]
    assert entry.rescued and "symbolic link" in entry.rescued
    assert Path(entry.result_path or "").is_file() and str(rescue_root) in (entry.result_path or "")
    summary = json.loads((runner.study_dir / "study_summary.json").read_text())
    assert summary["rescued"] == result.rescued
    # the manifest stays sound, and a resume keeps the rescued result
    again = resume_study_dir(runner.study_dir, worker=ScriptedWorker(), quiet=True)
    assert again.counts.completed == 2


# --- resume checks each result against its manifest entry ---------------------------------------


def test_resume_redoes_a_result_measured_with_another_config_and_keeps_it_aside(tmp_path, caplog):
    runner = finished_study(tmp_path)
    entry = runner.manifest.runs[0]
    path = runner.study_dir / entry.run_id / "result.json"
    data = json.loads(path.read_text())
    data["measurement_config_hash"] = "f" * 16  # a result of some other config
    path.write_text(json.dumps(data))
    result = StudyRunner.resume(runner.study_dir, worker=ScriptedWorker()).run()
    assert result.ok and result.counts.completed == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("f" * 16 in w and "will run again" in w for w in warned)
    aside = runner.study_dir / f"{entry.run_id}.set-aside-1"
    assert json.loads((aside / "result.json").read_text())["measurement_config_hash"] == "f" * 16
    after = load_manifest(runner.study_dir).runs[0]
    assert after.attempts == 2 and after.status == "completed"
    fresh = ExperimentResult.from_json(runner.study_dir / entry.run_id / "result.json")
    assert fresh.measurement_config_hash == entry.config_hash


def _killed_after_saving(runner: StudyRunner, index: int) -> Any:
    """The manifest as llem leaves it when killed between a run saving its result and the
    manifest recording it: the run still says running."""
    manifest = load_manifest(runner.study_dir)
    entry = manifest.runs[index]
    entry.status, entry.result_path, entry.finished_at = "running", None, None
    write_manifest(manifest, manifest_path(runner.study_dir))
    return entry


def test_resume_keeps_a_result_its_killed_attempt_had_already_saved(tmp_path, caplog):
    caplog.set_level("INFO", logger="llenergymeasure")
    runner = finished_study(tmp_path)
    entry = _killed_after_saving(runner, 1)
    saved = (runner.study_dir / entry.run_id / "result.json").read_bytes()
    result = StudyRunner.resume(runner.study_dir, worker=ScriptedWorker()).run()
    assert result.ok and result.counts.completed == 2
    assert "kept the result its interrupted attempt had already saved" in caplog.text
    after = load_manifest(runner.study_dir).runs[1]
    assert after.status == "completed" and after.attempts == entry.attempts  # not measured again
    assert (runner.study_dir / entry.run_id / "result.json").read_bytes() == saved


def test_resume_sets_aside_a_stray_result_of_another_config_before_running_again(tmp_path):
    runner = finished_study(tmp_path)
    entry = _killed_after_saving(runner, 1)
    path = runner.study_dir / entry.run_id / "result.json"
    data = json.loads(path.read_text())
    data["measurement_config_hash"] = "e" * 16
    path.write_text(json.dumps(data))
    result = resume_study_dir(runner.study_dir, worker=ScriptedWorker(), quiet=True)
    assert result.ok and result.counts.completed == 2
    aside = runner.study_dir / f"{entry.run_id}.set-aside-1" / "result.json"
    assert json.loads(aside.read_text())["measurement_config_hash"] == "e" * 16
    after = load_manifest(runner.study_dir).runs[1]
    assert after.attempts == entry.attempts + 1
    assert ExperimentResult.from_json(path).measurement_config_hash == entry.config_hash


def test_resume_redoes_an_unreadable_result_and_keeps_the_damaged_file(tmp_path):
    runner = finished_study(tmp_path)
    entry = runner.manifest.runs[1]
    path = runner.study_dir / entry.run_id / "result.json"
    path.write_bytes(path.read_bytes()[:50])  # truncated by a full disk
    result = resume_study_dir(runner.study_dir, worker=ScriptedWorker(), quiet=True)
    assert result.ok
    assert (runner.study_dir / f"{entry.run_id}.set-aside-1" / "result.json").stat().st_size == 50


# --- the manifest is validated on load --------------------------------------------------------


def _tamper(study_dir: Path, change) -> None:
    path = manifest_path(study_dir)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["runs"][1].update(run_id=d["runs"][0]["run_id"]), "appears twice"),
        (lambda d: d["runs"][0].update(config_index=7), "config_index 7 is out of range"),
        (lambda d: d["runs"][0].update(position=0), "position 0 is out of range"),
        (lambda d: d["runs"][1].update(position=1), "repeated"),
        (lambda d: d["runs"][0].update(cycle=9), "cycle 9 is out of range"),
        (lambda d: d["runs"][0].update(run_id="../../outside"), "not a plain folder name"),
        (lambda d: d["runs"][0].update(config_hash="0" * 16), "is not the hash of"),
        (lambda d: d["runs"][0].update(result_path="../../etc/x.json"), "leaves the study"),
    ],
)
def test_an_unsound_manifest_is_a_clear_error_that_says_how_to_rebuild(tmp_path, change, message):
    runner = finished_study(tmp_path)
    _tamper(runner.study_dir, change)
    with pytest.raises(ConfigError, match="not a sound study manifest") as raised:
        load_manifest(runner.study_dir)
    assert message in raised.value.message
    run = cli.invoke(app, ["run", "--resume", str(runner.study_dir)])
    assert run.exit_code == 2 and message in run.output and "--rebuild-manifest" in run.output


# --- a damaged manifest is rebuilt from the results ----------------------------------------------


def test_a_truncated_manifest_is_rebuilt_from_the_results_with_rebuild_manifest(tmp_path):
    runner = finished_study(tmp_path, n_cycles=2)
    path = manifest_path(runner.study_dir)
    damaged = path.read_bytes()[:300]
    path.write_bytes(damaged)
    refused = cli.invoke(app, ["run", "--resume", str(runner.study_dir)])
    assert refused.exit_code == 2 and "--rebuild-manifest" in refused.output

    run = cli.invoke(app, ["run", "--resume", str(runner.study_dir), "--rebuild-manifest"])
    assert run.exit_code == 0, run.output
    assert "rebuilt" in run.stderr and "4 of 4 runs completed" in run.stderr
    assert (runner.study_dir / "study_manifest.json.damaged-1").read_bytes() == damaged
    manifest = load_manifest(runner.study_dir)
    assert [r.run_id for r in manifest.runs] == [r.run_id for r in runner.manifest.runs]
    assert [r.cycle for r in manifest.runs] == [r.cycle for r in runner.manifest.runs]
    assert len(manifest.experiments) == 2
    summary = json.loads((runner.study_dir / "study_summary.json").read_text())
    assert summary["counts"]["completed"] == 4


def test_a_rebuild_with_the_study_file_plans_the_missing_runs_and_resume_runs_them(
    tmp_path: Path,
):
    study = make_study()
    runner = StudyRunner.create(
        study, tmp_path, worker=ScriptedWorker(fail_at=frozenset({2})), quiet=True
    )
    runner.run()
    manifest_path(runner.study_dir).write_text("{ not json")
    again = StudyRunner.rebuild(runner.study_dir, study=study, worker=ScriptedWorker(), quiet=True)
    assert [r.status for r in again.manifest.runs] == ["completed", "pending"]
    result = again.run()
    assert result.ok and result.counts.completed == 2


def test_rebuild_manifest_needs_resume(tmp_path: Path):
    run = cli.invoke(app, ["run", str(tiny_yaml(tmp_path)), "--rebuild-manifest"])
    assert run.exit_code == 2 and "--resume" in run.output
