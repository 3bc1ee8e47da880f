"""What an online run stores in its result: latency, goodput and energy figures, and the setup.

These models live with the other result models so that ``ExperimentResult.online`` can name them
(results sit below the harness floor, where the online measurement itself runs).
``online.metrics`` computes ``OnlineMetrics``; ``online.run`` summarises a run as
``OnlineResult``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llenergymeasure.config.online import SLOConfig

__all__ = ["LatencyStats", "OnlineMetrics", "OnlineResult"]


class LatencyStats(BaseModel):
    """Summary of one latency distribution, in milliseconds."""

    model_config = {"extra": "forbid"}

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class OnlineMetrics(BaseModel):
    """Latency, throughput, goodput and energy of one online run.

    ``errors`` counts failed requests by kind (the part of the error before its first colon,
    e.g. ``"HTTP 500"``, ``"timeout"``). ``goodput_per_s`` is requests that met every SLO target
    per second of window (``None`` without targets). Energy fields are ``None`` when energy was
    not measured; ``adjusted_*`` also need the baseline. A value divided by zero requests or
    tokens is ``None``.
    """

    model_config = {"extra": "forbid"}

    n_requests: int
    n_ok: int
    n_failed: int
    errors: dict[str, int]
    duration_s: float
    output_tokens: int
    prompt_tokens: int | None
    request_throughput_per_s: float
    output_throughput_tok_per_s: float
    ttft: LatencyStats | None
    tpot: LatencyStats | None
    itl: LatencyStats | None
    e2e: LatencyStats | None
    slo: SLOConfig | None
    n_slo_met: int | None
    goodput_per_s: float | None
    energy_j: float | None
    baseline_power_w: float | None
    adjusted_energy_j: float | None
    mean_power_w: float | None
    energy_per_request_j: float | None
    adjusted_energy_per_request_j: float | None
    energy_per_output_token_j: float | None
    adjusted_energy_per_output_token_j: float | None
    energy_per_slo_request_j: float | None
    adjusted_energy_per_slo_request_j: float | None


class OnlineResult(BaseModel):
    """The online part of an ``ExperimentResult``: how the load was sent and what it measured.

    ``achieved_rate_per_s`` / ``scheduled_rate_per_s`` and ``client_cpu_s`` show whether the
    client kept up with its schedule. ``server_log`` is the log's file name beside
    ``result.json`` (a started server only); every request record is in
    ``online_requests.json`` beside it.
    """

    model_config = {"extra": "forbid"}

    endpoint: str
    request_model: str
    api: Literal["chat", "completions"]
    arrival: str
    burstiness: float | None
    request_rate: float | Literal["inf"]
    max_concurrency: int | None
    max_tokens: int
    ignore_eos_sent: bool
    achieved_rate_per_s: float | None
    scheduled_rate_per_s: float | None
    client_cpu_s: float
    max_schedule_lag_s: float
    n_warmup_requests: int
    server_command: list[str] | None = None
    server_log: str | None = None
    server_ready_s: float | None = None
    metrics: OnlineMetrics
    warnings: list[str] = Field(default_factory=list)
