"""A streaming OpenAI-compatible client on httpx, with bounded reads and one deadline a request.

``OpenAIStreamClient.send`` posts one streaming request to ``/v1/completions`` or
``/v1/chat/completions`` and returns a ``RequestRecord`` (``online.records``): when it was
sent, when each streamed chunk that carried output tokens arrived and how many it carried (the
first such chunk is the TTFT), when the stream ended, and how many output tokens the server's
``usage`` reports.
Failures (connection refused, HTTP status, timeout, a stream that is not OpenAI's SSE, a stream
cut short, a malformed or oversized response) are recorded on the record, never raised: a load
run keeps going.

HTTP is httpx on aiohttp's transport (``httpx-aiohttp``: HTTP/1.1 parsed in C, connection
pooling inside ``async with client:``; a bare ``send`` uses a connection of its own) and SSE is
httpx-sse's parser (the pool and the pre-flight GETs are ``online.http``'s). What a server can
make the client do is bounded:

- one deadline per request (``timeout_s``), whatever the server does: a server that sends a byte
  every few seconds, before or after its headers, cannot keep a request open past it;
- one SSE line is at most ``max_line_bytes`` and one response body at most ``max_body_bytes``
  (default: 16 MiB + 16 KiB per requested token); more fails the request;
- an error body is read up to 4 KiB only; a stream with more tokens than ``max_tokens`` fails;
- the server's ``usage`` is checked: a count that is not a non-negative integer, exceeds
  ``max_tokens`` or is below the tokens the stream carried is not used (``usage_rejected`` on
  the record says why; the stream's count stands).

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
load driver. A chunk's time is taken when the bytes that complete it come off the socket, before
they are parsed. An API key (``api_key``) goes in an ``Authorization: Bearer`` header only; it
is never part of a record, and a server that echoes it in an error has it masked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llenergymeasure.config.online import OnlineApi
from llenergymeasure.online.http import async_client, error_message, read_prefix, without_userinfo
from llenergymeasure.online.records import RequestRecord, StreamRequest

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAIStreamClient"]

#: Longest SSE line accepted (bytes); a server sending more fails the request.
MAX_LINE_BYTES = 1 << 20
#: Body allowance of a streamed response: this much plus ``BODY_BYTES_PER_TOKEN`` a token.
MIN_BODY_BYTES = 16 << 20
BODY_BYTES_PER_TOKEN = 16 << 10
_MAX_ERROR_BODY = 4096


class _RequestFailed(Exception):
    """A failure to record on the request (not raised out of the client)."""


@dataclass
class _Progress:
    """Mutable state of a request in flight, kept when a timeout cancels it."""

    send_time_s: float
    max_tokens: int
    http_status: int | None = None
    first_token_time_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens_stream: int = 0
    output_tokens_usage: int | None = None
    prompt_tokens_usage: int | None = None
    finish_reason: str | None = None
    usage_rejected: str | None = None
    done: bool = False
    saw_data: bool = False
    headers_received: bool = False

    def reject_usage(self, reason: str) -> None:
        """Stop believing the server's usage for this request: the stream's count stands."""
        if self.usage_rejected is None:
            self.usage_rejected = reason
        self.output_tokens_usage = None

    def timeout_message(self, timeout_s: float) -> str:
        if not self.headers_received:
            return f"timeout: no response headers within {timeout_s:g} s"
        return (
            f"timeout: the response was not complete within {timeout_s:g} s "
            f"({self.output_tokens_stream} tokens received)"
        )


def _count(value: Any) -> int | None:
    """``value`` if it is a JSON integer (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _BoundedBody:
    """The raw body as it arrives, stamped, with the line, body and deadline bounds enforced.

    ``arrived_s`` is the ``clock`` time at which the last piece came off the socket: the time of
    every event that piece completes.
    """

    def __init__(
        self,
        source: AsyncIterator[bytes],
        *,
        clock: Callable[[], float],
        deadline: float,
        max_line_bytes: int,
        max_body_bytes: int,
    ) -> None:
        self._source = source
        self._clock = clock
        self._deadline = deadline
        self._max_line = max_line_bytes
        self._max_body = max_body_bytes
        self.arrived_s = clock()
        self.body_bytes = 0
        self._line_bytes = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        async for piece in self._source:
            self.arrived_s = self._clock()
            if time.monotonic() > self._deadline:
                raise asyncio.TimeoutError
            self.body_bytes += len(piece)
            if self.body_bytes > self._max_body:
                raise _RequestFailed(
                    f"response too large: the server sent more than {self._max_body} bytes"
                )
            cut = max(piece.rfind(b"\n"), piece.rfind(b"\r"))
            self._line_bytes = self._line_bytes + len(piece) if cut < 0 else len(piece) - cut - 1
            if self._line_bytes > self._max_line:
                raise _RequestFailed(
                    f"response line too long: more than {self._max_line} bytes without a newline"
                )
            yield piece


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

    ``async with client:`` keeps one connection pool for the requests sent inside it (the load
    driver does); a ``send`` outside opens and closes its own connection.
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
        max_line_bytes: int = MAX_LINE_BYTES,
        max_body_bytes: int | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if continuous_usage and not include_usage:
            raise ValueError("continuous_usage needs include_usage (servers ignore it alone)")
        if max_line_bytes < 1 or (max_body_bytes is not None and max_body_bytes < 1):
            raise ValueError("max_line_bytes and max_body_bytes must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api: OnlineApi = api
        self.timeout_s = timeout_s
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.sampling = dict(sampling or {})
        self.max_line_bytes = max_line_bytes
        self.max_body_bytes = max_body_bytes
        self._api_key = api_key or None
        self._clock = clock
        prefix = parts.path.rstrip("/")
        if not prefix.endswith("/v1"):
            prefix += "/v1"
        self.path = prefix + ("/chat/completions" if api == "chat" else "/completions")
        origin, self._basic_auth = without_userinfo(f"{parts.scheme}://{parts.netloc}")
        self.url = origin + self.path
        self._pool: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIStreamClient({self.base_url!r}, {self.model!r}, api={self.api!r})"

    async def __aenter__(self) -> OpenAIStreamClient:
        if self._pool is not None:
            raise RuntimeError("the client's connection pool is already open")
        self._pool = async_client(self.timeout_s, self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

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

    def body_limit(self, max_tokens: int) -> int:
        """Most bytes a streamed response to a request for ``max_tokens`` tokens may have."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return MIN_BODY_BYTES + BODY_BYTES_PER_TOKEN * max(0, max_tokens)

    async def send(self, request: StreamRequest, index: int = 0) -> RequestRecord:
        """Send one streaming request and record how it went (never raises on failure)."""
        progress = _Progress(send_time_s=self._clock(), max_tokens=request.max_tokens)
        error: str | None = None
        try:
            if self._pool is not None:
                await self._timed_exchange(self._pool, request, progress)
            else:
                async with async_client(self.timeout_s, self.url) as pool:
                    await self._timed_exchange(pool, request, progress)
        except asyncio.TimeoutError:
            error = progress.timeout_message(self.timeout_s)
        except _RequestFailed as exc:
            error = self._mask(str(exc))
        except Exception as exc:  # transport or malformed response: this request fails only
            error = self._mask(_failure(exc, progress, self.timeout_s))
        end = self._clock()
        if error is None and not (progress.done or progress.finish_reason is not None):
            error = (
                "stream ended before [DONE]: the server closed the connection mid-stream"
                if progress.saw_data
                else "non-OpenAI response: no SSE 'data:' lines in the body"
            )
        usage = progress.output_tokens_usage
        if usage is not None and usage < progress.output_tokens_stream:
            progress.reject_usage(
                f"usage.completion_tokens={usage} contradicts the stream, which carried "
                f"{progress.output_tokens_stream} tokens"
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
            usage_rejected=progress.usage_rejected,
        )

    def _mask(self, text: str) -> str:
        """``text`` with the API key masked (a server may echo the request's headers)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        elif self._basic_auth is not None:
            headers["Authorization"] = self._basic_auth
        return headers

    async def _timed_exchange(
        self, pool: httpx.AsyncClient, request: StreamRequest, progress: _Progress
    ) -> None:
        deadline = time.monotonic() + self.timeout_s
        await asyncio.wait_for(
            self._exchange(pool, request, progress, deadline), timeout=self.timeout_s
        )

    async def _exchange(
        self,
        pool: httpx.AsyncClient,
        request: StreamRequest,
        progress: _Progress,
        deadline: float,
    ) -> None:
        import httpx
        from httpx_sse import EventSource

        payload = json.dumps(self.body(request)).encode()
        async with pool.stream("POST", self.url, content=payload, headers=self._headers()) as r:
            progress.headers_received = True
            progress.http_status = r.status_code
            if r.status_code != 200:
                text = await read_prefix(r.aiter_raw(), _MAX_ERROR_BODY)
                raise _RequestFailed(f"HTTP {r.status_code}: {error_message(text)}")
            ctype = r.headers.get("content-type")
            if ctype is not None and ctype.partition(";")[0].strip().lower() != (
                "text/event-stream"
            ):
                raise _RequestFailed(
                    f"non-OpenAI response: content-type {ctype[:60]!r}, not text/event-stream"
                )
            encoding = r.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise _RequestFailed(
                    f"non-OpenAI response: a {encoding[:20]!r}-encoded stream (identity was asked)"
                )
            body = _BoundedBody(
                r.aiter_raw(),
                clock=self._clock,
                deadline=deadline,
                max_line_bytes=self.max_line_bytes,
                max_body_bytes=self.body_limit(request.max_tokens),
            )
            sse = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
            events = EventSource(sse).aiter_sse()
            try:
                async for event in events:
                    self._on_data(event.data, body.arrived_s, progress)
                    if progress.done:
                        break
            finally:
                await events.aclose()

    def _on_data(self, data: str, now: float, progress: _Progress) -> None:
        data = data.strip()
        if not data:
            return  # an event without data (comments, keep-alives, event:/id:/retry: only)
        progress.saw_data = True
        if data == "[DONE]":
            progress.done = True
            return
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise _RequestFailed(
                f"non-OpenAI response: data line is not JSON: {data[:80]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise _RequestFailed(f"non-OpenAI response: data line is not an object: {data[:80]!r}")
        if "error" in chunk or chunk.get("object") == "error":
            raise _RequestFailed(f"server error in stream: {error_message(data)}")
        usage = chunk.get("usage")
        completion_tokens = self._read_usage(usage, progress)
        choices = chunk.get("choices")
        if choices is None and usage is None:
            raise _RequestFailed(f"non-OpenAI response: chunk has no choices: {data[:80]!r}")
        if choices is not None and not isinstance(choices, list):
            raise _RequestFailed(f"non-OpenAI response: choices is not a list: {data[:80]!r}")
        tokens = 0
        for choice in choices or []:
            if not isinstance(choice, dict):
                continue
            tokens += self._choice_tokens(choice)
            if choice.get("finish_reason"):
                progress.finish_reason = str(choice["finish_reason"])[:64]
        if self.continuous_usage and choices and completion_tokens is not None:
            # the cumulative count is exact: it includes tokens that decode to no text. Its
            # increase over the tokens counted so far, not over the last count seen: chunks
            # that came without a count were counted by their text and must not count twice
            tokens = max(0, completion_tokens - progress.output_tokens_stream)
        if tokens > 0:
            if progress.output_tokens_stream + tokens > progress.max_tokens:
                raise _RequestFailed(
                    f"the server streamed more than max_tokens={progress.max_tokens} tokens "
                    f"({progress.output_tokens_stream + tokens})"
                )
            if progress.first_token_time_s is None:
                progress.first_token_time_s = now
            progress.chunk_times_s.append(now)
            progress.chunk_tokens.append(tokens)
            progress.output_tokens_stream += tokens

    def _read_usage(self, usage: Any, progress: _Progress) -> int | None:
        """Take a chunk's ``usage``; its ``completion_tokens`` when believable, else ``None``."""
        if usage is None:
            return None
        if not isinstance(usage, dict):
            progress.reject_usage(f"usage is not an object: {str(usage)[:40]!r}")
            return None
        if "prompt_tokens" in usage:
            prompt = _count(usage["prompt_tokens"])
            if prompt is None or prompt < 0:
                progress.reject_usage(
                    f"usage.prompt_tokens={str(usage['prompt_tokens'])[:40]} is not a "
                    "non-negative integer"
                )
                progress.prompt_tokens_usage = None
            elif progress.usage_rejected is None:
                progress.prompt_tokens_usage = prompt
        if "completion_tokens" not in usage or progress.usage_rejected is not None:
            return None
        raw = usage["completion_tokens"]
        count = _count(raw)
        if count is None or count < 0:
            progress.reject_usage(
                f"usage.completion_tokens={str(raw)[:40]} is not a non-negative integer"
            )
            return None
        if count > progress.max_tokens:
            progress.reject_usage(
                f"usage.completion_tokens={count} is more than max_tokens={progress.max_tokens}"
            )
            return None
        if progress.output_tokens_usage is not None and count < progress.output_tokens_usage:
            progress.reject_usage(
                f"usage.completion_tokens went down from {progress.output_tokens_usage} to {count}"
            )
            return None
        progress.output_tokens_usage = count
        return count

    def _choice_tokens(self, choice: dict[str, Any]) -> int:
        """Tokens one choice carries without continuous usage: its token ids, else 1 for text."""
        token_ids = choice.get("token_ids")
        if isinstance(token_ids, list) and token_ids:
            return len(token_ids)
        if self.api == "chat":
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise _RequestFailed(f"non-OpenAI response: delta is not an object: {delta!r:.80}")
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        else:
            text = choice.get("text")
        return 1 if text else 0


def _failure(exc: BaseException, progress: _Progress, timeout_s: float) -> str:
    """What an error out of the exchange means for the request, judged by the original aiohttp
    error (httpx's aiohttp transport re-raises them as httpx errors of a kind that need not
    match)."""
    import aiohttp
    import httpx

    cause: BaseException = exc
    while not isinstance(cause, aiohttp.ClientError) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    headers = progress.headers_received
    if isinstance(cause, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        return progress.timeout_message(timeout_s)
    if isinstance(cause, aiohttp.ClientPayloadError):  # the body ended before its end
        return (
            "stream ended before [DONE]: the server closed the connection mid-stream"
            if progress.saw_data
            else "connection closed by the server mid-response"
        )
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        if not headers:
            return "connection closed by the server before a response"
        return (
            "stream ended before [DONE]: the server closed the connection mid-stream"
            if progress.saw_data
            else "connection closed by the server mid-response"
        )
    if isinstance(cause, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        return f"bad response: HTTP protocol error: {text[:300]}"
    if isinstance(cause, (aiohttp.ClientConnectionError, httpx.TransportError, OSError)):
        return f"connection failed: {type(cause).__name__}: {text[:300]}"
    return f"bad response: {type(cause).__name__}: {text[:300]}"
