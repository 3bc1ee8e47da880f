"""``llem --version``, ``llem config``, and the real entry point in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from llenergymeasure._version import __version__
from llenergymeasure.cli.app import app

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY = [sys.executable, "-c", "from llenergymeasure.cli.app import main; main()"]

runner = CliRunner()


def run_llem(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh interpreter, with the isolated environment of this test."""
    return subprocess.run(
        [*ENTRY, *args], capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=60
    )


def test_version_lists_the_tool_and_every_engine():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"llem {__version__}"
    for engine in ("pytorch", "vllm", "tensorrt"):
        assert any(line.split()[0] == engine for line in lines[1:]), engine


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.stdout and "config" in result.stdout


def test_config_shows_the_user_config_path_and_defaults():
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "User config" in out and "not found: using defaults" in out
    assert "llenergymeasure/config.yaml" in out
    assert "measurement.datacenter_pue" in out and "[default]" in out
    for section in ("GPUs", "Engines", "Energy backends", "Next steps"):
        assert section in out


def test_config_shows_where_each_value_comes_from(write_yaml, monkeypatch):
    path = write_yaml("measurement:\n  carbon_intensity_gco2_kwh: 350\n", name="user.yaml")
    monkeypatch.setenv("LLEM_CONFIG", str(path))
    monkeypatch.setenv("LLEM_DATACENTER_PUE", "1.3")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(str(path) in line and "(found)" in line for line in lines)
    carbon = next(line for line in lines if "carbon_intensity_gco2_kwh" in line)
    assert "350" in carbon and f"[user config ({path})]" in carbon
    pue = next(line for line in lines if "measurement.datacenter_pue" in line)
    assert "1.3" in pue and "[env LLEM_DATACENTER_PUE]" in pue


def test_config_with_an_invalid_user_config_exits_2(write_yaml, monkeypatch):
    path = write_yaml("measurement:\n  datacenter_pue: 0.2\n", name="user.yaml")
    monkeypatch.setenv("LLEM_CONFIG", str(path))
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.output


def test_config_verbose_shows_every_setting():
    result = runner.invoke(app, ["config", "--verbose"])
    assert result.exit_code == 0
    assert "runners.vllm" in result.stdout and "execution.cycle_gap_seconds" in result.stdout


# --- real processes ---------------------------------------------------------------------------


def test_import_and_dry_run_do_not_import_torch_or_transformers():
    code = (
        "import sys\n"
        "from llenergymeasure.cli.app import main\n"
        "heavy = ('torch', 'transformers', 'vllm', 'tensorrt_llm')\n"
        "assert not [m for m in heavy if m in sys.modules], 'imported by the CLI module'\n"
        "for path in ('examples/experiment.yaml', 'examples/study.yaml'):\n"
        "    sys.argv = ['llem', 'run', path, '--dry-run']\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "found = [m for m in heavy if m in sys.modules]\n"
        "assert not found, found\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("clean")


def test_real_entry_point_help_exits_0():
    result = run_llem("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_real_entry_point_dry_run_of_the_example_study():
    result = run_llem("run", "examples/study.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "7 experiments x 3 cycles (interleaved) = 21 runs; 0 skipped" in result.stdout


def test_real_entry_point_config_error_exits_2_without_traceback(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\nvllm:\n  max_num_seqs: 4\n")
    result = run_llem("run", str(path), "--dry-run")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
