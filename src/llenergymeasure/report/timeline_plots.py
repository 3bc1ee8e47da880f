"""Power over time with the run's phases shaded, from the ``timeseries.parquet`` sidecars.

Every sample of the sidecar carries the phase the sampler was in (``energy.sampler``): idle
``baseline``, model ``load``, ``warmup``, ``thermal_floor``, the ``measurement`` window, the
prefill-only window of the differential split (``prefill_window``, with its own warmup and
thermal floor before it) and ``cooldown``. Only the measurement window's energy and tokens are
reported; the prefill window gives the prefill/decode split.

- ``plot_timeseries``: one run in detail: power per device (left axis), temperature (right).
- ``plot_power_grid``: a study's runs as small multiples (one panel per run, rows = configs,
  columns = cycles), power only, on one shared power axis so the runs compare at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.report.loader import Timeseries
from llenergymeasure.report.plots import require_matplotlib, save_figure

__all__ = ["PHASES", "PowerPanel", "phase_spans", "plot_power_grid", "plot_timeseries"]

# phase -> (label shown in the plot, colour of its shading)
PHASES: dict[str, tuple[str, str]] = {
    "baseline": ("idle baseline", "#bdbdbd"),
    "load": ("model load", "#90caf9"),
    "warmup": ("warmup", "#ffcc80"),
    "thermal_floor": ("thermal floor", "#ce93d8"),
    "measurement": ("measurement window", "#81c784"),
    "prefill_window": ("prefill-only window", "#ef9a9a"),
    "cooldown": ("cooldown", "#eeeeee"),
}

POWER_COLOURS = ("#1f4e9a", "#2e7d32", "#6a1b9a", "#00838f", "#4e342e", "#37474f")
#: A study's grid draws at most this many runs (the first ones in the study's order).
MAX_GRID_PANELS = 48


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


def phase_label(phase: str) -> tuple[str, str]:
    """``(label, colour)`` of a phase (an unknown phase gets its name and grey)."""
    return PHASES.get(phase, (phase.replace("_", " "), "#e0e0e0"))


def _device_series(
    ts: Timeseries, device: int, values: Sequence[float | None]
) -> tuple[list[float], list[float]]:
    pts = sorted(
        (t, v)
        for t, d, v in zip(ts.t_s, ts.device_index, values, strict=True)
        if d == device and v is not None
    )
    return [t for t, _ in pts], [float(v) for _, v in pts]


def _shade_phases(ax: Any, ts: Timeseries, *, labels: bool) -> list[str]:
    """Shade each phase span; with ``labels``, name the wide ones at the top. Phases seen."""
    spans = phase_spans(ts)
    t_min, t_max = min(ts.t_s), max(ts.t_s)
    width = max(t_max - t_min, 1e-9)
    seen: list[str] = []
    for phase, start, end in spans:
        label, colour = phase_label(phase)
        ax.axvspan(start, end, color=colour, alpha=0.45, lw=0)
        if phase not in seen and end > start:  # a lone last sample shades nothing
            seen.append(phase)
        if labels and (end - start) / width > 0.012 + 0.0075 * len(label):  # room for the text
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
    ax.set_xlim(t_min, t_max if t_max > t_min else t_min + 1)
    return seen


def _phase_handles(phases: Sequence[str]) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(color=phase_label(p)[1], alpha=0.6, label=phase_label(p)[0]) for p in phases]


def _draw_power(ax: Any, ts: Timeseries, *, lw: float = 1.3) -> tuple[list[Any], float]:
    """Power lines per device; their handles and the highest power drawn."""
    devices = sorted(set(ts.device_index))
    handles: list[Any] = []
    top = 0.0
    for k, device in enumerate(devices):
        xs, ys = _device_series(ts, device, ts.power_w)
        if not ys:
            continue
        top = max(top, max(ys))
        name = "GPU power (W)" if len(devices) == 1 else f"GPU {device} power (W)"
        (line,) = ax.plot(xs, ys, color=POWER_COLOURS[k % len(POWER_COLOURS)], lw=lw, label=name)
        handles.append(line)
    return handles, top


def _baseline_handle(ax: Any, baseline_power_w: float) -> Any:
    from matplotlib.lines import Line2D

    ax.axhline(baseline_power_w, color="#555555", ls=":", lw=1.2)
    return Line2D(
        [], [], color="#555555", ls=":", label=f"idle baseline power {baseline_power_w:.0f} W"
    )


def _draw_temperature(ax: Any, ts: Timeseries) -> list[Any]:
    """Temperature per device on a right axis; its handles (none without readings)."""
    temps = [c for c in ts.temperature_c if c is not None]
    if not temps:
        return []
    ax2 = ax.twinx()
    devices = sorted(set(ts.device_index))
    handles = []
    for k, device in enumerate(devices):
        xs, ys = _device_series(ts, device, ts.temperature_c)
        if ys:
            name = "GPU temperature (°C)" if len(devices) == 1 else f"GPU {device} temp (°C)"
            alpha = 0.85 if k == 0 else 0.5
            (line,) = ax2.plot(xs, ys, color="#c62828", lw=1.0, ls="--", alpha=alpha, label=name)
            handles.append(line)
    lo, hi = min(temps), max(temps)
    pad = max(3.0, (hi - lo) * 0.15)
    ax2.set_ylim(lo - pad, hi + pad * 2.5)
    ax2.set_ylabel("GPU temperature (°C)", color="#c62828")
    ax2.tick_params(axis="y", colors="#c62828")
    return handles


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
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    handles = _phase_handles(_shade_phases(ax, ts, labels=True))
    power_handles, top = _draw_power(ax, ts)
    handles += power_handles
    if baseline_power_w is not None:
        handles.append(_baseline_handle(ax, baseline_power_w))
        top = max(top, baseline_power_w)
    ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    ax.set_xlabel("time since the experiment started (s)")
    ax.set_ylabel("GPU power (W)")
    handles += _draw_temperature(ax, ts)
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
    return save_figure(fig, path)


@dataclass(frozen=True)
class PowerPanel:
    """One run of the grid: its title, samples and idle baseline power, and where it goes."""

    title: str
    timeseries: Timeseries
    row: int
    column: int
    baseline_power_w: float | None = None


def plot_power_grid(panels: Sequence[PowerPanel], path: Path, *, title: str) -> Path:
    """Small multiples of power over time, one panel per run, phases shaded, one power axis.

    ``row``/``column`` place each panel (rows = configs, columns = cycles); empty cells (a run
    without samples) stay blank. Raises ``ValueError`` without panels.
    """
    if not panels:
        raise ValueError("no run with a power timeseries to plot")
    plt = require_matplotlib()
    nrows = max(p.row for p in panels) + 1
    ncols = max(p.column for p in panels) + 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(10.0, 3.6 * ncols), 0.9 + 1.85 * nrows),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    placed = {(p.row, p.column) for p in panels}
    phases: list[str] = []
    power_handles: list[Any] = []
    baselines = False
    top = 0.0
    for p in panels:
        ax = axes[p.row][p.column]
        phases += [s for s in _shade_phases(ax, p.timeseries, labels=False) if s not in phases]
        handles, high = _draw_power(ax, p.timeseries, lw=1.0)
        power_handles = power_handles or handles
        top = max(top, high)
        if p.baseline_power_w is not None:
            ax.axhline(p.baseline_power_w, color="#555555", ls=":", lw=1.0)
            baselines = True
            top = max(top, p.baseline_power_w)
        ax.set_title(p.title, loc="left", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
    for r in range(nrows):
        axes[r][0].set_ylabel("power (W)", fontsize=8)
        for c in range(ncols):
            if (r, c) not in placed:
                axes[r][c].set_axis_off()
    for c in range(ncols):
        axes[nrows - 1][c].set_xlabel("time since the run started (s)", fontsize=8)
    axes[0][0].set_ylim(0, top * 1.12 if top > 0 else 1)
    handles = _phase_handles(phases) + power_handles[:1]
    if baselines:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#555555", ls=":", label="idle baseline power"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize=8.5,
        frameon=False,
    )
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    return save_figure(fig, path)
