"""What an online run stores in its result: latency, goodput and energy figures, and the setup.

These models live with the other result models so that ``ExperimentResult.online`` can name them
(results sit below the harness floor, where the online measurement itself runs).
``online.metrics`` computes ``OnlineMetrics``; ``online.run_result`` summarises a run as
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

    count: int = Field(description="Values.")
    mean_ms: float = Field(description="Mean, ms.")
    p50_ms: float = Field(description="Median, ms.")
    p90_ms: float = Field(description="90th percentile, ms.")
    p99_ms: float = Field(description="99th percentile, ms.")
    max_ms: float = Field(description="Largest value, ms.")


class OnlineMetrics(BaseModel):
    """Latency, throughput, goodput and energy of one online run.

    ``errors`` counts failed requests by kind (the part of the error before its first colon,
    e.g. ``"HTTP 500"``, ``"timeout"``). ``goodput_per_s`` is requests that met every SLO target
    per second of window (``None`` without targets). Energy fields are ``None`` when energy was
    not measured; ``adjusted_*`` also need the baseline. A value divided by zero requests or
    tokens is ``None``.
    """

    model_config = {"extra": "forbid"}

    n_requests: int = Field(description="Measured requests sent.")
    n_ok: int = Field(description="Requests that completed.")
    n_failed: int = Field(description="Requests that failed.")
    errors: dict[str, int] = Field(description="Failed requests by kind (e.g. HTTP 500, timeout).")
    duration_s: float = Field(
        description="Window from the first send to the last response, seconds."
    )
    output_tokens: int = Field(description="Output tokens of the successful requests.")
    prompt_tokens: int | None = Field(
        description="Prompt tokens as the server reported them (None without usage)."
    )
    request_throughput_per_s: float = Field(description="Completed requests per second.")
    output_throughput_tok_per_s: float = Field(description="Output tokens per second.")
    ttft: LatencyStats | None = Field(description="Time to first token.")
    tpot: LatencyStats | None = Field(
        description="Time per output token, (e2e - TTFT) / (tokens - 1)."
    )
    itl: LatencyStats | None = Field(
        description=(
            "Gaps between consecutive streamed chunks that carried tokens (one gap per chunk, "
            "however many tokens it carried)."
        )
    )
    e2e: LatencyStats | None = Field(description="End-to-end latency.")
    mean_tokens_per_chunk: float | None = Field(
        None,
        description=(
            "Output tokens per streamed chunk that carried tokens, as the client counted them "
            "(above 1 when the server merges tokens under load; exact with continuous usage or "
            "token ids, else 1 per chunk with text). None without such chunks."
        ),
    )
    n_multi_token_chunks: int | None = Field(
        None,
        description=(
            "Streamed chunks counted with more than one token (None in results from before "
            "they were counted)."
        ),
    )
    n_ok_without_token_chunks: int | None = Field(
        None,
        description=(
            "Completed requests whose stream had no chunk with tokens although usage counted "
            "output tokens; TTFT and ITL leave them out (None in results from before they were "
            "counted)."
        ),
    )
    slo: SLOConfig | None = Field(description="The SLO targets used.")
    n_slo_met: int | None = Field(description="Requests that met every target.")
    goodput_per_s: float | None = Field(
        description="Requests meeting every target per second (None without targets)."
    )
    energy_j: float | None = Field(description="GPU energy of the window, J.")
    baseline_power_w: float | None = Field(description="Idle power with the server up, W.")
    adjusted_energy_j: float | None = Field(description="energy_j - idle power x duration, J.")
    mean_power_w: float | None = Field(description="energy_j / duration_s, W.")
    energy_per_request_j: float | None = Field(description="J per completed request.")
    adjusted_energy_per_request_j: float | None = Field(
        description="Adjusted J per completed request."
    )
    energy_per_output_token_j: float | None = Field(description="J per output token.")
    adjusted_energy_per_output_token_j: float | None = Field(
        description="Adjusted J per output token."
    )
    energy_per_slo_request_j: float | None = Field(
        description="J per request that met every target."
    )
    adjusted_energy_per_slo_request_j: float | None = Field(
        description="Adjusted J per request that met every target."
    )


class OnlineResult(BaseModel):
    """The online part of an ``ExperimentResult``: how the load was sent and what it measured.

    ``achieved_rate_per_s`` / ``scheduled_rate_per_s`` and ``client_cpu_s`` show whether the
    client kept up with its schedule. ``server_log`` is the log's file name beside
    ``result.json`` (a started server only); every request record is in
    ``online_requests.json`` beside it.
    """

    model_config = {"extra": "forbid"}

    endpoint: str = Field(description="Server URL measured.")
    request_model: str = Field(description="model field sent with each request.")
    api: Literal["chat", "completions"] = Field(description="completions or chat.")
    arrival: str = Field(description="Arrival process.")
    burstiness: float | None = Field(description="Gamma shape (gamma arrivals only).")
    request_rate: float | Literal["inf"] = Field(
        description="Configured requests per second, or inf."
    )
    max_concurrency: int | None = Field(description="Most requests in flight.")
    max_tokens: int = Field(description="max_tokens sent per request.")
    ignore_eos_sent: bool = Field(description="Whether ignore_eos was sent.")
    continuous_usage_sent: bool = Field(
        False,
        description=(
            "Whether stream_options.continuous_usage_stats was sent (per-chunk token counts)."
        ),
    )
    achieved_rate_per_s: float | None = Field(
        description="Rate at which requests were actually sent."
    )
    scheduled_rate_per_s: float | None = Field(description="Rate of the arrival schedule.")
    client_cpu_s: float = Field(description="CPU seconds the load client used.")
    max_schedule_lag_s: float = Field(
        description="Largest delay of a send behind its schedule, seconds."
    )
    n_warmup_requests: int = Field(description="Warmup requests sent before the window.")
    server_command: list[str] | None = Field(
        None, description="Command line of a server llem started."
    )
    server_log: str | None = Field(None, description="Log file of a server llem started.")
    server_ready_s: float | None = Field(
        None, description="Seconds until the started server answered."
    )
    metrics: OnlineMetrics = Field(description="Latency, throughput, goodput and energy.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Notes about the load or the server (e.g. the client fell behind).",
    )
