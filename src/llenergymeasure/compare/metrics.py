"""The metrics ``llem compare`` compares: how to read each from a result, its unit and direction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from llenergymeasure.results.models import ExperimentResult

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class CompareMetric:
    """One compared metric: ``key`` (used by ``--fail-if-worse``), label, unit, and which
    direction is better. ``read`` returns the run's value in ``unit`` (None: not measured)."""

    key: str
    label: str
    unit: str
    better: Better
    read: Callable[[ExperimentResult], float | None]
    online_only: bool = False


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _online_energy(result: ExperimentResult, adjusted: bool) -> float | None:
    if result.online is None:
        return None
    m = result.online.metrics
    return m.adjusted_energy_per_request_j if adjusted else m.energy_per_request_j


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


METRICS: tuple[CompareMetric, ...] = (
    CompareMetric(
        "j_per_token", "J / output token", "J", "lower", lambda r: r.energy_per_output_token_j
    ),
    CompareMetric(
        "j_per_token_adjusted",
        "J / output token, baseline-adjusted",
        "J",
        "lower",
        lambda r: r.energy_per_output_token_adjusted_j,
    ),
    CompareMetric(
        "tokens_per_s", "output tokens / s", "tok/s", "higher", lambda r: r.tokens_per_second
    ),
    CompareMetric("ttft_p50", "TTFT p50", "ms", "lower", lambda r: _ms(r.ttft.p50)),
    CompareMetric("ttft_p99", "TTFT p99", "ms", "lower", lambda r: _ms(r.ttft.p99)),
    CompareMetric("itl_p50", "ITL p50", "ms", "lower", lambda r: _ms(r.itl.p50)),
    CompareMetric("itl_p99", "ITL p99", "ms", "lower", lambda r: _ms(r.itl.p99)),
    CompareMetric(
        "j_per_request",
        "J / request (online)",
        "J",
        "lower",
        lambda r: _online_energy(r, adjusted=False),
        online_only=True,
    ),
    CompareMetric(
        "j_per_request_adjusted",
        "J / request, baseline-adjusted (online)",
        "J",
        "lower",
        lambda r: _online_energy(r, adjusted=True),
        online_only=True,
    ),
    CompareMetric(
        "peak_memory", "peak GPU memory", "GiB", "lower", lambda r: _gib(r.peak_memory_bytes)
    ),
)

METRICS_BY_KEY: dict[str, CompareMetric] = {m.key: m for m in METRICS}


def metric(key: str) -> CompareMetric:
    """The metric named ``key``; ``KeyError`` naming the valid keys otherwise."""
    try:
        return METRICS_BY_KEY[key]
    except KeyError:
        raise KeyError(
            f"{key!r} is not a compared metric; valid: {', '.join(METRICS_BY_KEY)}"
        ) from None
