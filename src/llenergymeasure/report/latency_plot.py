"""Latency distributions per config: empirical CDFs from the per-request records of the results.

A result keeps one record per measured request (``requests[i].latency_s``, ``ttft_s``), so the
request latency and the time to first token are drawn as CDFs of every request of a config's
runs. Inter-token latencies are not kept per token, only their summary (``itl``: min, p50,
p90, p99, max of every gap), so the third panel draws those stored quantiles of each run, and
says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.report.plots import require_matplotlib, save_figure
from llenergymeasure.results.measurements import DistributionStats
from llenergymeasure.results.models import ExperimentResult

__all__ = ["LatencySeries", "latency_series", "plot_latency_cdf"]

#: quantile -> its name, as stored in ``DistributionStats``
ITL_QUANTILES: dict[float, str] = {0.0: "min", 0.5: "p50", 0.9: "p90", 0.99: "p99", 1.0: "max"}

ITL_NOTE = (
    "inter-token latency: results keep only its summary (min, p50, p90, p99, max of every gap), "
    "so each run's stored quantiles are drawn, not a CDF of single gaps"
)


@dataclass
class LatencySeries:
    """What one config contributes: every request's latency and TTFT, each run's ITL quantiles."""

    label: str
    latency_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    itl_quantiles: list[list[tuple[float, float]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.latency_s or self.ttft_s or self.itl_quantiles)


def stored_quantiles(stats: DistributionStats) -> list[tuple[float, float]]:
    """``(quantile, seconds)`` pairs a ``DistributionStats`` holds (empty without samples)."""
    if stats.n == 0:
        return []
    pairs = ((0.0, stats.min), (0.5, stats.p50), (0.9, stats.p90), (0.99, stats.p99))
    out = [(q, v) for q, v in pairs if v is not None]
    if stats.max is not None:
        out.append((1.0, stats.max))
    return out


def latency_series(
    configs: Sequence[tuple[str, Sequence[ExperimentResult]]],
) -> list[LatencySeries]:
    """One ``LatencySeries`` per ``(label, completed runs)``; configs without data are left out."""
    out = []
    for label, runs in configs:
        series = LatencySeries(label)
        for r in runs:
            series.latency_s += [q.latency_s for q in r.requests]
            series.ttft_s += [q.ttft_s for q in r.requests if q.ttft_s is not None]
            quantiles = stored_quantiles(r.itl)
            if quantiles:
                series.itl_quantiles.append(quantiles)
        if not series.empty:
            out.append(series)
    return out


def _cdf(ax: Any, values: Sequence[float], colour: Any, label: str) -> None:
    xs = sorted(v * 1000 for v in values)
    n = len(xs)
    ys = [(i + 1) / n for i in range(n)]
    ax.step([xs[0], *xs], [0.0, *ys], where="post", color=colour, lw=1.5, label=label)


def _scale(ax: Any, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")


def plot_latency_cdf(series: Sequence[LatencySeries], path: Path, *, title: str) -> Path:
    """Request latency and TTFT CDFs (one line per config) and the stored ITL quantiles."""
    if not series:
        raise ValueError("no per-request latencies to plot")
    plt = require_matplotlib()
    import matplotlib

    panels = [("latency_s", "request latency (ms)")]
    if any(s.ttft_s for s in series):
        panels.append(("ttft_s", "time to first token (ms)"))
    has_itl = any(s.itl_quantiles for s in series)
    count = len(panels) + (1 if has_itl else 0)
    fig, axes = plt.subplots(
        1, count, figsize=(4.3 * count + 0.6, 4.3), squeeze=False, layout="constrained"
    )
    colours = matplotlib.colormaps["tab10"]
    for ax, (attr, xlabel) in zip(axes[0], panels, strict=False):
        for i, s in enumerate(series):
            values = getattr(s, attr)
            if values:
                _cdf(ax, values, colours(i % 10), s.label)
        _scale(ax, [v for s in series for v in getattr(s, attr)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of requests at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if has_itl:
        _itl_panel(axes[0][-1], series, colours)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 3),
        fontsize=8.5,
        frameon=False,
    )
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    return save_figure(fig, path)


def _itl_panel(ax: Any, series: Sequence[LatencySeries], colours: Any) -> None:
    """Each run's stored ITL quantiles, on evenly spaced rows (min, p50, p90, p99, max)."""
    rows = {q: i for i, q in enumerate(ITL_QUANTILES)}
    values = []
    for i, s in enumerate(series):
        for k, quantiles in enumerate(s.itl_quantiles):
            xs = [v * 1000 for _, v in quantiles]
            ys = [rows[q] for q, _ in quantiles]
            values += [v for _, v in quantiles]
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3.5,
                lw=0.8,
                ls="--",
                color=colours(i % 10),
                alpha=0.8 if k == 0 else 0.45,
            )
    _scale(ax, values)
    ax.set_xlabel("inter-token latency (ms)")
    ax.set_yticks(list(rows.values()), list(ITL_QUANTILES.values()), fontsize=8)
    ax.set_ylim(-0.3, len(rows) - 0.7)
    ax.set_title(
        "ITL: each run's stored quantiles (no per-gap data)",
        fontsize=8.5,
        loc="left",
    )
    ax.grid(alpha=0.3)
