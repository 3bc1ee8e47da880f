"""Hostile servers: whatever an OpenAI-compatible server does, a request (or pre-flight) ends
with a clear reason within its deadline, memory stays bounded, the run ends with a documented
exit code and a clear message, and nothing is left running.

The server is ``hostile_openai_server.HostileServer`` (raw bytes on a loopback socket). Its
trickling and endless answers give up by themselves after a minute: a client whose deadline
did not hold would then see an unexpected end, not the ``timeout`` these tests expect, so a
broken deadline fails a test instead of hanging it. Deadlines here are half a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest
from hostile_openai_server import MB, HostileServer
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.http import EndpointAuthError, EndpointError, served_models
from llenergymeasure.online.records import RequestRecord, StreamRequest

HOSTILE = Path(__file__).with_name("hostile_openai_server.py")
DEADLINE_S = 0.5  # where the deadline is what is tested
ROOMY_S = 30.0  # elsewhere: a busy machine must not turn another failure into a timeout
cli = CliRunner()


def send(
    server: HostileServer, max_tokens: int = 5, timeout_s: float = ROOMY_S, **client_kw: object
) -> RequestRecord:
    client = OpenAIStreamClient(server.url, "m", timeout_s=timeout_s, **client_kw)  # type: ignore[arg-type]
    return asyncio.run(client.send(StreamRequest("hi", max_tokens)))


def deadline_for(reason: str) -> float:
    return DEADLINE_S if "timeout" in reason else ROOMY_S  # "timeout" in an alternative too


# ─── one request against each misbehaviour ──────────────────────────────────────────────────

FAILING_STREAMS = [
    ("hang_before_headers", r"^timeout: no response headers within 0\.5 s$"),
    ("slow_headers", r"^timeout: no response headers within 0\.5 s$"),
    ("hang_mid_stream", r"^timeout: .* not complete within 0\.5 s \(2 tokens received\)$"),
    ("slow_body", r"^timeout: the response was not complete within 0\.5 s"),
    ("not_json", r"^non-OpenAI response: data line is not JSON"),
    ("deep_json", r"^non-OpenAI response: data line is not JSON"),
    ("html", r"^non-OpenAI response: content-type 'text/html', not text/event-stream$"),
    ("json_not_stream", r"^non-OpenAI response: content-type 'application/json'"),
    ("huge_line", r"^response line too long: more than 1048576 bytes without a newline$"),
    ("huge_chunk", r"^response line too long"),
    ("endless_tokens", r"^the server streamed more than max_tokens=5 tokens \(6\)$"),
    ("cut", r"^stream ended before \[DONE\]: the server closed the connection mid-stream$"),
    # aiohttp's parser does not always notice a chunk size that is not hex (seen here: about two
    # tries in three it waits for more bytes): the request then ends at its deadline instead
    ("bad_chunked", r"^(bad response: HTTP protocol error|timeout: .* within 0\.5 s)"),
    ("huge_headers", r"^bad response: HTTP protocol error"),
    ("gzip", r"^non-OpenAI response: a 'gzip'-encoded stream"),
    ("error_huge_body", r"^HTTP 500: E{300}$"),
]


@pytest.mark.parametrize(("mode", "reason"), FAILING_STREAMS, ids=[m for m, _ in FAILING_STREAMS])
def test_a_misbehaving_stream_fails_its_request_with_a_clear_reason(mode, reason):
    with HostileServer(mode) as server:
        record = send(server, timeout_s=deadline_for(reason))
    assert not record.ok
    assert record.error is not None and re.search(reason, record.error), record.error
    assert record.end_time_s >= record.send_time_s


@pytest.mark.parametrize("mode", ["huge_line", "huge_chunk", "error_huge_body"])
def test_a_huge_answer_is_not_read_to_its_end(mode):
    # 100 MB offered: the client hangs up after its bound (1 MiB a line, 4 KiB of an error body)
    with HostileServer(mode) as server:
        record = send(server)
        deadline = time.monotonic() + 30
        while not server.client_hung_up and time.monotonic() < deadline:
            time.sleep(0.02)  # the server notices the hang-up on its next write
    assert not record.ok
    assert server.client_hung_up == [True]
    assert server.bytes_sent[0] < 40 * MB  # socket buffers hold a few MB at most


def test_an_endless_stream_without_tokens_fails_at_the_body_bound():
    with HostileServer("endless_comments") as server:
        record = send(server, max_body_bytes=MB)
    assert not record.ok
    assert record.error == f"response too large: the server sent more than {MB} bytes"


def test_an_endless_stream_without_tokens_fails_at_the_deadline_by_default():
    with HostileServer("endless_comments") as server:
        record = send(server, timeout_s=DEADLINE_S)
    assert not record.ok and record.error is not None
    assert record.error.startswith(("timeout: the response was not complete", "response too"))


LYING_USAGE = [
    ("usage_negative", "usage.completion_tokens=-5 is not a non-negative integer"),
    ("usage_over_max", "usage.completion_tokens=1005 is more than max_tokens=5"),
    ("usage_below_stream", "usage.completion_tokens=1 contradicts the stream, which carried 3"),
    ("usage_not_int", "usage.completion_tokens=many is not a non-negative integer"),
]


@pytest.mark.parametrize(("mode", "why"), LYING_USAGE, ids=[m for m, _ in LYING_USAGE])
def test_lying_usage_is_flagged_and_the_stream_count_is_used(mode, why):
    with HostileServer(mode) as server:
        record = send(server)
    assert record.ok  # the stream itself was fine
    assert record.usage_rejected is not None and why in record.usage_rejected
    assert record.output_tokens_usage is None
    assert record.output_tokens == record.output_tokens_stream == 3


def test_a_running_usage_count_above_max_tokens_is_flagged_and_chunks_counted_by_text():
    with HostileServer("continuous_over_max") as server:
        record = send(server, continuous_usage=True)
    assert record.ok
    assert record.usage_rejected == "usage.completion_tokens=1000000000 is more than max_tokens=5"
    assert record.chunk_tokens == [1, 1, 1] and record.output_tokens == 3


def test_a_well_behaved_stream_through_the_same_fixture_is_fine():
    with HostileServer("ok") as server:
        record = send(server)
    assert record.ok and record.usage_rejected is None
    assert record.output_tokens_usage == 3 and record.chunk_tokens == [1, 1, 1]


def test_an_api_key_goes_in_the_header_and_is_masked_when_a_server_echoes_it():
    with HostileServer("echo_key") as server:
        record = send(server, api_key="sk-secret-123")
    ((_, _, headers),) = server.requests
    assert headers["authorization"] == "Bearer sk-secret-123"
    assert record.error is not None and record.error.startswith("HTTP 401: bad key in ")
    assert "sk-secret-123" not in record.model_dump_json()
    assert "***" in record.error


# ─── pre-flight: GET /v1/models ─────────────────────────────────────────────────────────────

FAILING_PREFLIGHT = [
    ("hang", EndpointError, r"no complete answer to GET .*/v1/models within 0\.5 s"),
    ("slow", EndpointError, r"no complete answer to GET .*/v1/models within 0\.5 s"),
    ("huge", EndpointError, r"larger than 8388608 bytes"),
    ("unauthorized", EndpointAuthError, r"answered HTTP 401: the server wants an API key"),
]


@pytest.mark.parametrize(
    ("models", "error", "reason"), FAILING_PREFLIGHT, ids=[m for m, _, _ in FAILING_PREFLIGHT]
)
def test_a_misbehaving_model_list_fails_pre_flight_within_its_deadline(models, error, reason):
    timeout_s = DEADLINE_S if models in ("hang", "slow") else ROOMY_S
    with HostileServer(models=models) as server, pytest.raises(error, match=reason):
        served_models(server.url, timeout_s=timeout_s)


def test_a_model_list_that_is_not_json_is_no_list():
    with HostileServer(models="garbage") as server:
        assert served_models(server.url, timeout_s=ROOMY_S) is None


# ─── whole runs through `llem run` ──────────────────────────────────────────────────────────


def experiment(
    tmp_path: Path,
    online: str,
    *,
    n: int = 3,
    request_timeout_s: float = ROOMY_S,
    preflight_timeout_s: float = ROOMY_S,
) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(n)))
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"model: m\nbackend: vllm\ndataset: {prompts}\nn: {n}\nmax_new_tokens: 5\n"
        f"mode: online\nonline:\n  n_warmup_requests: 0\n  request_timeout_s: {request_timeout_s}\n"
        f"  preflight_timeout_s: {preflight_timeout_s}\n{online}"
    )
    return path


def llem_run(config: Path, out: Path, *extra: str):
    return cli.invoke(app, ["run", str(config), "-o", str(out), *extra])


def every_file_text(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("models", "code", "message"),
    [
        ("slow", 1, r"is unreachable or not answering: no complete answer .* within 0\.5 s"),
        ("hang", 1, r"within 0\.5 s"),
        ("huge", 1, r"larger than 8388608 bytes"),
        ("unauthorized", 2, r"refused the request: .*HTTP 401.*\n  hint: set online.api_key_env"),
    ],
)
def test_a_run_whose_endpoint_fails_pre_flight_ends_with_a_clear_error(
    tmp_path, models, code, message
):
    with HostileServer(models=models) as server:
        timeout_s = DEADLINE_S if models in ("hang", "slow") else ROOMY_S
        config = experiment(tmp_path, f"  endpoint: {server.url}\n", preflight_timeout_s=timeout_s)
        run = llem_run(config, tmp_path / "out")
    assert run.exit_code == code, run.output
    assert re.search(message, run.output), run.output
    assert not server.requests or all(method == "GET" for method, _, _ in server.requests)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("hang_before_headers", "timeout: no response headers within 0.5 s"),
        ("slow_body", "timeout: the response was not complete within 0.5 s"),
        ("huge_line", "response line too long"),
        ("not_json", "data line is not JSON"),
        ("cut", "stream ended before [DONE]"),
    ],
)
def test_a_run_whose_every_request_fails_exits_1_and_keeps_the_request_records(
    tmp_path, mode, reason
):
    with HostileServer(mode) as server:
        timeout_s = deadline_for(reason)
        config = experiment(tmp_path, f"  endpoint: {server.url}\n", request_timeout_s=timeout_s)
        run = llem_run(config, tmp_path / "out")
    assert run.exit_code == 1, run.output
    assert "all 3 requests failed" in run.output and reason in run.output
    (records,) = (tmp_path / "out").rglob("online_requests.json")
    kept = json.loads(records.read_text())["load"]["records"]
    assert [r["ok"] for r in kept] == [False] * 3
    assert all(reason in r["error"] for r in kept)


def test_a_run_with_lying_usage_completes_with_stream_counts_and_a_warning(tmp_path):
    with HostileServer("usage_over_max") as server:
        config = experiment(tmp_path, f"  endpoint: {server.url}\n")
        run = llem_run(config, tmp_path / "out", "--json")
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["output_tokens"] == 9  # 3 requests x 3 streamed tokens, not 3 x 1005
    result = json.loads(Path(summary["result_path"]).read_text())
    (warning,) = [w for w in result["online"]["warnings"] if "usage" in w]
    assert warning.startswith("3 of 3 requests reported a usage that cannot be true")
    assert "their token counts come from the stream" in warning


def test_an_api_key_variable_must_be_set_for_a_dry_run_and_a_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LLEM_TEST_KEY", raising=False)
    config = experiment(tmp_path, "  endpoint: http://127.0.0.1:9\n  api_key_env: LLEM_TEST_KEY\n")
    for extra in (["--dry-run"], []):
        run = llem_run(config, tmp_path / "out", *extra)
        assert run.exit_code == 2, run.output
        assert "online.api_key_env names LLEM_TEST_KEY, which is not set" in run.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_key_pasted_in_place_of_its_variable_name_is_refused_without_repeating_it(tmp_path):
    config = experiment(tmp_path, "  endpoint: http://127.0.0.1:9\n  api_key_env: sk-abc-123\n")
    run = llem_run(config, tmp_path / "out", "--dry-run")
    assert run.exit_code == 2
    assert "NAME of an environment variable" in run.output
    assert "sk-abc-123" not in run.output


def test_the_api_key_is_sent_and_never_written(tmp_path, monkeypatch):
    key = "sk-planted-7f3a9c"
    monkeypatch.setenv("LLEM_TEST_KEY", key)
    with HostileServer("echo_key") as server:
        config = experiment(tmp_path, f"  endpoint: {server.url}\n  api_key_env: LLEM_TEST_KEY\n")
        run = llem_run(config, tmp_path / "out")
    assert run.exit_code == 1  # every request got 401
    auth = {headers.get("authorization") for _, _, headers in server.requests}
    assert auth == {f"Bearer {key}"}  # the pre-flight GET and every POST
    assert key not in run.output
    assert key not in every_file_text(tmp_path / "out")


# ─── a hostile server that llem started ─────────────────────────────────────────────────────


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("mode", ["hang_mid_stream", "endless_tokens"])
def test_a_started_hostile_server_is_stopped_with_its_children_after_the_run(
    tmp_path, monkeypatch, mode
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_vllm = bin_dir / "vllm"  # `vllm serve MODEL --host H --port P ...`
    fake_vllm.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HOSTILE}" --mode {mode} --child "$@"\n'
    )
    fake_vllm.chmod(fake_vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = experiment(
        tmp_path, "  server: {startup_timeout_s: 60}\n", request_timeout_s=DEADLINE_S
    )
    run = llem_run(config, tmp_path / "out")
    assert run.exit_code == 1, run.output
    assert "all 3 requests failed" in run.output
    (log,) = (tmp_path / "out").rglob("server.log")
    text = log.read_text()
    child = int(re.search(r"child-pid (\d+)", text).group(1))  # type: ignore[union-attr]
    assert "hostile server ready" in text
    assert not alive(child)  # stopped before llem returned: the whole process group went
