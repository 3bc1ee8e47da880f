"""The headline metrics along the swept field: one panel per metric, one line per level of the
other fields (``report.sweep`` finds them), each point a config.

A point is the mean across cycles; where a config has an interval (3 cycles or more) a whisker
is drawn from its bounds (the interval of the geometric mean, from the statistics layer) and a
light band joins the intervals along the line; faint dots are the single cycles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llenergymeasure.report.plots import require_matplotlib, save_figure
from llenergymeasure.report.sweep import SweepLayout, SweepLine, level_text, numeric_value

__all__ = ["SWEEP_METRICS", "plot_sweep", "x_positions"]

#: metric -> axis label, in panel order (energy first; left out where nothing was measured)
SWEEP_METRICS: dict[str, str] = {
    "energy_per_output_token_j": "energy per output token (J)",
    "tokens_per_second": "throughput (output tokens / s)",
    "latency_p50_s": "request latency p50 (s)",
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def x_positions(layout: SweepLayout) -> tuple[dict[str, float], bool]:
    """Where each level sits on the x axis (keyed by ``level_text``) and whether it is log.

    Numeric levels sit at their value (log scale when positive and spanning 8x or more; an
    unlimited ``inf`` one step beyond the largest); other levels, and the points of a layout
    that is not ``connected``, at 0, 1, 2, ...
    """
    if not layout.numeric or not layout.connected:
        return {level_text(v): float(i) for i, v in enumerate(layout.levels)}, False
    finite = [numeric_value(v) for v in layout.levels if numeric_value(v) != math.inf]
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 8
    out = {level_text(v): numeric_value(v) for v in layout.levels if v != "inf"}
    if "inf" in layout.levels:
        out["inf"] = _beyond(finite, log)
    return out, log


def _beyond(finite: Sequence[float], log: bool) -> float:
    """Where an unlimited level sits: one step past the largest finite one."""
    if not finite:
        return 1.0
    top, bottom = max(finite), min(finite)
    if len(finite) > 1 and not log:
        return top + (top - bottom) / (len(finite) - 1)
    return top * 2 if top > 0 else top + 1


def _draw_line(
    ax: Any,
    line: SweepLine,
    metric: str,
    xs: dict[str, float],
    style: tuple[Any, str, bool],
) -> bool:
    """One line of one panel; False when none of its configs has the metric."""
    pts = [p for p in line.points if p.stats[metric].mean is not None]
    if not pts:
        return False
    colour, marker, joined = style
    x = [xs[level_text(p.level)] for p in pts]
    y = [p.stats[metric].mean for p in pts]
    ax.plot(
        x,
        y,
        marker=marker,
        ms=6,
        lw=1.6 if joined else 0,
        color=colour,
        label=line.label or "all configs",
    )
    band: list[tuple[float, float, float]] = []
    for xi, p in zip(x, pts, strict=True):
        m = p.stats[metric]
        values = p.cycles.get(metric, [])
        if len(values) > 1:
            ax.scatter([xi] * len(values), values, s=10, color=colour, alpha=0.35, lw=0, zorder=2)
        if m.ci_low is not None and m.ci_high is not None:
            ax.vlines(xi, m.ci_low, m.ci_high, colors=[colour], lw=1.2, zorder=3)
            ax.scatter([xi, xi], [m.ci_low, m.ci_high], marker="_", s=60, color=colour, zorder=3)
            band.append((xi, m.ci_low, m.ci_high))
        elif joined:
            band = _flush_band(ax, band, colour)
    if joined:
        _flush_band(ax, band, colour)
    return True


def _flush_band(ax: Any, band: list[tuple[float, float, float]], colour: Any) -> list[Any]:
    if len(band) > 1:
        ax.fill_between(
            [b[0] for b in band],
            [b[1] for b in band],
            [b[2] for b in band],
            color=colour,
            alpha=0.12,
            lw=0,
        )
    return []


def _x_axis(ax: Any, layout: SweepLayout, xs: dict[str, float], log: bool) -> None:
    if log:
        ax.set_xscale("log", base=2)
    ticks = [level_text(v) for v in layout.levels]
    labels = ["\n".join([t, *layout.tick_notes.get(t, [])]) for t in ticks]
    ax.set_xticks([xs[t] for t in ticks], labels, fontsize=8 if len(ticks) < 6 else 7)
    ax.minorticks_off()
    if not layout.numeric or not layout.connected:
        ax.set_xlim(-0.5, len(ticks) - 0.5)
    ax.set_xlabel(layout.x_name)


def plot_sweep(
    layout: SweepLayout,
    metrics: Sequence[str],
    path: Path,
    *,
    level: str = "95 %",
    single_run: bool = False,
) -> Path:
    """One panel per metric (keys of ``SWEEP_METRICS``) against the swept field."""
    if not metrics:
        raise ValueError("no metric to plot")
    plt = require_matplotlib()
    import matplotlib

    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(4.4 * len(metrics) + 0.6, 4.4),
        squeeze=False,
        layout="constrained",
    )
    xs, log = x_positions(layout)
    colours = matplotlib.colormaps["tab10"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        drawn = False
        for i, line in enumerate(layout.lines):
            style = (colours(i % 10), MARKERS[i % len(MARKERS)], layout.connected)
            drawn |= _draw_line(ax, line, metric, xs, style)
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        _x_axis(ax, layout, xs, log)
        ax.set_ylabel(SWEEP_METRICS.get(metric, metric))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(layout.lines) > 1:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=min(len(labels), 4),
            fontsize=8.5,
            frameon=False,
        )
    marks = (
        "one run per config (no spread, no interval)"
        if single_run
        else f"point = mean across cycles, whisker and band = {level} CI of the geometric mean "
        "(none below 3 cycles), faint dots = cycles"
    )
    lines = (
        f"; one line per {', '.join(f.rsplit('.', 1)[-1] for f in layout.line_fields)}"
        if layout.line_fields
        else ""
    )
    if not layout.connected:
        marks += f"\npoints not joined: the configs differ in more than {layout.x_name}"
    fig.suptitle(
        f"Headline metrics against {layout.x_name}{lines}\n{marks}",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    return save_figure(fig, path)
