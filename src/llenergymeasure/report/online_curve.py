"""Energy-vs-load curves of online runs: a table and a two-panel figure over the request rate.

One ``OnlineCurvePoint`` per online run (an ``OnlineRunResult``, or the ``OnlineResult`` an
``ExperimentResult`` stores as ``.online``), ordered by target request rate
with ``inf`` last. ``online_curve_markdown`` gives the table (J/request, J/token raw and
adjusted, mean W, TTFT/ITL p50/p99, goodput); ``plot_online_curve`` draws J/request (raw and
adjusted) with mean power on a second axis over the rate, and latency percentiles in a second
panel. The ``inf`` point sits one step right of the largest finite rate, labelled ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llenergymeasure.online.run_result import OnlineRunResult
from llenergymeasure.results.online import OnlineResult

__all__ = [
    "OnlineCurvePoint",
    "mean_over_cycles",
    "online_curve_markdown",
    "online_curve_points",
    "plot_online_curve",
]


@dataclass(frozen=True)
class OnlineCurvePoint:
    """The figures of one online run that an energy-vs-load curve shows."""

    target_rate: float  # math.inf for "inf"
    achieved_rate: float | None
    max_concurrency: int | None
    n_ok: int
    n_requests: int
    duration_s: float
    mean_power_w: float | None
    j_per_request: float | None
    j_per_request_adjusted: float | None
    j_per_token: float | None
    j_per_token_adjusted: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    goodput_per_s: float | None
    # requests with a first-token time: TTFT, ITL and goodput cover only these
    latency_n: int | None = None

    @classmethod
    def from_result(cls, result: OnlineRunResult | OnlineResult) -> OnlineCurvePoint:
        if isinstance(result, OnlineRunResult):
            result = result.summary()
        m = result.metrics
        rate = math.inf if result.request_rate == "inf" else float(result.request_rate)
        return cls(
            target_rate=rate,
            achieved_rate=result.achieved_rate_per_s,
            max_concurrency=result.max_concurrency,
            n_ok=m.n_ok,
            n_requests=m.n_requests,
            duration_s=m.duration_s,
            mean_power_w=m.mean_power_w,
            j_per_request=m.energy_per_request_j,
            j_per_request_adjusted=m.adjusted_energy_per_request_j,
            j_per_token=m.energy_per_output_token_j,
            j_per_token_adjusted=m.adjusted_energy_per_output_token_j,
            ttft_p50_ms=m.ttft.p50_ms if m.ttft else None,
            ttft_p99_ms=m.ttft.p99_ms if m.ttft else None,
            itl_p50_ms=m.itl.p50_ms if m.itl else None,
            itl_p99_ms=m.itl.p99_ms if m.itl else None,
            goodput_per_s=m.goodput_per_s,
            latency_n=m.ttft.count if m.ttft else 0,
        )

    @property
    def latency_partial(self) -> bool:
        """True when TTFT/ITL/goodput cover fewer requests than completed."""
        return self.latency_n is not None and self.latency_n < self.n_ok

    @property
    def rate_label(self) -> str:
        return "inf" if math.isinf(self.target_rate) else f"{self.target_rate:g}"


def online_curve_points(
    results: Sequence[OnlineRunResult | OnlineResult],
) -> list[OnlineCurvePoint]:
    """One point per result, by target rate (``inf`` last), then by concurrency cap."""
    points = [OnlineCurvePoint.from_result(r) for r in results]
    return sorted(
        points,
        key=lambda p: (p.target_rate, p.max_concurrency if p.max_concurrency else math.inf),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def mean_over_cycles(points: Sequence[OnlineCurvePoint]) -> list[OnlineCurvePoint]:
    """One point per (rate, concurrency cap): the mean of its cycles' figures (counts summed).

    A figure missing in some cycles is the mean of the cycles that have it; in order as
    ``online_curve_points`` gives them.
    """
    groups: dict[tuple[float, int | None], list[OnlineCurvePoint]] = {}
    for p in points:
        groups.setdefault((p.target_rate, p.max_concurrency), []).append(p)
    merged = []
    for (rate, cap), group in groups.items():
        merged.append(
            OnlineCurvePoint(
                target_rate=rate,
                achieved_rate=_mean([p.achieved_rate for p in group]),
                max_concurrency=cap,
                n_ok=sum(p.n_ok for p in group),
                n_requests=sum(p.n_requests for p in group),
                duration_s=sum(p.duration_s for p in group) / len(group),
                latency_n=(
                    None
                    if any(p.latency_n is None for p in group)
                    else sum(p.latency_n or 0 for p in group)
                ),
                **{
                    name: _mean([getattr(p, name) for p in group])
                    for name in (
                        "mean_power_w",
                        "j_per_request",
                        "j_per_request_adjusted",
                        "j_per_token",
                        "j_per_token_adjusted",
                        "ttft_p50_ms",
                        "ttft_p99_ms",
                        "itl_p50_ms",
                        "itl_p99_ms",
                        "goodput_per_s",
                    )
                },
            )
        )
    return sorted(
        merged, key=lambda p: (p.target_rate, p.max_concurrency if p.max_concurrency else math.inf)
    )


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def online_curve_markdown(points: Sequence[OnlineCurvePoint]) -> str:
    """A markdown table of the curve, one row per point."""
    header = (
        "| rate (req/s) | cap | achieved | ok | window (s) | mean W | J/request | "
        "J/request adj | J/token | J/token adj | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | "
        "goodput (req/s) |"
    )
    lines = [header, "|" + "---|" * 13]
    for p in points:
        partial = f" ({p.latency_n} of {p.n_ok})" if p.latency_partial else ""
        lines.append(
            f"| {p.rate_label} | {p.max_concurrency or '-'} | {_f(p.achieved_rate, '.2f')} | "
            f"{p.n_ok}/{p.n_requests} | {p.duration_s:.1f} | {_f(p.mean_power_w, '.0f')} | "
            f"{_f(p.j_per_request, '.2f')} | {_f(p.j_per_request_adjusted, '.2f')} | "
            f"{_f(p.j_per_token, '.4f')} | {_f(p.j_per_token_adjusted, '.4f')} | "
            f"{_f(p.ttft_p50_ms, '.0f')} / {_f(p.ttft_p99_ms, '.0f')}{partial} | "
            f"{_f(p.itl_p50_ms, '.1f')} / {_f(p.itl_p99_ms, '.1f')}{partial} | "
            f"{_f(p.goodput_per_s, '.2f')}{partial} |"
        )
    if any(p.latency_partial for p in points):
        lines.append("")
        lines.append(
            "(k of n): TTFT, ITL and goodput cover only the k of n completed requests whose "
            "stream carried a token chunk; the others' latencies are unknown, so these figures "
            "are not the run's."
        )
    return "\n".join(lines) + "\n"


def _x_positions(points: Sequence[OnlineCurvePoint]) -> list[float]:
    finite = [p.target_rate for p in points if math.isfinite(p.target_rate)]
    inf_x = max(finite) * 2.0 if finite else 1.0
    return [p.target_rate if math.isfinite(p.target_rate) else inf_x for p in points]


def plot_online_curve(points: Sequence[OnlineCurvePoint], path: Path) -> Path:
    """Two panels over the request rate: energy and power on top, latency below; a PNG."""
    from llenergymeasure.report.plots import require_matplotlib, save_figure

    if not points:
        raise ValueError("no online runs to plot")
    plt = require_matplotlib()
    xs = _x_positions(points)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7.0), sharex=True)

    def series(values: list[float | None]) -> tuple[list[float], list[float]]:
        pairs = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        return [x for x, _ in pairs], [v for _, v in pairs]

    top.plot(*series([p.j_per_request for p in points]), "o-", label="J/request")
    top.plot(
        *series([p.j_per_request_adjusted for p in points]), "s--", label="J/request (adjusted)"
    )
    top.set_ylabel("energy per request (J)")
    if all(p.j_per_request is None and p.mean_power_w is None for p in points):
        top.text(
            0.5,
            0.5,
            "energy not measured (no GPU energy sensor)",
            ha="center",
            va="center",
            transform=top.transAxes,
            color="#555555",
        )
    power = top.twinx()
    power.plot(*series([p.mean_power_w for p in points]), "^:", color="#d62728", label="mean W")
    power.set_ylabel("mean power (W)")
    handles = top.get_legend_handles_labels()
    extra = power.get_legend_handles_labels()
    top.legend(handles[0] + extra[0], handles[1] + extra[1], loc="best", fontsize=8)

    for values, label, style in (
        ([p.ttft_p50_ms for p in points], "TTFT p50", "o-"),
        ([p.ttft_p99_ms for p in points], "TTFT p99", "o--"),
        ([p.itl_p50_ms for p in points], "ITL p50", "s-"),
        ([p.itl_p99_ms for p in points], "ITL p99", "s--"),
    ):
        xs_v, ys_v = series(values)
        if ys_v:
            bottom.plot(xs_v, ys_v, style, label=label)
    if any(v is not None and v > 0 for p in points for v in (p.ttft_p99_ms, p.itl_p99_ms)):
        bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("request rate (req/s)")
    bottom.legend(loc="best", fontsize=8)
    if all(x > 0 for x in xs) and len(set(xs)) > 1:
        bottom.set_xscale("log")
    bottom.set_xticks(xs)
    bottom.set_xticklabels([p.rate_label for p in points])
    fig.suptitle("Energy and latency against request rate")
    fig.tight_layout()
    return save_figure(fig, Path(path))
