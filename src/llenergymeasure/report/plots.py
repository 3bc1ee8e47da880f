"""The report's figures (matplotlib, Agg backend), each written as a PNG.

``require_matplotlib`` raises ``ConfigError`` naming the ``[report]`` extra when matplotlib is
not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.report import REPORT_EXTRA_HINT
from llenergymeasure.report.loader import Timeseries
from llenergymeasure.results.stats import pareto_front

DPI = 110

# phase -> (label shown in the plot, colour of its shading)
PHASES: dict[str, tuple[str, str]] = {
    "baseline": ("idle baseline", "#bdbdbd"),
    "load": ("model load", "#90caf9"),
    "warmup": ("warmup", "#ffcc80"),
    "thermal_floor": ("thermal floor", "#ce93d8"),
    "measurement": ("measurement window", "#81c784"),
    "cooldown": ("cooldown", "#eeeeee"),
}


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


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG through the one write path (its text redacted), then close it."""
    import matplotlib.pyplot as plt

    from llenergymeasure.files import write_figure

    try:
        return write_figure(path, fig, dpi=DPI, facecolor="white")
    finally:
        plt.close(fig)


def phase_spans(ts: Timeseries) -> list[tuple[str, float, float]]:
    """Contiguous ``(phase, start_s, end_s)`` segments; a segment ends where the next begins."""
    rows = sorted(zip(ts.t_s, ts.phase, strict=True), key=lambda r: r[0])
    spans: list[list[Any]] = []
    for t, phase in rows:
        if spans and spans[-1][0] == phase:
            spans[-1][2] = t
        else:
            if spans:
                spans[-1][2] = t
            spans.append([phase, t, t])
    return [(str(p), float(a), float(b)) for p, a, b in spans]


def plot_timeseries(
    ts: Timeseries,
    path: Path,
    *,
    title: str,
    subtitle: str = "",
    baseline_power_w: float | None = None,
) -> Path:
    """GPU power (left axis) and temperature (right axis) over time, phases shaded."""
    plt = require_matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    spans = phase_spans(ts)
    t_min, t_max = min(ts.t_s), max(ts.t_s)
    width = max(t_max - t_min, 1e-9)
    handles: list[Any] = []
    seen: set[str] = set()
    for phase, start, end in spans:
        label, colour = PHASES.get(phase, (phase.replace("_", " "), "#e0e0e0"))
        ax.axvspan(start, end, color=colour, alpha=0.45, lw=0)
        if phase not in seen:
            seen.add(phase)
            handles.append(Patch(color=colour, alpha=0.6, label=label))
        if (end - start) / width > 0.012 + 0.0075 * len(label):  # room for the text
            ax.text(
                (start + end) / 2,
                0.98,
                label,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8.5,
                color="#333333",
                clip_on=True,
            )
    devices = sorted(set(ts.device_index))
    power_colours = ["#1f4e9a", "#2e7d32", "#6a1b9a", "#00838f", "#4e342e", "#37474f"]
    max_power = 0.0
    for k, device in enumerate(devices):
        pts = [
            (t, p)
            for t, d, p in zip(ts.t_s, ts.device_index, ts.power_w, strict=True)
            if d == device and p is not None
        ]
        pts.sort()
        if not pts:
            continue
        max_power = max(max_power, max(p for _, p in pts))
        name = "GPU power (W)" if len(devices) == 1 else f"GPU {device} power (W)"
        (line,) = ax.plot(
            [t for t, _ in pts],
            [p for _, p in pts],
            color=power_colours[k % len(power_colours)],
            lw=1.3,
            label=name,
        )
        handles.append(line)
    if baseline_power_w is not None:
        ax.axhline(baseline_power_w, color="#555555", ls=":", lw=1.2)
        handles.append(
            Line2D(
                [],
                [],
                color="#555555",
                ls=":",
                label=f"idle baseline power {baseline_power_w:.0f} W",
            )
        )
        max_power = max(max_power, baseline_power_w)
    ax.set_xlim(t_min, t_max if t_max > t_min else t_min + 1)
    ax.set_ylim(0, max_power * 1.18 if max_power > 0 else 1)
    ax.set_xlabel("time since the experiment started (s)")
    ax.set_ylabel("GPU power (W)")
    temps = [(t, c) for t, c in zip(ts.t_s, ts.temperature_c, strict=True) if c is not None]
    if temps:
        ax2 = ax.twinx()
        for k, device in enumerate(devices):
            pts = sorted(
                (t, c)
                for t, d, c in zip(ts.t_s, ts.device_index, ts.temperature_c, strict=True)
                if d == device and c is not None
            )
            if pts:
                name = "GPU temperature (°C)" if len(devices) == 1 else f"GPU {device} temp (°C)"
                (tline,) = ax2.plot(
                    [t for t, _ in pts],
                    [c for _, c in pts],
                    color="#c62828",
                    lw=1.0,
                    ls="--",
                    alpha=0.85 if k == 0 else 0.5,
                    label=name,
                )
                handles.append(tline)
        lo = min(c for _, c in temps)
        hi = max(c for _, c in temps)
        pad = max(3.0, (hi - lo) * 0.15)
        ax2.set_ylim(lo - pad, hi + pad * 2.5)
        ax2.set_ylabel("GPU temperature (°C)", color="#c62828")
        ax2.tick_params(axis="y", colors="#c62828")
    ax.set_title(title, loc="left", fontsize=11)
    if subtitle:
        ax.set_title(subtitle, loc="right", fontsize=9, color="#444444")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize=8.5,
        frameon=False,
    )
    return _save(fig, path)


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


