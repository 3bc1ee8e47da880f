"""The streaming client against a fake OpenAI-compatible server: timing, counting, failures."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fake_openai_server import FakeOpenAIServer

from llenergymeasure.online.client import OpenAIStreamClient, RequestRecord, StreamRequest


def send(
    client: OpenAIStreamClient, prompt: str = "hello", max_tokens: int = 5, **kw
) -> RequestRecord:
    return asyncio.run(client.send(StreamRequest(prompt, max_tokens, **kw), index=3))


@pytest.fixture
def server():
    with FakeOpenAIServer(ttft_s=0.05, token_delay_s=0.01) as s:
        yield s


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_streamed_request_is_timed_and_counted(server, api):
    client = OpenAIStreamClient(server.url, "m", api=api)
    record = send(client, max_tokens=6)
    assert record.ok and record.error is None and record.http_status == 200
    assert record.index == 3
    assert record.output_tokens_stream == 6 and record.output_tokens_usage == 6
    assert len(record.chunk_times_s) == 6
    assert record.ttft_s is not None and record.ttft_s >= 0.05
    assert record.send_time_s < record.first_token_time_s <= record.chunk_times_s[-1]
    assert record.chunk_times_s[-1] <= record.end_time_s
    # client-side gaps: five of them, never negative (a busy client may read two chunks at once)
    assert len(record.itls_s) == 5 and min(record.itls_s) >= 0
    # TPOT = (e2e - TTFT) / (tokens - 1)
    assert record.tpot_s == pytest.approx((record.end_time_s - record.first_token_time_s) / 5)
    assert record.e2e_s >= 0.05 + 5 * 0.009  # the server's own sleeps
    assert record.finish_reason == "length"
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    assert server.paths == [path]


def test_the_chat_role_chunk_is_not_a_token(server):
    record = send(OpenAIStreamClient(server.url, "m", api="chat"), max_tokens=1)
    assert record.output_tokens_stream == 1
    assert record.tpot_s is None  # one token: no decode step to time


def test_request_bodies_follow_the_openai_api(server):
    completions = OpenAIStreamClient(server.url, "org/m", sampling={"temperature": 0.0})
    send(completions, "p1", max_tokens=4, ignore_eos=True)
    chat = OpenAIStreamClient(server.url + "/v1", "org/m", api="chat", include_usage=False)
    send(chat, "p2", max_tokens=2)
    first, second = server.bodies
    assert first == {
        "model": "org/m",
        "stream": True,
        "prompt": "p1",
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 0.0,
    }
    assert second["messages"] == [{"role": "user", "content": "p2"}]
    assert "stream_options" not in second and "ignore_eos" not in second
    assert server.paths == ["/v1/completions", "/v1/chat/completions"]


def test_usage_is_preferred_to_the_stream_count_when_both_are_given():
    with FakeOpenAIServer(usage_tokens=9, tokens_per_chunk=3) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=6)
    assert record.output_tokens_stream == 2  # two chunks of three tokens
    assert record.output_tokens_usage == 9
    assert record.output_tokens == 9


def test_without_usage_tokens_are_counted_from_the_stream():
    with FakeOpenAIServer(send_usage=False) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=4)
    assert record.ok and record.output_tokens_usage is None and record.output_tokens == 4


def test_a_stream_ending_with_finish_reason_but_no_done_marker_is_complete():
    # transformers serve ends its streams this way
    with FakeOpenAIServer(done_marker=False) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=3)
    assert record.ok and record.finish_reason == "length" and record.output_tokens == 3


def test_close_delimited_bodies_are_read_too():
    with FakeOpenAIServer(chunked=False) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=3)
    assert record.ok and record.output_tokens == 3


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_http_errors_are_recorded_with_status_and_message(server, status):
    record = send(OpenAIStreamClient(server.url, "m"), f"FAIL:{status}")
    assert not record.ok
    assert record.http_status == status
    assert record.error == f"HTTP {status}: fake failure {status}"
    assert record.output_tokens == 0 and record.ttft_s is None


def test_a_timeout_is_recorded_not_raised(server):
    client = OpenAIStreamClient(server.url, "m", timeout_s=0.3)
    record = send(client, "HANG")
    assert not record.ok and record.error is not None and "timeout" in record.error
    assert 0.25 <= record.e2e_s < 5


def test_a_stream_cut_short_is_a_failure_that_keeps_what_arrived(server):
    record = send(OpenAIStreamClient(server.url, "m"), "CUT", max_tokens=5)
    assert not record.ok and record.error is not None and "[DONE]" in record.error
    assert record.output_tokens_stream == 2


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("HTML", "non-OpenAI response"),
        ("BADJSON", "not JSON"),
        ("STREAMERR", "server error in stream: engine died"),
    ],
)
def test_responses_that_are_not_openai_streams_are_failures(server, prompt, message):
    record = send(OpenAIStreamClient(server.url, "m"), prompt)
    assert not record.ok and record.error is not None and message in record.error


def test_an_unreachable_server_is_a_connection_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = send(OpenAIStreamClient(f"http://127.0.0.1:{port}", "m"))
    assert not record.ok and record.error is not None
    assert record.error.startswith("connection failed")
    assert record.http_status is None


def test_an_unknown_path_prefix_is_kept_before_v1():
    client = OpenAIStreamClient("http://h:1/proxy", "m", api="chat")
    assert client.path == "/proxy/v1/chat/completions"
    assert OpenAIStreamClient("http://h:1/v1/", "m").path == "/v1/completions"


@pytest.mark.parametrize("url", ["ftp://h:1", "h:1", "http://"])
def test_a_bad_base_url_is_refused(url):
    with pytest.raises(ValueError, match="http"):
        OpenAIStreamClient(url, "m")


def test_served_models_lists_the_ids_or_none():
    from llenergymeasure.online.client import served_models

    with FakeOpenAIServer(models=["a", "b"]) as s:
        assert served_models(s.url) == ["a", "b"]
        assert served_models(s.url + "/v1") == ["a", "b"]
    with FakeOpenAIServer(health=False) as s:
        assert served_models(s.url) is None  # 404


def test_served_models_raises_oserror_when_nothing_listens():
    from llenergymeasure.online.client import served_models

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        served_models(f"http://127.0.0.1:{port}", timeout_s=2)
