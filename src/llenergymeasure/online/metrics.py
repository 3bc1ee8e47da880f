"""Online-mode metrics: latency percentiles, goodput against SLOs, energy per request and token.

All figures come from the client's records (``RequestRecord``) and the measurement window.
Latency distributions: TTFT and TPOT per successful request, ITL over every gap between
consecutive streamed chunks that carried tokens of every successful request, end-to-end per
successful request. Under load a server may merge several tokens into one chunk (vLLM does):
that chunk's gap is one ITL value, not split between its tokens, as in vLLM's own benchmark
(``vllm bench serve``); ``mean_tokens_per_chunk`` and ``n_multi_token_chunks`` show how often it
happened. TPOT divides by the output token count, so merging does not bias it. A request whose
stream showed no chunk with tokens (``n_ok_without_token_chunks``) has no TTFT or ITL.
Percentiles interpolate linearly between order statistics (numpy's default).

Energy: ``energy_j`` is the window's GPU energy; the adjusted figure subtracts the idle share
``baseline_power_w * window_s`` (at low request rates most of the window's energy is idle, so
both are shown). Per-request and per-token figures divide by the successful requests and their
output tokens; J per SLO-meeting request divides by the requests that met every target.

The models (``OnlineMetrics``, ``LatencyStats``) live in ``results.online`` and are re-exported
here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from llenergymeasure.config.online import SLOConfig
from llenergymeasure.energy.maths import adjusted_energy_j, energy_per
from llenergymeasure.online.records import RequestRecord
from llenergymeasure.results.online import LatencyStats, OnlineMetrics

__all__ = [
    "LatencyStats",
    "OnlineMetrics",
    "compute_online_metrics",
    "latency_stats",
    "meets_slo",
    "percentile",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; ``values`` must be non-empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_stats(values_s: Sequence[float]) -> LatencyStats | None:
    """Stats of ``values_s`` (seconds) in ms; ``None`` for no values."""
    if not values_s:
        return None
    ms = [v * 1000.0 for v in values_s]
    return LatencyStats(
        count=len(ms),
        mean_ms=sum(ms) / len(ms),
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
    )


def _has_targets(slo: SLOConfig | None) -> bool:
    return slo is not None and any(t is not None for t in (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms))


def meets_slo(record: RequestRecord, slo: SLOConfig) -> bool:
    """Whether a successful ``record`` meets every target set in ``slo``.

    A request with fewer than two output tokens has no TPOT and meets a TPOT target; one with
    no token at all has no TTFT and misses a TTFT target. One whose tokens were never seen
    arriving (no chunk with a token, although ``usage`` counts two or more) has a TPOT that
    cannot be timed: it misses a TPOT target rather than pass unchecked.
    """
    if not record.ok:
        return False
    if slo.ttft_ms is not None and (record.ttft_s is None or record.ttft_s * 1000 > slo.ttft_ms):
        return False
    tpot = record.tpot_s
    if slo.tpot_ms is not None:
        if tpot is None and record.output_tokens >= 2:
            return False
        if tpot is not None and tpot * 1000 > slo.tpot_ms:
            return False
    return not (slo.e2e_ms is not None and record.e2e_s * 1000 > slo.e2e_ms)


def compute_online_metrics(
    records: Sequence[RequestRecord],
    *,
    window_s: float,
    slo: SLOConfig | None = None,
    energy_j: float | None = None,
    baseline_power_w: float | None = None,
    energy_window_s: float | None = None,
) -> OnlineMetrics:
    """Metrics of the measured ``records`` over a window of ``window_s`` seconds.

    ``energy_window_s`` is the duration the energy backend measured over (its ``begin`` to
    ``end``), used for the idle share and mean power; default ``window_s``.
    """
    if not math.isfinite(window_s) or window_s <= 0:
        raise ValueError(f"window_s must be a finite duration > 0, got {window_s}")
    energy_s = window_s if energy_window_s is None else energy_window_s
    if not math.isfinite(energy_s) or energy_s <= 0:
        raise ValueError(f"energy_window_s must be a finite duration > 0, got {energy_s}")
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    errors = Counter((r.error or "unknown").split(":", 1)[0] for r in failed)
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_counts = [r.prompt_tokens_usage for r in ok]
    prompt_tokens = (
        sum(p for p in prompt_counts if p is not None)
        if ok and all(p is not None for p in prompt_counts)
        else None
    )

    n_slo_met: int | None = None
    goodput: float | None = None
    if slo is not None and _has_targets(slo):
        n_slo_met = sum(1 for r in ok if meets_slo(r, slo))
        goodput = n_slo_met / window_s

    chunk_tokens = [n for r in ok for n in r.tokens_per_chunk]
    adjusted = (
        adjusted_energy_j(energy_j, baseline_power_w, energy_s)
        if energy_j is not None and baseline_power_w is not None
        else None
    )
    return OnlineMetrics(
        n_requests=len(records),
        n_ok=len(ok),
        n_failed=len(failed),
        errors=dict(errors),
        duration_s=window_s,
        output_tokens=output_tokens,
        prompt_tokens=prompt_tokens,
        request_throughput_per_s=len(ok) / window_s,
        output_throughput_tok_per_s=output_tokens / window_s,
        ttft=latency_stats([t for r in ok if (t := r.ttft_s) is not None]),
        tpot=latency_stats([t for r in ok if (t := r.tpot_s) is not None]),
        itl=latency_stats([gap for r in ok for gap in r.itls_s]),
        e2e=latency_stats([r.e2e_s for r in ok]),
        mean_tokens_per_chunk=sum(chunk_tokens) / len(chunk_tokens) if chunk_tokens else None,
        n_multi_token_chunks=sum(1 for n in chunk_tokens if n > 1),
        n_ok_without_token_chunks=sum(
            1 for r in ok if (r.output_tokens_usage or 0) > 0 and not r.chunk_times_s
        ),
        slo=slo,
        n_slo_met=n_slo_met,
        goodput_per_s=goodput,
        energy_j=energy_j,
        baseline_power_w=baseline_power_w,
        adjusted_energy_j=adjusted,
        mean_power_w=None if energy_j is None else energy_j / energy_s,
        energy_per_request_j=energy_per(energy_j, len(ok)),
        adjusted_energy_per_request_j=energy_per(adjusted, len(ok)),
        energy_per_output_token_j=energy_per(energy_j, output_tokens),
        adjusted_energy_per_output_token_j=energy_per(adjusted, output_tokens),
        energy_per_slo_request_j=energy_per(energy_j, n_slo_met or 0),
        adjusted_energy_per_slo_request_j=energy_per(adjusted, n_slo_met or 0),
    )
