"""Bounded work: a study larger than the user config's limits is refused before it expands."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError

BASE = {"name": "big", "model": "builtin:tiny", "backend": "pytorch", "dataset": "synthetic"}
# 10^8 points: expanding this would take minutes and gigabytes
HUGE_SWEEP = {
    "decoder.top_k": list(range(1, 101)),
    "n": list(range(1, 101)),
    "max_new_tokens": list(range(1, 101)),
    "random_seed": list(range(100)),
}


def test_a_huge_sweep_is_refused_quickly_naming_its_size_and_the_limit():
    # CPU time of this thread, which other processes loading the machine do not stretch:
    # expanding the sweep would spend minutes of it
    started = time.thread_time()
    with pytest.raises(
        ConfigError, match=r"100,000,000 experiments, more than the limit of 10,000"
    ):
        StudyConfig.from_dict({**BASE, "sweep": HUGE_SWEEP})
    assert time.thread_time() - started < 2.0


def test_too_many_cycles_are_refused():
    # over the user config's limit (1,000 by default) ...
    with pytest.raises(ConfigError, match=r"n_cycles=5,000 is more than the limit of 1,000"):
        StudyConfig.from_dict({**BASE, "execution": {"n_cycles": 5000}})
    # ... and over the hard ceiling of the field, which no user config can raise
    with pytest.raises(ConfigError, match=r"execution.n_cycles: .*allowed \[1, 100,000\]"):
        StudyConfig.from_dict({**BASE, "execution": {"n_cycles": 1e9}})


def test_the_limits_come_from_the_user_config(tmp_path: Path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("execution:\n  max_grid_points: 2\n  max_cycles: 5\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    assert len(StudyConfig.from_dict({**BASE, "sweep": {"n": [1, 2]}}).experiments) == 2
    with pytest.raises(ConfigError, match="3 experiments, more than the limit of 2"):
        StudyConfig.from_dict({**BASE, "sweep": {"n": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="n_cycles=6"):
        StudyConfig.from_dict({**BASE, "execution": {"n_cycles": 6}})


def test_cycles_flag_over_the_limit_exits_2_and_creates_no_study_directory(
    tmp_path: Path, write_yaml
):
    study = write_yaml(
        "name: s\nmodel: builtin:tiny\nbackend: pytorch\ndataset: synthetic\nsweep:\n  n: [1, 2]\n",
        "study.yaml",
    )
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["run", str(study), "--cycles", "5000", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "n_cycles=5,000 is more than the limit of 1,000" in result.output
    assert not out.exists() or list(out.iterdir()) == []


def test_a_study_runner_over_the_cycle_limit_creates_no_directory(tmp_path: Path):
    from llenergymeasure.study.runner import StudyRunner

    study = StudyConfig.from_dict(BASE)
    study = study.model_copy(
        update={"execution": study.execution.model_copy(update={"n_cycles": 10**9})}
    )
    with pytest.raises(ConfigError, match="n_cycles"):
        StudyRunner.create(study, tmp_path / "results")
    assert not (tmp_path / "results").exists()
