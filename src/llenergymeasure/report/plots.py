"""The report's per-config figures (matplotlib, Agg backend), each written as a PNG.

``plot_efficiency`` (J/token against tokens/s, Pareto front) and ``plot_config_bars``; the
shared helpers: ``require_matplotlib`` raises ``ConfigError`` naming the ``[report]`` extra when
matplotlib is not installed, ``save_figure`` writes a PNG atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.report import REPORT_EXTRA_HINT
from llenergymeasure.results.study_statistics import pareto_front

DPI = 110


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (the report draws figures only then)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend and return ``pyplot``; ConfigError if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            f"llem report needs matplotlib, which is not installed ({exc})",
            hint=f"install the report extra: {REPORT_EXTRA_HINT}",
        ) from None
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG through the one write path (atomic, its text redacted); close it."""
    import matplotlib.pyplot as plt

    from llenergymeasure.files import write_figure

    try:
        return write_figure(path, fig, dpi=DPI, facecolor="white")
    finally:
        plt.close(fig)


@dataclass
class ConfigPoint:
    """One config in the study plots: means, 95 % CIs and the values of each cycle."""

    number: int
    label: str
    tps: float | None
    jpt: float | None
    tps_ci: tuple[float, float] | None
    jpt_ci: tuple[float, float] | None
    runs: list[tuple[float | None, float | None]]  # (tokens/s, J/token) of each cycle


def _colour(i: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hwhisker(ax: Any, y: float, ci: tuple[float, float], colour: Any) -> None:
    """A horizontal CI whisker from ``ci[0]`` to ``ci[1]`` at ``y``, with caps.

    Drawn from the bounds themselves, not as an offset from the mean: a log-scale interval is
    centred on the geometric mean, and nothing is clipped.
    """
    ax.hlines(y, ci[0], ci[1], colors=[colour], lw=1.2, zorder=3)
    ax.scatter(list(ci), [y, y], marker="|", s=70, color=colour, lw=1.2, zorder=3)


def _vwhisker(ax: Any, x: float, ci: tuple[float, float], colour: Any) -> None:
    """A vertical CI whisker from ``ci[0]`` to ``ci[1]`` at ``x``, with caps."""
    ax.vlines(x, ci[0], ci[1], colors=[colour], lw=1.2, zorder=3)
    ax.scatter([x, x], list(ci), marker="_", s=70, color=colour, lw=1.2, zorder=3)


def spread_text(level: str, *, single_run: bool, mark: str = "large dot") -> str:
    """What a figure's marks mean: mean, interval and cycles, or one run per config."""
    if single_run:
        return f"{mark} = the single run of each config (no spread, no interval)"
    return (
        f"{mark} = mean across cycles, whiskers = {level} CI of the geometric mean "
        "(none below 3 cycles)"
    )


def _efficiency_point(ax: Any, p: ConfigPoint, on_front: bool) -> None:
    """One config: its cycles, mean, interval whiskers, Pareto ring and number."""
    assert p.tps is not None and p.jpt is not None
    colour = _colour(p.number - 1)
    xs = [x for x, y in p.runs if x is not None and y is not None]
    ys = [y for x, y in p.runs if x is not None and y is not None]
    ax.scatter(xs, ys, s=18, color=colour, alpha=0.35, lw=0, zorder=2)
    ax.plot(
        [p.tps], [p.jpt], "o", ms=8, color=colour, zorder=3, label=f"#{p.number} {_short(p.label)}"
    )
    if p.tps_ci is not None:
        _hwhisker(ax, p.jpt, p.tps_ci, colour)
    if p.jpt_ci is not None:
        _vwhisker(ax, p.tps, p.jpt_ci, colour)
    if on_front:
        ax.scatter([p.tps], [p.jpt], s=260, facecolors="none", edgecolors="black", lw=1.6, zorder=4)
    ax.annotate(
        f"#{p.number}",
        (p.tps, p.jpt),
        xytext=(9, 7),
        textcoords="offset points",
        fontsize=9,
        weight="bold",
        color=colour,
        zorder=5,
    )


def plot_efficiency(
    points: Sequence[ConfigPoint], path: Path, *, level: str = "95 %", single_run: bool = False
) -> Path:
    """J/output-token vs tokens/s per config (mean, CI bars, cycles), Pareto front marked."""
    plt = require_matplotlib()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 6.2), layout="constrained")
    usable = [p for p in points if p.tps is not None and p.jpt is not None]
    front = {usable[i].number for i in pareto_front([(p.tps, p.jpt) for p in usable])}
    for p in usable:
        _efficiency_point(ax, p, p.number in front)
    ordered = sorted((p for p in usable if p.number in front), key=lambda p: p.tps or 0.0)
    if len(ordered) > 1:
        xs, ys = [p.tps for p in ordered], [p.jpt for p in ordered]
        ax.plot(xs, ys, color="black", ls="--", lw=1.0, zorder=1)
    handles, _labels = ax.get_legend_handles_labels()
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            ms=13,
            mfc="none",
            mec="black",
            ls="--",
            color="black",
            label="Pareto front (no config has both higher tokens/s and lower J/token)",
        )
    )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=2 if len(handles) > 3 else len(handles),
        fontsize=8.5,
        frameon=False,
    )
    ax.set_xlabel("throughput: output tokens / s  (higher is better →)")
    ax.set_ylabel("energy per output token (J)  (← lower is better)")
    ax.set_title(
        "Energy vs throughput per config: "
        + spread_text(level, single_run=single_run)
        + ("" if single_run else ", small dots = cycles"),
        loc="left",
        fontsize=10,
    )
    _pad_limits(ax, usable)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _pad_limits(ax: Any, points: Sequence[ConfigPoint]) -> None:
    """Axis ranges around every mean, cycle and CI end (not below 0 for positive data)."""
    xs: list[float] = []
    ys: list[float] = []
    for p in points:
        xs += [x for x, _ in p.runs if x is not None] + [p.tps or 0.0]
        ys += [y for _, y in p.runs if y is not None] + [p.jpt or 0.0]
        if p.tps_ci:
            xs += list(p.tps_ci)
        if p.jpt_ci:
            ys += list(p.jpt_ci)
    if not xs or not ys:
        return
    floor_x = 0.0 if all((p.tps or 0.0) >= 0 for p in points) else None
    floor_y = 0.0 if all((p.jpt or 0.0) >= 0 for p in points) else None
    for values, setter, floor in ((xs, ax.set_xlim, floor_x), (ys, ax.set_ylim, floor_y)):
        lo, hi = min(values), max(values)
        span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1e-9)
        low = lo - span * 0.15
        setter(low if floor is None else max(floor, low), hi + span * 0.15)


