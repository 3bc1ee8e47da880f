"""Planted secrets never leave llem: every output file, stdout and stderr are grepped.

Secrets are planted in every input channel: ``passthrough_kwargs`` credential keys, the userinfo
of ``online.endpoint``, credential flags in ``online.server.extra_args`` (which the fake server
echoes into its own log, as real servers print their arguments), credential environment
variables, and error messages that carry them. Real CPU runs and a study of ``builtin:tiny``,
and online runs against the local fake OpenAI server (at an endpoint, and started by llem).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer
from hostile import grep_outputs, tiny_yaml
from typer.testing import CliRunner

from llenergymeasure.cli.app import app

FAKE = Path(__file__).with_name("fake_openai_server.py")

# Distinct values, so a hit names its channel.
PASSTHROUGH = "hf_PLANTED_passthrough_0001"
ENV_TOKEN = "hf_PLANTED_environment_0002"
ENV_KEY = "sk-PLANTED-environment-0003"
URL_PASSWORD = "PLANTED-url-password-0004"
FLAG_KEY = "sk-PLANTED-flag-value-0005"
FLAG_EQUALS = "hf_PLANTED_flag_equals_0006"
ERROR_PASSWORD = "PLANTED-error-password-0007"
STUDY_TOKEN = "hf_PLANTED_study_token_0008"
ALL = [
    PASSTHROUGH,
    ENV_TOKEN,
    ENV_KEY,
    URL_PASSWORD,
    FLAG_KEY,
    FLAG_EQUALS,
    ERROR_PASSWORD,
    STUDY_TOKEN,
]


@pytest.fixture(autouse=True)
def planted_environment(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tiny_model_dir.parent.parent))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def streams(*runs) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, run in enumerate(runs):
        out[f"stdout of call {i}"] = run.stdout
        out[f"stderr of call {i}"] = run.stderr
    return out


def test_an_offline_run_its_csv_json_summary_and_report_hold_no_secret(tmp_path: Path):
    config = tiny_yaml(tmp_path, passthrough_kwargs={"token": PASSTHROUGH, "revision": "main"})
    out = tmp_path / "results"
    first = invoke("run", str(config), "-o", str(out), "--export-csv", "--verbose")
    assert first.exit_code == 0, first.output
    as_json = invoke("run", str(config), "-o", str(out), "--json")
    assert as_json.exit_code == 0, as_json.output
    run_dir = sorted(out.iterdir())[0]
    report = invoke("report", str(run_dir))
    assert report.exit_code == 0, report.output
    report_json = invoke("report", str(run_dir), "-o", str(tmp_path / "r2.html"), "--json")
    config_cmd = invoke("config", "--verbose")
    config_json = invoke("config", "--json")
    assert config_cmd.exit_code == 0 and config_json.exit_code == 0

    assert (
        grep_outputs(
            ALL,
            out,
            tmp_path / "r2.html",
            **streams(first, as_json, report, report_json, config_cmd, config_json),
        )
        == []
    )
    result = json.loads((run_dir / "result.json").read_text())
    assert result["effective_parameters"]["passthrough_kwargs"]["token"] == "<redacted>"
    assert result["config"]["passthrough_kwargs"] == {"token": "<redacted>", "revision": "main"}
    assert (run_dir / "result.csv").is_file() and (run_dir / "report.html").is_file()


def test_the_python_api_writes_no_secret_either(tmp_path: Path):
    import llenergymeasure as llem

    result = llem.run_experiment(tiny_yaml(tmp_path, passthrough_kwargs={"token": PASSTHROUGH}))
    result.to_json(tmp_path / "api" / "result.json")
    result.to_csv(tmp_path / "api" / "result.csv")
    result.to_parquet(tmp_path / "api" / "result.parquet")
    assert PASSTHROUGH not in result.to_json()
    assert grep_outputs(ALL, tmp_path / "api") == []


def test_a_study_its_manifest_tables_summary_and_report_hold_no_secret(tmp_path: Path):
    study = tiny_yaml(
        tmp_path,
        "study.yaml",
        name="secret-study",
        passthrough_kwargs={"token": STUDY_TOKEN},
        sweep={"pytorch.batch_size": [1, 2]},
        execution={"n_cycles": 1},
    )
    out = tmp_path / "results"
    run = invoke("run", str(study), "-o", str(out), "--no-gaps", "--verbose")
    assert run.exit_code == 0, run.output
    (study_dir,) = list(out.iterdir())
    as_json = invoke("run", "--resume", str(study_dir), "--json")
    assert as_json.exit_code == 0, as_json.output
    report = invoke("report", str(study_dir))
    assert report.exit_code == 0, report.output
    names = {p.name for p in study_dir.rglob("*")}
    assert {"study_manifest.json", "study_summary.json", "results.parquet", "report.html"} <= names
    assert grep_outputs(ALL, out, **streams(run, as_json, report)) == []


def _online_yaml(tmp_path: Path, online: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(4)))
    path = tmp_path / "online.yaml"
    path.write_text(
        f"model: org/served-model\nbackend: vllm\ndataset: {prompts}\nn: 3\nmax_new_tokens: 4\n"
        f"mode: online\nonline:\n{online}"
    )
    return path


def test_an_endpoint_password_stays_out_of_the_result_request_log_and_summary(tmp_path: Path):
    with FakeOpenAIServer() as server:
        url = server.url.replace("http://", f"http://alice:{URL_PASSWORD}@")
        config = _online_yaml(
            tmp_path, f"  endpoint: {url}\n  request_rate: inf\n  n_warmup_requests: 0\n"
        )
        out = tmp_path / "results"
        run = invoke("run", str(config), "-o", str(out))
        as_json = invoke("run", str(config), "-o", str(out), "--json")
    assert run.exit_code == 0 and as_json.exit_code == 0, run.output
    assert "http://<redacted>@127.0.0.1" in run.stdout
    run_dir = sorted(out.iterdir())[0]
    assert (run_dir / "online_requests.json").is_file()
    report = invoke("report", str(run_dir))
    assert report.exit_code == 0, report.output
    assert grep_outputs(ALL, out, **streams(run, as_json, report)) == []


def test_credential_flags_of_a_started_server_stay_out_of_its_log_and_the_result(
    tmp_path: Path, monkeypatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_vllm = bin_dir / "vllm"  # prints its arguments, as real servers do
    fake_vllm.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    fake_vllm.chmod(fake_vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = _online_yaml(
        tmp_path,
        "  request_rate: inf\n  n_warmup_requests: 0\n"
        f"  server: {{startup_timeout_s: 60, extra_args: [--api-key, {FLAG_KEY}, "
        f"--hf-token={FLAG_EQUALS}]}}\n",
    )
    out = tmp_path / "results"
    run = invoke("run", str(config), "-o", str(out), "--verbose")
    assert run.exit_code == 0, run.output
    (run_dir,) = list(out.iterdir())
    log = (run_dir / "server.log").read_text()
    assert "fake server starting" in log and "'--api-key', '<redacted>'" in log
    result = json.loads((run_dir / "result.json").read_text())
    command = result["online"]["server_command"]
    assert command[command.index("--api-key") + 1] == "<redacted>"
    assert "--hf-token=<redacted>" in command
    assert grep_outputs(ALL, out, **streams(run)) == []


def test_errors_that_carry_a_secret_print_it_redacted(tmp_path: Path):
    dead = f"http://bob:{ERROR_PASSWORD}@127.0.0.1:1/v1"
    config = _online_yaml(tmp_path, f"  endpoint: {dead}\n  n_warmup_requests: 0\n")
    out = tmp_path / "results"
    logs = tmp_path / "logs"
    logs.mkdir()
    log = str(logs / "llem.log")
    unreachable = invoke("run", str(config), "-o", str(out), "--log-file", log)
    unreachable_json = invoke(
        "run", str(config), "-o", str(out), "--json", "--verbose", "--log-file", log
    )
    assert unreachable.exit_code != 0 and unreachable_json.exit_code != 0
    assert "127.0.0.1:1" in unreachable.stderr  # the error names the endpoint, redacted
    # the log file holds the errors with their tracebacks, redacted as well
    logged = (logs / "llem.log").read_text()
    assert logged.count("Traceback (most recent call last)") == 2
    assert "bob:<redacted>@127.0.0.1:1" in logged or "<redacted>@127.0.0.1:1" in logged
    both = _online_yaml(
        tmp_path, f"  endpoint: {dead}\n  server: {{extra_args: [--api-key, {FLAG_KEY}]}}\n"
    )
    invalid = invoke("run", str(both), "--dry-run")
    assert invalid.exit_code == 2, invalid.output
    from llenergymeasure.cli.app import report_error

    class Boom(RuntimeError):
        pass

    code = report_error(Boom(f"token={PASSTHROUGH} url={dead}"), verbose=False)
    assert code == 1
    assert (
        grep_outputs(
            ALL, tmp_path / "results", logs, **streams(unreachable, unreachable_json, invalid)
        )
        == []
    )


def test_report_error_output_is_redacted(capsys):
    from llenergymeasure.cli.app import report_error
    from llenergymeasure.exceptions import BackendError

    report_error(
        BackendError(f"server at http://u:{URL_PASSWORD}@h/v1 refused --api-key {FLAG_KEY}"),
        verbose=True,
        as_json=True,
    )
    captured = capsys.readouterr()
    assert URL_PASSWORD not in captured.out + captured.err
    assert FLAG_KEY not in captured.out + captured.err
    assert "<redacted>" in captured.err


def test_a_container_gets_its_config_redacted(tmp_path: Path):
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.runners.docker import prepare_exchange

    config = ExperimentConfig(
        model="m",
        backend="vllm",
        passthrough_kwargs={"hf_token": PASSTHROUGH},
        mode="online",
        online={"server": {"extra_args": ["--api-key", FLAG_KEY]}},
    )
    prepare_exchange(config, tmp_path / "run")
    assert grep_outputs(ALL, tmp_path / "run") == []
