"""Hostile files: links, inputs as outputs, full and read-only disks, folders that vanish.

Every case asserts the exit code, the message, and that nothing finished was lost (the result
is where asked or in the rescue folder the output names) and nothing outside was touched. Real
runs use ``builtin:tiny`` on CPU (2 prompts of 4 tokens); a full disk is a real tmpfs and a
read-only one a real read-only bind mount where the machine allows it (root), else skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from hostile import fill, make_read_only, small_tmpfs, tiny_yaml, undo_mounts
from typer.testing import CliRunner

import llenergymeasure.files as files
import llenergymeasure.rescue as rescue
from llenergymeasure.cli.app import EXIT_ENVIRONMENT, EXIT_RESCUED, app, explain_error
from llenergymeasure.config.loading import read_yaml_mapping
from llenergymeasure.exceptions import EnvironmentProblem, UnsafeWriteError
from llenergymeasure.files import write_json, write_text
from llenergymeasure.rescue import save_files
from llenergymeasure.results.models import ExperimentResult

cli = CliRunner()


@pytest.fixture
def shared_tiny(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs reuse the session's built ``builtin:tiny`` instead of building their own."""
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tiny_model_dir.parent.parent))


@pytest.fixture
def rescue_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "rescue"
    monkeypatch.setenv(rescue.RESCUE_DIR_ENV, str(root))
    return root


def rescued_results(root: Path) -> list[ExperimentResult]:
    return [ExperimentResult.from_json(p) for p in sorted(root.glob("*/result.json"))]


def measure_then(action):
    """A ``measure`` that really measures, then does ``action()`` before the result is saved."""
    from llenergymeasure.harness.measure import measure as real_measure

    def measure(*args, **kwargs):
        measured = real_measure(*args, **kwargs)
        action()
        return measured

    return measure


# --- the write path itself ---------------------------------------------------------------


def test_a_destination_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").symlink_to(outside)
    with pytest.raises(UnsafeWriteError, match="symbolic link"):
        write_text(tmp_path / "out" / "report.html", "<html>")
    assert outside.read_text() == "precious"


def test_a_link_below_the_chosen_folder_is_refused(tmp_path: Path):
    base, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    base.mkdir()
    elsewhere.mkdir()
    (base / "run_1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeWriteError, match="symbolic link"):
        write_json(base / "run_1" / "result.json", {"a": 1}, base=base)
    assert list(elsewhere.iterdir()) == []


def test_the_chosen_folder_itself_may_be_a_link(tmp_path: Path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "results").symlink_to(scratch, target_is_directory=True)
    write_json(tmp_path / "results" / "run_1" / "x.json", {"a": 1}, base=tmp_path / "results")
    assert json.loads((scratch / "run_1" / "x.json").read_text()) == {"a": 1}


def test_a_write_never_recreates_a_chosen_folder_that_vanished(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_json(tmp_path / "gone" / "run" / "x.json", {}, base=tmp_path / "gone")
    assert not (tmp_path / "gone").exists()


def test_the_config_file_this_command_read_is_never_written_over(tmp_path: Path):
    config = tiny_yaml(tmp_path)
    before = config.read_bytes()
    read_yaml_mapping(config)
    with pytest.raises(UnsafeWriteError, match="which this command reads"):
        write_text(config, "overwritten")
    assert config.read_bytes() == before


def test_the_dataset_this_command_read_is_never_written_over(tmp_path: Path):
    from llenergymeasure.datasets.jsonl import read_jsonl_prompts

    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"prompt": "a"}\n')
    read_jsonl_prompts(dataset)
    with pytest.raises(UnsafeWriteError, match="which this command reads"):
        write_json(dataset, {"x": 1})
    assert dataset.read_text() == '{"prompt": "a"}\n'


def _result_json(experiment_id: str) -> dict:
    return {"experiment_id": experiment_id, "measurement_config_hash": "0" * 16, "x": 1}


def test_a_measurement_is_never_replaced_by_anything_else(tmp_path: Path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result_json("abc")))  # written by another process
    before = path.read_bytes()
    with pytest.raises(UnsafeWriteError, match="experiment result abc"):
        write_text(path, "<html>report</html>")
    with pytest.raises(UnsafeWriteError, match="experiment result abc"):
        write_json(path, _result_json("other-run"))
    assert path.read_bytes() == before
    write_json(path, {**_result_json("abc"), "x": 2})  # the same measurement, rewritten
    assert json.loads(path.read_text())["x"] == 2


def test_another_studys_manifest_is_never_replaced(tmp_path: Path):
    path = tmp_path / "study_manifest.json"
    mine = {"study_design_hash": "a" * 16, "created_at": "2026-01-01T00:00:00Z", "runs": []}
    path.write_text(json.dumps(mine))
    with pytest.raises(UnsafeWriteError, match="study manifest"):
        write_json(path, {**mine, "created_at": "2026-02-02T00:00:00Z"})
    write_json(path, {**mine, "runs": [{"run_id": "001"}]})  # the same study, a new state
    assert json.loads(path.read_text())["runs"] == [{"run_id": "001"}]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "summary.txt"
    path.write_text("old")

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_write_fd", disk_full)
    with pytest.raises(OSError) as raised:
        write_text(path, "new")
    assert raised.value.errno == errno.ENOSPC
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]