def plot_config_bars(
    points: Sequence[ConfigPoint], path: Path, *, level: str = "95 %", single_run: bool = False
) -> Path:
    """Per-config bars of J/output-token and tokens/s with CI whiskers and cycle dots.

    The energy panel is left out when no config has energy (a machine without a sensor).
    """
    plt = require_matplotlib()

    n = len(points)
    panels = [("tps", "throughput (output tokens / s)  — higher is better")]
    if any(p.jpt is not None for p in points):
        panels.insert(0, ("jpt", "energy per output token (J)  — lower is better"))
    width = 11 if len(panels) == 2 else 7
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width, 1.6 + 0.55 * n), sharey=True, layout="constrained"
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    ys = list(range(n))
    for ax, (attr, xlabel) in zip(axes, panels, strict=True):
        for y, p in zip(ys, points, strict=True):
            _config_bar(ax, y, p, attr)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.18)
        ax.set_xlim(left=0)
    axes[0].set_yticks(ys, [f"#{p.number} {_short(p.label, 40)}" for p in points])
    axes[0].invert_yaxis()
    narrow = len(panels) == 1
    meaning = (
        "bar = the single run of each config (no spread, no interval)"
        if single_run
        else "bar = mean across cycles, dots = single cycles,"
        + ("\n" if narrow else " ")
        + f"whisker = {level} CI of the geometric mean (none below 3 cycles)"
    )
    fig.suptitle(f"Per config: {meaning}", fontsize=10, x=0.01, ha="left")
    return save_figure(fig, path)


def _config_bar(ax: Any, y: int, p: ConfigPoint, attr: str) -> None:
    mean = getattr(p, attr)
    if mean is None:
        ax.text(0, y, "  not measured", va="center", fontsize=8.5, color="#777777")
        return
    ci = getattr(p, f"{attr}_ci")
    ax.barh(y, mean, color=_colour(p.number - 1), alpha=0.75, height=0.6)
    if ci is not None:
        _hwhisker(ax, y, ci, "black")
    idx = 1 if attr == "jpt" else 0
    values = [r[idx] for r in p.runs if r[idx] is not None]
    if len(values) > 1:
        ax.scatter(values, [y] * len(values), s=14, color="black", zorder=3)
    right = max([mean, *values, *(ci or ())])
    ax.annotate(
        f"{mean:.4g}",
        (right, y),
        xytext=(6, 0),
        textcoords="offset points",
        va="center",
        fontsize=8.5,
    )
