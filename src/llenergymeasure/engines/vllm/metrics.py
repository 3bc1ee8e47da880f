"""What vLLM reports about its own work: per-request timings of one ``LLM.generate`` call
(``RequestOutput.metrics``, the fallback where the engine has no step loop to stamp) and the
prefix-cache counters of ``LLM.get_metrics()``.

Request timings: V1 ``first_token_latency`` (TTFT) and ``last_token_ts - first_token_ts``
(decode time); V0 ``first_token_time - arrival_time`` and ``last_token_time -
first_token_time``. vLLM records only the first and last token times, so each request's
``itl_s`` holds its mean inter-token interval, once per gap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["prefix_cache_counters", "request_timings", "window_prefix_cache"]


def _seconds(value: Any) -> float | None:
    """A float (or timedelta) timestamp/duration; None for missing or zero."""
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def request_timings(
    output: Any, n_out: int
) -> tuple[float | None, float | None, list[float]] | None:
    """(ttft_s, latency_s, itl_s) of one ``RequestOutput`` from its metrics; None if absent.

    V1 ``RequestStateStats``: TTFT = ``first_token_latency``; decode = ``last_token_ts -
    first_token_ts`` (engine-core monotonic clock). V0 ``RequestMetrics``: TTFT =
    ``first_token_time - arrival_time``; decode = ``last_token_time - first_token_time``.
    ``itl_s`` is the mean interval (decode / (n_out - 1)) once per gap.
    """
    m = getattr(output, "metrics", None)
    if m is None:
        return None
    if hasattr(m, "first_token_latency"):  # V1 RequestStateStats
        ttft = _seconds(m.first_token_latency)
        first, last = (
            _seconds(getattr(m, "first_token_ts", None)),
            _seconds(getattr(m, "last_token_ts", None)),
        )
    elif hasattr(m, "first_token_time"):  # V0 RequestMetrics
        arrival = _seconds(getattr(m, "arrival_time", None))
        first = _seconds(m.first_token_time)
        last = _seconds(getattr(m, "last_token_time", None))
        ttft = first - arrival if first is not None and arrival is not None else None
    else:
        return None
    if ttft is None:
        return None
    decode = last - first if first is not None and last is not None and last >= first else None
    latency = ttft + decode if decode is not None else None
    itl: list[float] = []
    if decode is not None and n_out > 1:
        itl = [decode / (n_out - 1)] * (n_out - 1)
    return ttft, latency, itl


def prefix_cache_counters(llm: Any) -> tuple[int, int] | None:
    """(queries, hits) in tokens from ``LLM.get_metrics()``; None where not exposed."""
    get_metrics = getattr(llm, "get_metrics", None)
    if not callable(get_metrics):
        return None
    try:
        metrics = get_metrics()
    except Exception:
        return None
    totals = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
    found = False
    for metric in metrics:
        name = getattr(metric, "name", None)
        if name in totals:
            totals[name] += int(getattr(metric, "value", 0) or 0)
            found = True
    if not found:
        return None
    return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]


def window_prefix_cache(llm: Any, start: tuple[int, int] | None) -> dict[str, Any] | None:
    """Prefix-cache queries, hits and hit rate since ``start`` (the counters when the window
    started), from vLLM's counters; None where vLLM does not expose them."""
    now = prefix_cache_counters(llm)
    if now is None:
        return None
    start = start or (0, 0)
    queries, hits = now[0] - start[0], now[1] - start[1]
    return {
        "queries_tokens": queries,
        "hits_tokens": hits,
        "hit_rate": round(hits / queries, 6) if queries > 0 else None,
        "source": "LLM.get_metrics(): vllm:prefix_cache_queries / vllm:prefix_cache_hits",
    }