def plot_efficiency(points: Sequence[ConfigPoint], path: Path, *, level: str = "95 %") -> Path:
    """J/output-token vs tokens/s per config (mean, CI bars, cycles), Pareto front marked."""
    plt = require_matplotlib()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 6.2), layout="constrained")
    usable = [p for p in points if p.tps is not None and p.jpt is not None]
    front = {usable[i].number for i in pareto_front([(p.tps, p.jpt) for p in usable])}
    for p in usable:
        assert p.tps is not None and p.jpt is not None
        colour = _colour(p.number - 1)
        xs = [x for x, y in p.runs if x is not None and y is not None]
        ys = [y for x, y in p.runs if x is not None and y is not None]
        ax.scatter(xs, ys, s=18, color=colour, alpha=0.35, lw=0, zorder=2)
        ax.plot(
            [p.tps],
            [p.jpt],
            "o",
            ms=8,
            color=colour,
            zorder=3,
            label=f"#{p.number} {_short(p.label)}",
        )
        if p.tps_ci is not None:
            _hwhisker(ax, p.jpt, p.tps_ci, colour)
        if p.jpt_ci is not None:
            _vwhisker(ax, p.tps, p.jpt_ci, colour)
        if p.number in front:
            ax.scatter(
                [p.tps], [p.jpt], s=260, facecolors="none", edgecolors="black", lw=1.6, zorder=4
            )
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
    ordered = sorted((p for p in usable if p.number in front), key=lambda p: p.tps or 0.0)
    if len(ordered) > 1:
        ax.plot(
            [p.tps for p in ordered],
            [p.jpt for p in ordered],
            color="black",
            ls="--",
            lw=1.0,
            zorder=1,
        )
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
        f"Energy vs throughput per config: large dot = mean, whiskers = {level} CI of the "
        "geometric mean (none below 3 cycles), small dots = cycles",
        loc="left",
        fontsize=10,
    )
    _pad_limits(ax, usable)
    ax.grid(alpha=0.3)
    return _save(fig, path)


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


def plot_config_bars(points: Sequence[ConfigPoint], path: Path, *, level: str = "95 %") -> Path:
    """Per-config bars of J/output-token and tokens/s with CI error bars and cycle dots."""
    plt = require_matplotlib()

    n = len(points)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.55 * n), sharey=True, layout="constrained")
    ys = list(range(n))
    panels = (
        (axes[0], "jpt", "energy per output token (J)  — lower is better"),
        (axes[1], "tps", "throughput (output tokens / s)  — higher is better"),
    )
    for ax, attr, xlabel in panels:
        for y, p in zip(ys, points, strict=True):
            mean = getattr(p, attr)
            if mean is None:
                ax.text(0, y, "  not measured", va="center", fontsize=8.5, color="#777777")
                continue
            ci = getattr(p, f"{attr}_ci")
            ax.barh(y, mean, color=_colour(p.number - 1), alpha=0.75, height=0.6)
            if ci is not None:
                _hwhisker(ax, y, ci, "black")
            idx = 1 if attr == "jpt" else 0
            values = [r[idx] for r in p.runs if r[idx] is not None]
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
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.18)
        ax.set_xlim(left=0)
    axes[0].set_yticks(ys, [f"#{p.number} {_short(p.label, 40)}" for p in points])
    axes[0].invert_yaxis()
    fig.suptitle(
        f"Per config: bar = mean across cycles, whisker = {level} CI of the geometric mean "
        "(none below 3 cycles), dots = single cycles",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    return _save(fig, path)