def test_a_real_full_disk_is_enospc_explained_with_a_hint(tmp_path: Path):
    with small_tmpfs(tmp_path / "disk") as disk:
        fill(disk, leave_bytes=1024)
        with pytest.raises(OSError) as raised:
            write_text(disk / "big.txt", "x" * 200_000)
        assert not list(disk.glob(".*.tmp")), "the partial temp file is removed"
    problem = explain_error(raised.value)
    assert isinstance(problem, EnvironmentProblem) and problem.exit_code == EXIT_ENVIRONMENT
    assert "no space left" in problem.message and problem.hint


def test_save_files_rescues_to_the_next_root_that_works(tmp_path: Path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(rescue.RESCUE_DIR_ENV, str(blocker / "rescue"))  # unusable: ENOTDIR
    target = tmp_path / "gone" / "run_1"
    saved = save_files(
        target,
        {"result.json": lambda p, b: write_json(p, _result_json("r1"), base=b)},
        base=tmp_path / "gone",
    )
    assert saved.rescued and saved.rescued_from == target
    assert "no such file or directory" in (saved.reason or "")
    data_root = Path(os.environ["XDG_DATA_HOME"]) / "llenergymeasure" / "rescued"
    assert saved.directory.parent == data_root
    assert json.loads((saved.directory / "result.json").read_text())["experiment_id"] == "r1"


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "not permitted"),
        (errno.ENOTDIR, "not a directory"),
        (errno.EISDIR, "is a directory"),
        (errno.ENOENT, "moved or deleted"),
        (errno.EIO, "input/output"),
    ],
)
def test_every_environment_errno_gets_a_message_a_hint_and_exit_4(code: int, words: str):
    error = OSError(code, os.strerror(code), "/some/where")
    wrapped = RuntimeError("library failed")
    wrapped.__cause__ = error  # found through the cause chain too
    for exc in (error, wrapped):
        problem = explain_error(exc)
        assert isinstance(problem, EnvironmentProblem)
        assert problem.exit_code == 4 and words in problem.message and problem.hint
        assert "/some/where" in problem.message


# --- real runs: nothing finished is lost ---------------------------------------------------


def _run(config: Path, out: Path, *extra: str):
    return cli.invoke(app, ["run", str(config), "-o", str(out), *extra])


def _assert_rescued(run, rescue_root: Path, where: Path) -> ExperimentResult:
    assert run.exit_code == EXIT_RESCUED, run.output
    assert "RESCUED" in run.stdout and str(where) in run.stdout
    (result,) = rescued_results(rescue_root)
    assert result.n_requests == 2 and result.output_tokens > 0  # the measurement itself
    assert result.output_dir is not None and result.output_dir in run.stdout
    return result


def test_a_full_results_disk_saves_the_measurement_to_the_rescue_folder(
    tmp_path: Path, shared_tiny, rescue_root: Path
):
    config = tiny_yaml(tmp_path)
    with small_tmpfs(tmp_path / "disk") as disk:
        fill(disk, leave_bytes=2048)
        run = _run(config, disk)
        assert not list(disk.glob("*/result.json"))
    _assert_rescued(run, rescue_root, disk)
    assert "no space left" in run.stdout


def test_a_results_folder_made_read_only_mid_run_loses_nothing(
    tmp_path: Path, shared_tiny, rescue_root: Path, monkeypatch
):
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setattr(
        "llenergymeasure.harness.measure.measure", measure_then(lambda: make_read_only(out))
    )
    try:
        run = _run(tiny_yaml(tmp_path), out)
    finally:
        undo_mounts(out)
    _assert_rescued(run, rescue_root, out)
    assert "read-only" in run.stdout


def test_a_results_folder_deleted_mid_run_is_not_recreated_and_nothing_is_lost(
    tmp_path: Path, shared_tiny, rescue_root: Path, monkeypatch
):
    out = tmp_path / "results"
    monkeypatch.setattr(
        "llenergymeasure.harness.measure.measure", measure_then(lambda: shutil.rmtree(out))
    )
    run = _run(tiny_yaml(tmp_path), out)
    _assert_rescued(run, rescue_root, out)
    assert not out.exists(), "the vanished folder is not silently recreated"


def test_a_results_folder_replaced_by_a_file_mid_run_loses_nothing(
    tmp_path: Path, shared_tiny, rescue_root: Path, monkeypatch
):
    out = tmp_path / "results"

    def replace() -> None:
        shutil.rmtree(out)
        out.write_text("a file now")

    monkeypatch.setattr("llenergymeasure.harness.measure.measure", measure_then(replace))
    run = _run(tiny_yaml(tmp_path), out)
    _assert_rescued(run, rescue_root, out)
    assert out.read_text() == "a file now"


