"""Fake ``vllm.outputs`` plus the metrics types it carries (vLLM 0.11.x names).

``RequestStateStats`` is V1's ``vllm/v1/metrics/stats.py`` (arrival_time is wall clock, the
``*_ts`` fields are engine-core monotonic); ``RequestMetrics`` is V0's ``vllm/sequence.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RequestStateStats:
    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    is_corrupted: bool = False


@dataclass
class RequestMetrics:
    arrival_time: float
    last_token_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    time_in_queue: float | None
    finished_time: float | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None
    lora_request: Any = None
