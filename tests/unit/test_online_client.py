"""The streaming client against a fake OpenAI-compatible server: timing, counting, failures."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from fake_openai_server import FakeOpenAIServer

from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.records import RequestRecord, StreamRequest


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


def test_continuous_usage_is_asked_for_only_when_enabled(server):
    send(OpenAIStreamClient(server.url, "m", continuous_usage=True))
    send(OpenAIStreamClient(server.url, "m"))
    on, off = server.bodies
    assert on["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert off["stream_options"] == {"include_usage": True}


def test_continuous_usage_without_include_usage_is_refused():
    # vLLM reads continuous_usage_stats only together with include_usage
    with pytest.raises(ValueError, match="include_usage"):
        OpenAIStreamClient("http://h:1", "m", include_usage=False, continuous_usage=True)


def no_text(position: int) -> str:
    """Every token decodes to "" (a model whose vocabulary outgrows its tokenizer)."""
    return ""


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_with_continuous_usage_chunks_of_tokens_without_text_are_counted(api):
    with FakeOpenAIServer(vllm=True, decode=no_text, ttft_s=0.02) as s:
        client = OpenAIStreamClient(s.url, "m", api=api, continuous_usage=True)
        record = send(client, max_tokens=6)
    assert record.ok
    assert record.chunk_tokens == [1] * 6 and len(record.chunk_times_s) == 6
    assert record.output_tokens_stream == 6 == record.output_tokens_usage
    assert record.first_token_time_s == record.chunk_times_s[0]  # not the chat role chunk
    assert record.ttft_s is not None and record.ttft_s >= 0.02
    assert len(record.itls_s) == 5


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_without_usage_or_token_ids_chunks_without_text_carry_no_token(api):
    # what vLLM 0.26 streamed on the H200: usage is right, the stream shows nothing to time
    with FakeOpenAIServer(vllm=True, decode=no_text) as s:
        record = send(OpenAIStreamClient(s.url, "m", api=api), max_tokens=6)
    assert record.ok and record.output_tokens_usage == 6 and record.output_tokens == 6
    assert record.chunk_times_s == [] and record.chunk_tokens == []
    assert record.output_tokens_stream == 0
    assert record.ttft_s is None and record.itls_s == []


def test_ttft_is_the_first_token_not_the_first_text():
    def late_text(position: int) -> str:
        return "" if position < 2 else "x"  # e.g. the bytes of one UTF-8 character

    with FakeOpenAIServer(vllm=True, decode=late_text, token_delay_s=0.02) as s:
        exact = send(OpenAIStreamClient(s.url, "m", continuous_usage=True), max_tokens=4)
        by_text = send(OpenAIStreamClient(s.url, "m"), max_tokens=4)
    assert exact.chunk_tokens == [1, 1, 1, 1]
    assert by_text.chunk_tokens == [1, 1]  # two tokens never seen by the text rule
    # the text rule's TTFT waits for the third token, which the server sends two of its 20 ms
    # steps after the first (a lower bound: the client cannot read it sooner)
    assert by_text.ttft_s is not None and by_text.ttft_s >= 0.039
    # the exact count's first token is the first chunk's (the gap the client sees between
    # chunks is not asserted: a busy client may read several at once)
    assert exact.first_token_time_s == exact.chunk_times_s[0] <= exact.chunk_times_s[2]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_chunk_merging_three_tokens_counts_three_with_continuous_usage(api):
    # vLLM's output collector merges the outputs a slow reader has not taken yet
    with FakeOpenAIServer(vllm=True, chunk_sizes=[1, 3]) as s:
        client = OpenAIStreamClient(s.url, "m", api=api, continuous_usage=True)
        record = send(client, max_tokens=6)
    assert record.chunk_tokens == [1, 3, 1, 1]
    assert record.output_tokens_stream == 6
    assert len(record.itls_s) == 3  # one gap per chunk, not per token


def test_a_merged_chunk_counts_once_by_its_text():
    with FakeOpenAIServer(vllm=True, chunk_sizes=[1, 3]) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=6)
    assert record.chunk_tokens == [1, 1, 1, 1]
    assert record.output_tokens_stream == 4 and record.output_tokens == 6  # usage wins


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_token_ids_count_the_tokens_of_a_chunk(api):
    # vLLM's return_token_ids puts each chunk's token ids on its choice
    with FakeOpenAIServer(vllm=True, decode=no_text, chunk_sizes=[2, 3]) as s:
        client = OpenAIStreamClient(s.url, "m", api=api, sampling={"return_token_ids": True})
        record = send(client, max_tokens=6)
    assert record.chunk_tokens == [2, 3, 1]
    assert record.output_tokens_stream == 6


def test_a_server_ignoring_continuous_usage_is_counted_by_text():
    with FakeOpenAIServer(vllm=False) as s:  # usage only at the end, as servers without it
        record = send(OpenAIStreamClient(s.url, "m", continuous_usage=True), max_tokens=4)
    assert record.chunk_tokens == [1] * 4 and record.output_tokens_usage == 4


def test_records_written_before_chunk_tokens_still_load():
    old = (
        '{"index": 0, "ok": true, "send_time_s": 1.0, "first_token_time_s": 1.5, '
        '"chunk_times_s": [1.5, 1.6, 1.8], "end_time_s": 2.0, "output_tokens_stream": 3}'
    )
    record = RequestRecord.model_validate_json(old)
    assert record.chunk_tokens == []
    assert record.tokens_per_chunk == [1, 1, 1]  # one token a chunk, as they were counted
    assert record.itls_s == pytest.approx([0.1, 0.2])


def test_chunk_tokens_must_match_the_chunk_times():
    with pytest.raises(ValueError, match="chunk_tokens"):
        RequestRecord(
            index=0, ok=True, send_time_s=0, end_time_s=1, chunk_times_s=[0.5], chunk_tokens=[1, 2]
        )


def test_usage_is_preferred_to_the_stream_count_when_both_are_given():
    with FakeOpenAIServer(tokens_per_chunk=3) as s:
        record = send(OpenAIStreamClient(s.url, "m"), max_tokens=6)
    assert record.output_tokens_stream == 2  # two chunks of three tokens, counted by their text
    assert record.output_tokens_usage == 6 and record.usage_rejected is None
    assert record.output_tokens == 6


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
    from llenergymeasure.online.http import served_models

    with FakeOpenAIServer(models=["a", "b"]) as s:
        assert served_models(s.url) == ["a", "b"]
        assert served_models(s.url + "/v1") == ["a", "b"]
    with FakeOpenAIServer(health=False) as s:
        assert served_models(s.url) is None  # 404


def test_served_models_raises_oserror_when_nothing_listens():
    from llenergymeasure.online.http import served_models

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        served_models(f"http://127.0.0.1:{port}", timeout_s=2)


def canned_stream(events: list[dict], head: str = "") -> RequestRecord:
    """One request against a server that streams exactly ``events`` (then ``[DONE]``).

    ``head``: extra response header lines (each ending in CRLF).
    """
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    async def exchange() -> RequestRecord:
        async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request_head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in request_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + head.encode() + b"\r\n"
            )
            writer.write(body.encode())
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(reply, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        client = OpenAIStreamClient(
            f"http://127.0.0.1:{port}", "m", api="chat", continuous_usage=True
        )
        async with srv:
            return await client.send(StreamRequest("hi", 3))

    return asyncio.run(exchange())


def test_continuous_usage_missing_on_some_chunks_does_not_count_their_tokens_twice():
    # a server that puts the running count on some chunks only (here: the role chunk and the
    # last one): the chunks without it are counted by their text, and the next count adds only
    # the tokens not counted yet
    def delta(text: str, usage: int | None = None, finish: str | None = None) -> dict:
        event: dict = {"choices": [{"index": 0, "delta": {"content": text}}]}
        if finish:
            event["choices"][0]["finish_reason"] = finish
        if usage is not None:
            event["usage"] = {"prompt_tokens": 2, "completion_tokens": usage}
        return event

    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    role["usage"] = {"prompt_tokens": 2, "completion_tokens": 0}
    record = canned_stream(
        [
            role,
            delta("a"),
            delta("b"),
            delta("c", usage=3, finish="length"),
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
        ]
    )
    assert record.ok and record.output_tokens_usage == 3
    assert record.chunk_tokens == [1, 1, 1]
    assert record.output_tokens_stream == 3


@pytest.mark.parametrize(
    ("events", "head"),
    [
        ([{"choices": 5}], ""),  # choices that are not a list
        ([{"choices": [{"delta": "text"}]}], ""),  # a delta that is not an object
        ([{"choices": [{"delta": {"content": "a"}}]}], "Content-Length: many\r\n"),
    ],
)
def test_a_malformed_response_is_a_failed_request_not_an_exception(events, head):
    # an exception out of send would end the whole load run and lose every record
    record = canned_stream(events, head)
    assert not record.ok and record.error is not None
    assert record.error.startswith(("bad response", "non-OpenAI response"))