def test_a_run_folder_swapped_for_a_link_mid_run_writes_nothing_through_it(
    tmp_path: Path, shared_tiny, rescue_root: Path, monkeypatch
):
    out, victim = tmp_path / "results", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")

    def swap() -> None:
        (run_dir,) = list(out.iterdir())
        run_dir.rmdir()
        run_dir.symlink_to(victim, target_is_directory=True)

    monkeypatch.setattr("llenergymeasure.harness.measure.measure", measure_then(swap))
    run = _run(tiny_yaml(tmp_path), out)
    _assert_rescued(run, rescue_root, out)
    assert "symbolic link" in run.stdout
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_a_results_folder_that_is_a_link_is_followed_once_by_choice(
    tmp_path: Path, shared_tiny, rescue_root: Path
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "results").symlink_to(scratch, target_is_directory=True)
    run = _run(tiny_yaml(tmp_path), tmp_path / "results")
    assert run.exit_code == 0, run.output
    assert len(list(scratch.glob("*/result.json"))) == 1
    assert not rescue_root.exists()


def test_a_result_written_to_the_config_file_it_came_from_is_refused(tmp_path: Path, shared_tiny):
    import llenergymeasure as llem

    config = tiny_yaml(tmp_path)
    before = config.read_bytes()
    result = llem.run_experiment(config)
    with pytest.raises(UnsafeWriteError, match="which this command reads"):
        result.to_json(config)
    assert config.read_bytes() == before


def test_a_report_over_the_result_it_reads_is_refused_with_exit_2(tmp_path: Path, shared_tiny):
    out = tmp_path / "results"
    assert _run(tiny_yaml(tmp_path), out).exit_code == 0
    (run_dir,) = list(out.iterdir())
    before = (run_dir / "result.json").read_bytes()
    report = cli.invoke(app, ["report", str(run_dir), "-o", str(run_dir / "result.json")])
    assert report.exit_code == 2, report.output
    assert "refusing" in report.output and "result.json" in report.output
    assert (run_dir / "result.json").read_bytes() == before


def test_a_report_to_a_read_only_or_full_place_is_an_environment_error(tmp_path: Path, shared_tiny):
    out = tmp_path / "results"
    assert _run(tiny_yaml(tmp_path), out).exit_code == 0
    (run_dir,) = list(out.iterdir())
    with small_tmpfs(tmp_path / "disk", size="64k") as disk:
        fill(disk, leave_bytes=1024)
        full = cli.invoke(app, ["report", str(run_dir), "-o", str(disk / "r.html")])
    assert full.exit_code == EXIT_ENVIRONMENT, full.output
    assert "no space left" in full.output and "unexpected" not in full.output
    locked = tmp_path / "locked"
    locked.mkdir()
    make_read_only(locked)
    try:
        ro = cli.invoke(app, ["report", str(run_dir), "-o", str(locked / "r.html")])
    finally:
        undo_mounts(locked)
    assert ro.exit_code == EXIT_ENVIRONMENT, ro.output
    assert "read-only" in ro.output and "hint:" in ro.output


def test_a_report_under_a_file_or_without_permission_is_explained(
    tmp_path: Path, shared_tiny, monkeypatch
):
    out = tmp_path / "results"
    assert _run(tiny_yaml(tmp_path), out).exit_code == 0
    (run_dir,) = list(out.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    notdir = cli.invoke(app, ["report", str(run_dir), "-o", str(blocker / "r.html")])
    assert notdir.exit_code == EXIT_ENVIRONMENT, notdir.output
    assert "not a directory" in notdir.output

    def denied(fd: int, data: bytes) -> None:  # root ignores file modes: inject EACCES
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files, "_write_fd", denied)
    perm = cli.invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "r.html"), "--json"])
    assert perm.exit_code == EXIT_ENVIRONMENT, perm.output
    error = json.loads(perm.stdout.strip().splitlines()[-1])
    assert "permission denied" in error["error"] and error["hint"] and error["exit_code"] == 4


# --- model caches --------------------------------------------------------------------------


def test_a_truncated_builtin_model_cache_is_detected_and_rebuilt(tmp_path: Path):
    from llenergymeasure.engines.builtin import cache_problem, resolve_builtin_model

    folder = resolve_builtin_model("builtin:tiny", cache_dir=tmp_path / "cache")
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # what a full disk leaves behind
    assert "safetensors" in (cache_problem(folder) or "")
    run = cli.invoke(
        app,
        ["run", str(tiny_yaml(tmp_path)), "-o", str(tmp_path / "results")],
        env={"LLEM_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert run.exit_code == 0, run.output
    assert "damaged" in run.stderr and "building it again" in run.stderr
    assert cache_problem(folder) is None


def test_a_truncated_hugging_face_model_is_a_clear_error_with_the_cache_hint(
    tmp_path: Path, tiny_model_dir: Path
):
    model = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    config = tiny_yaml(tmp_path, model=str(model))
    run = cli.invoke(app, ["run", str(config), "-o", str(tmp_path / "results")])
    assert run.exit_code == EXIT_ENVIRONMENT, run.output
    assert "unexpected" not in run.stderr
    assert "truncated or damaged" in run.stderr and "huggingface" in run.stderr.lower()
