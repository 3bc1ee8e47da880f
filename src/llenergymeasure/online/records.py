"""What the streaming client sends (``StreamRequest``) and records (``RequestRecord``) a request.

``online.client`` fills a ``RequestRecord`` as the stream arrives; the load driver, the metrics
and ``online_requests.json`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

__all__ = ["RequestRecord", "StreamRequest"]


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
    and ``chunk_tokens`` how many each carried (see ``online.client``; records written before
    it existed leave it empty, meaning one token a chunk); ``output_tokens_stream`` is their sum;
    ``output_tokens_usage`` is the server's ``usage.completion_tokens`` when sent and believable;
    when it is not (``usage_rejected`` says why) it is ``None`` and the stream's count is used.
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
    usage_rejected: str | None = Field(
        None,
        description=(
            "Why the server's usage was not used (negative, above max_tokens, fewer tokens than "
            "the stream carried, not an integer); the token counts then come from the stream."
        ),
    )

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
