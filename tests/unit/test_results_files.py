"""Where results go and how they are written: the location is checked before anything is
measured, files respect the umask, and temp files of killed writes do not pile up."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.exceptions import ConfigError, ExperimentError
from llenergymeasure.files import STALE_TMP_SECONDS, write_text
from llenergymeasure.results.io import unique_directory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY_RUN = ("run", "--model", "builtin:tiny", "--dataset", "synthetic", "-n", "2")


def _measuring_is_a_bug(*_args, **_kwargs):
    raise AssertionError("measure() ran although the output location is unusable")


def test_output_that_is_a_file_is_a_config_error_naming_it(tmp_path: Path):
    target = tmp_path / "results.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match=r"results\.txt is not a directory"):
        unique_directory(target, "run")


def test_output_under_a_file_is_a_config_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create output directory"):
        unique_directory(blocker / "sub", "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_unwritable_output_directory_is_a_config_error(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write in output directory"):
            unique_directory(locked, "run")
    finally:
        locked.chmod(0o700)


def test_llem_run_with_o_a_file_exits_2_before_measuring(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("llenergymeasure.harness.measure.measure", _measuring_is_a_bug)
    target = tmp_path / "out.json"
    target.write_text("{}")
    result = CliRunner().invoke(app, [*TINY_RUN, "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert str(target) in result.output


def test_study_with_results_dir_a_file_exits_2_before_measuring(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("llenergymeasure.harness.measure.measure", _measuring_is_a_bug)
    target = tmp_path / "results"
    target.write_text("not a directory")
    config = tmp_path / "config.yaml"
    config.write_text(f"output:\n  results_dir: {target}\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    result = CliRunner().invoke(app, ["run", str(EXAMPLES / "study.yaml"), "--no-gaps"])
    assert result.exit_code == 2, result.output
    assert str(target) in result.output


def test_a_failed_run_leaves_no_empty_run_directory(tmp_path: Path, monkeypatch):
    def failing_measure(*_args, **_kwargs):
        raise ExperimentError("engine fell over")

    monkeypatch.setattr("llenergymeasure.harness.measure.measure", failing_measure)
    root = tmp_path / "results"
    result = CliRunner().invoke(app, [*TINY_RUN, "-o", str(root)])
    assert result.exit_code == 1, result.output
    assert list(root.iterdir()) == []


def test_atomic_writes_respect_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        shared = write_text(tmp_path / "shared.json", "{}")
        os.umask(0o077)
        private = write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_stale_temp_files_of_killed_writes_are_removed_at_the_next_write(tmp_path: Path):
    stale = tmp_path / ".manifest.json.abc123.tmp"
    stale.write_text("half a manifest")
    old = time.time() - STALE_TMP_SECONDS - 10
    os.utime(stale, (old, old))
    fresh = tmp_path / ".result.json.def456.tmp"  # a write that may still be in progress
    fresh.write_text("being written")
    write_text(tmp_path / "other.json", "{}")
    assert not stale.exists()
    assert fresh.exists()
