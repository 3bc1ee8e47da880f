"""A streaming OpenAI-compatible client on the standard library (asyncio streams).

``OpenAIStreamClient.send`` posts one streaming request to ``/v1/completions`` or
``/v1/chat/completions`` and returns a ``RequestRecord``: when it was sent, when each streamed
chunk that carried output tokens arrived and how many it carried (the first such chunk is the
TTFT), when the stream ended, and how many output tokens the server's ``usage`` reports.
Failures (connection refused, HTTP status, timeout, a stream that is not OpenAI's SSE, a stream
cut short, a malformed response) are recorded on the record, never raised: a load run keeps
going.

How many tokens a chunk carries, most exact first:

1. with ``continuous_usage`` (``stream_options.continuous_usage_stats``, taken by vLLM, SGLang
   and trtllm-serve), the increase of the chunk's cumulative ``usage.completion_tokens`` over
   the tokens counted so far (0: no token; tokens of a chunk the server did not send are counted
   on its next chunk; a chunk that came without the count is counted by the rules below);
2. else the length of the choice's ``token_ids`` (vLLM's ``return_token_ids``);
3. else 1 when the chunk has text (``text`` or the chat ``delta``'s content), 0 otherwise.

The text rule misses tokens that decode to no text (a partial UTF-8 character, a token of a
vocabulary larger than its tokenizer) and counts a chunk that merges several tokens (vLLM does
under load) as one: only the first two rules count those exactly.

Times come from ``clock`` (``time.perf_counter`` by default) so they share one origin with the
load driver. Each request opens its own HTTP/1.1 connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator

from llenergymeasure.config.online import OnlineApi

__all__ = ["OpenAIStreamClient", "RequestRecord", "StreamRequest", "served_models"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_ERROR_BODY = 4096


@dataclass(frozen=True)
class StreamRequest:
    """One request to send: the prompt, its output budget and whether to force the length.

    ``ignore_eos`` is vLLM's extension (also TensorRT-LLM's); send it only to servers that take
    it (transformers serve refuses unknown fields with HTTP 422).
    """

    prompt: str
    max_tokens: int
    ignore_eos: bool = False


class RequestRecord(BaseModel):
    """What happened to one streamed request. Times are ``clock`` seconds (perf_counter).

    ``chunk_times_s`` holds the arrival time of every streamed chunk that carried output tokens
    and ``chunk_tokens`` how many each carried (see the module docstring; records written before
    it existed leave it empty, meaning one token a chunk); ``output_tokens_stream`` is their sum;
    ``output_tokens_usage`` is the server's ``usage.completion_tokens`` when sent.
    """

    model_config = {"extra": "forbid"}

    index: int
    ok: bool
    error: str | None = None
    http_status: int | None = None
    send_time_s: float
    first_token_time_s: float | None = None
    chunk_times_s: list[float] = Field(default_factory=list)
    chunk_tokens: list[int] = Field(default_factory=list)
    end_time_s: float
    output_tokens_stream: int = 0
    output_tokens_usage: int | None = None
    prompt_tokens_usage: int | None = None
    finish_reason: str | None = None

    @model_validator(mode="after")
    def _check_chunk_tokens(self) -> RequestRecord:
        if self.chunk_tokens and len(self.chunk_tokens) != len(self.chunk_times_s):
            raise ValueError(
                f"chunk_tokens has {len(self.chunk_tokens)} counts for "
                f"{len(self.chunk_times_s)} chunk times"
            )
        if any(n < 1 for n in self.chunk_tokens):
            raise ValueError("chunk_tokens: every recorded chunk carries at least one token")
        return self

    @property
    def tokens_per_chunk(self) -> list[int]:
        """Tokens each chunk of ``chunk_times_s`` carried (1 each for records without counts)."""
        return list(self.chunk_tokens) if self.chunk_tokens else [1] * len(self.chunk_times_s)

    @property
    def output_tokens(self) -> int:
        """Output tokens: the server's ``usage`` when given, else those counted in the stream."""
        if self.output_tokens_usage is not None:
            return self.output_tokens_usage
        return self.output_tokens_stream

    @property
    def ttft_s(self) -> float | None:
        """Time to first token (send -> first chunk that carried a token)."""
        if self.first_token_time_s is None:
            return None
        return self.first_token_time_s - self.send_time_s

    @property
    def e2e_s(self) -> float:
        """End-to-end latency (send -> end of stream)."""
        return self.end_time_s - self.send_time_s

    @property
    def itls_s(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive chunks that carried tokens.

        A chunk may carry several tokens (servers merge them under load): its gap is counted
        once, not split between its tokens, as vLLM's own ``vllm bench serve`` does.
        """
        t = self.chunk_times_s
        return [t[i + 1] - t[i] for i in range(len(t) - 1)]

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (end - first token) / (tokens - 1).

        The usual serving-benchmark definition ((e2e - TTFT) / (output tokens - 1)); it holds
        when a server bundles several tokens in a chunk or streams a final chunk without text.
        ``None`` when fewer than two tokens came back (no decode step to time).
        """
        if self.first_token_time_s is None:
            return None
        tokens = self.output_tokens
        if tokens < 2:
            return None
        return (self.end_time_s - self.first_token_time_s) / (tokens - 1)


@dataclass
class _Progress:
    """Mutable state of a request in flight, kept when a timeout cancels it."""

    send_time_s: float
    http_status: int | None = None
    first_token_time_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens_stream: int = 0
    output_tokens_usage: int | None = None
    prompt_tokens_usage: int | None = None
    finish_reason: str | None = None
    done: bool = False
    saw_data: bool = False


class _RequestFailed(Exception):
    """A failure to record on the request (not raised out of the client)."""


class OpenAIStreamClient:
    """Streams requests to one OpenAI-compatible server.

    ``base_url`` is ``http(s)://host:port`` optionally followed by a path prefix (``/v1`` is
    added unless the prefix already ends in it). ``sampling`` adds fields to every request body
    (``temperature``, ``top_p``, ...). ``include_usage`` asks for a final ``usage`` chunk
    (``stream_options``), which servers that ignore it simply do not send.
    ``continuous_usage`` also asks for the cumulative ``usage`` on every chunk
    (``stream_options.continuous_usage_stats``: vLLM, SGLang, trtllm-serve) and counts each
    chunk's tokens from it; it needs ``include_usage``, and servers that check request fields
    strictly refuse it (transformers serve answers HTTP 422; OpenAI's API has no such option).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: OnlineApi = "completions",
        timeout_s: float = 600.0,
        include_usage: bool = True,
        continuous_usage: bool = False,
        sampling: dict[str, Any] | None = None,
        api_key: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if continuous_usage and not include_usage:
            raise ValueError("continuous_usage needs include_usage (servers ignore it alone)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api: OnlineApi = api
        self.timeout_s = timeout_s
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.sampling = dict(sampling or {})
        self._api_key = api_key
        self._clock = clock
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        prefix = parts.path.rstrip("/")
        if not prefix.endswith("/v1"):
            prefix += "/v1"
        self.path = prefix + ("/chat/completions" if api == "chat" else "/completions")

    def body(self, request: StreamRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        body: dict[str, Any] = {"model": self.model, "stream": True}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        body["max_tokens"] = request.max_tokens
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
            if self.continuous_usage:
                body["stream_options"]["continuous_usage_stats"] = True
        if request.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.sampling)
        return body

    async def send(self, request: StreamRequest, index: int = 0) -> RequestRecord:
        """Send one streaming request and record how it went (never raises on failure)."""
        progress = _Progress(send_time_s=self._clock())
        error: str | None = None
        try:
            await asyncio.wait_for(self._exchange(request, progress), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            error = f"timeout: no complete response within {self.timeout_s:g} s"
        except _RequestFailed as exc:
            error = str(exc)
        except (ConnectionError, OSError) as exc:
            error = f"connection failed: {type(exc).__name__}: {exc}"
        except asyncio.IncompleteReadError:
            error = "connection closed by the server mid-response"
        except Exception as exc:  # a malformed response: this request fails, the load goes on
            error = f"bad response: {type(exc).__name__}: {exc}"
        end = self._clock()
        if error is None and not (progress.done or progress.finish_reason is not None):
            error = (
                "stream ended before [DONE]: the server closed the connection mid-stream"
                if progress.saw_data
                else "non-OpenAI response: no SSE 'data:' lines in the body"
            )
        return RequestRecord(
            index=index,
            ok=error is None,
            error=error,
            http_status=progress.http_status,
            send_time_s=progress.send_time_s,
            first_token_time_s=progress.first_token_time_s,
            chunk_times_s=progress.chunk_times_s,
            chunk_tokens=progress.chunk_tokens,
            end_time_s=end,
            output_tokens_stream=progress.output_tokens_stream,
            output_tokens_usage=progress.output_tokens_usage,
            prompt_tokens_usage=progress.prompt_tokens_usage,
            finish_reason=progress.finish_reason,
        )

    async def _exchange(self, request: StreamRequest, progress: _Progress) -> None:
        ctx = ssl.create_default_context() if self._tls else None
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=ctx)
        try:
            payload = json.dumps(self.body(request)).encode()
            head = [
                f"POST {self.path} HTTP/1.1",
                f"Host: {self._host}:{self._port}",
                "Content-Type: application/json",
                "Accept: text/event-stream",
                f"Content-Length: {len(payload)}",
                "Connection: close",
            ]
            if self._api_key:
                head.append(f"Authorization: Bearer {self._api_key}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            status, headers = await _read_head(reader)
            progress.http_status = status
            body = _body(reader, headers)
            if status != 200:
                text = await _collect(body, _MAX_ERROR_BODY)
                raise _RequestFailed(f"HTTP {status}: {_error_message(text)}")
            async for line in _lines(body):
                self._on_line(line, progress)
                if progress.done:
                    break
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _on_line(self, line: str, progress: _Progress) -> None:
        if not line.startswith("data:"):
            return  # blank separators, comments (':'), event:/id:/retry: fields
        data = line[5:].strip()
        if not data:
            return
        now = self._clock()
        progress.saw_data = True
        if data == "[DONE]":
            progress.done = True
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _RequestFailed(
                f"non-OpenAI response: data line is not JSON: {data[:80]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise _RequestFailed(f"non-OpenAI response: data line is not an object: {data[:80]!r}")
        if "error" in chunk or chunk.get("object") == "error":
            raise _RequestFailed(f"server error in stream: {_error_message(data)}")
        usage = chunk.get("usage")
        completion_tokens: int | None = None
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                completion_tokens = usage["completion_tokens"]
                progress.output_tokens_usage = completion_tokens
            if isinstance(usage.get("prompt_tokens"), int):
                progress.prompt_tokens_usage = usage["prompt_tokens"]
        choices = chunk.get("choices")
        if choices is None and usage is None:
            raise _RequestFailed(f"non-OpenAI response: chunk has no choices: {data[:80]!r}")
        tokens = 0
        for choice in choices or []:
            if not isinstance(choice, dict):
                continue
            tokens += self._choice_tokens(choice)
            if choice.get("finish_reason"):
                progress.finish_reason = str(choice["finish_reason"])
        if self.continuous_usage and choices and completion_tokens is not None:
            # the cumulative count is exact: it includes tokens that decode to no text. Its
            # increase over the tokens counted so far, not over the last count seen: chunks
            # that came without a count were counted by their text and must not count twice
            tokens = max(0, completion_tokens - progress.output_tokens_stream)
        if tokens > 0:
            if progress.first_token_time_s is None:
                progress.first_token_time_s = now
            progress.chunk_times_s.append(now)
            progress.chunk_tokens.append(tokens)
            progress.output_tokens_stream += tokens

    def _choice_tokens(self, choice: dict[str, Any]) -> int:
        """Tokens one choice carries without continuous usage: its token ids, else 1 for text."""
        token_ids = choice.get("token_ids")
        if isinstance(token_ids, list) and token_ids:
            return len(token_ids)
        if self.api == "chat":
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        else:
            text = choice.get("text")
        return 1 if text else 0


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise _RequestFailed("connection closed by the server before a response")
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _RequestFailed(f"non-HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > _MAX_HEADER_BYTES:
            raise _RequestFailed("response headers too large")
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives: de-chunked, length-bounded or up to EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return  # cut short: the caller sees no [DONE]
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _RequestFailed(f"bad chunked encoding: {size_line[:40]!r}") from exc
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readline()  # CRLF after the chunk
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                return
            remaining -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def _lines(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    buffer = b""
    async for data in body:
        buffer += data
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


async def _collect(body: AsyncIterator[bytes], limit: int) -> str:
    out = b""
    async for data in body:
        out += data
        if len(out) >= limit:
            break
    return out[:limit].decode("utf-8", errors="replace")


def _error_message(text: str) -> str:
    """The ``message``/``detail`` of an OpenAI/FastAPI error body, else its start."""
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            err = obj.get("error", obj)
            if isinstance(err, dict):
                for key in ("message", "detail"):
                    if key in err:
                        return str(err[key])[:300]
            elif isinstance(err, str):
                return err[:300]
            if "detail" in obj:
                return str(obj["detail"])[:300]
    return text.strip()[:300] or "(empty body)"


def _models_path(base_url: str) -> str:
    prefix = urlsplit(base_url).path.rstrip("/")
    if not prefix.endswith("/v1"):
        prefix += "/v1"
    return prefix + "/models"


def served_models(base_url: str, *, timeout_s: float = 10.0) -> list[str] | None:
    """Model ids the server lists at ``/v1/models``; ``None`` when it gives no such list.

    Raises ``OSError`` (``ConnectionError``, ``TimeoutError``, ...) when the server cannot be
    reached: the caller turns that into an error naming the endpoint.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout_s)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", _models_path(base_url), headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(1 << 20)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"not an HTTP server: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]
