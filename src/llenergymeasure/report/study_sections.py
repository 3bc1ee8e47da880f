"""Sections of the study page built from several runs: the metrics along the swept field, the
online energy-vs-load curve and the power-over-time grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from llenergymeasure.report.figures import Figures
from llenergymeasure.report.html import Section, make_table, text_cell
from llenergymeasure.report.loader import StudySource
from llenergymeasure.report.timeline_plots import MAX_GRID_PANELS, PowerPanel, plot_power_grid
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study_statistics import format_number, is_single_run

#: The power grid wraps a config's runs after this many columns.
GRID_COLUMNS = 6

POWER_CAPTION = (
    "Power of every run over time, one panel per run (rows: configs, columns: cycles), on one "
    "power axis. Shaded: idle baseline (before the model loads), model load, warmup (excluded "
    "from every metric), thermal floor, the measurement window (the only part whose energy and "
    "tokens are reported) and, with the differential prefill/decode split, the prefill-only "
    "window after it. Dotted: the idle baseline power subtracted for the adjusted figures."
)

ONLINE_CURVE_CAPTION = (
    "Online runs against their target request rate (inf: all requests at once), the mean of "
    "each rate's cycles. Top: energy per successful request, raw and baseline-adjusted (the "
    "idle share dominates at low rates), and mean GPU power on the right axis. Bottom: TTFT "
    "and inter-token latency percentiles."
)


def sweep_section(
    source: StudySource,
    figures: Figures,
    runs: Mapping[str, Sequence[ExperimentResult]],
    *,
    energy: bool,
    x_field: str | None = None,
) -> Section | None:
    """The headline metrics along the swept field (None without a sweep or without figures)."""
    from llenergymeasure.report.sweep import short_name, sweep_layout
    from llenergymeasure.report.sweep_plot import SWEEP_METRICS, plot_sweep

    stats = source.statistics
    metrics = [m for m in SWEEP_METRICS if energy or m != "energy_per_output_token_j"]
    layout = sweep_layout(stats.configs, runs, metrics, x_field=x_field)
    if layout is None or not figures.enabled:
        return None
    level = f"{stats.confidence_level * 100:g} %"
    parts = [f"x: {layout.x_field}"]
    if layout.line_fields:
        parts.append("one line per value of " + ", ".join(layout.line_fields))
    if layout.follows:
        parts.append(
            ", ".join(short_name(f) for f in layout.follows)
            + " also changes from config to config (set per point of the sweep, not drawn)"
        )
    caption = (
        "; ".join(parts)
        + ". The x axis is the varying field whose lines cover every level (a sweep's grid); "
        "choose another with llem report --x FIELD."
    )
    figure = figures.draw(
        "sweep",
        lambda p: plot_sweep(layout, metrics, p, level=level, single_run=is_single_run(stats)),
        f"headline metrics against {layout.x_name}",
        caption,
    )
    section = Section(f"Along the swept field: {layout.x_name}")
    if figure is not None:
        section.figures.append(figure)
    return section


def online_curve_section(source: StudySource, figures: Figures) -> Section | None:
    """The energy-vs-load curve of a study's online runs: a figure and a table (None without)."""
    from llenergymeasure.report.online_curve import (
        mean_over_cycles,
        online_curve_points,
        plot_online_curve,
    )

    online = [r.result.online for r in source.runs if r.result is not None and r.result.online]
    if not online:
        return None
    points = mean_over_cycles(online_curve_points(online))
    section = Section("Energy against request rate (online runs)")
    figure = figures.draw(
        "online_curve",
        lambda p: plot_online_curve(points, p),
        "energy per request, power and latency against request rate",
        ONLINE_CURVE_CAPTION,
    )
    if figure is not None:
        section.figures.append(figure)

    def n(value: float | None) -> str:
        return "n/a" if value is None else format_number(value)

    def pair(a: float | None, b: float | None) -> str:
        return f"{n(a)} / {n(b)} ms"

    header = [
        "rate (req/s)", "cap", "achieved", "ok", "mean W", "J/request", "J/request adj.",
        "J/token", "J/token adj.", "TTFT p50 / p99", "ITL p50 / p99", "goodput (req/s)",
    ]  # fmt: skip
    rows = [
        [
            text_cell(p.rate_label),
            text_cell(p.max_concurrency or "-"),
            *(
                text_cell(v, num=True)
                for v in (
                    n(p.achieved_rate),
                    f"{p.n_ok}/{p.n_requests}",
                    n(p.mean_power_w),
                    n(p.j_per_request),
                    n(p.j_per_request_adjusted),
                    n(p.j_per_token),
                    n(p.j_per_token_adjusted),
                    pair(p.ttft_p50_ms, p.ttft_p99_ms),
                    pair(p.itl_p50_ms, p.itl_p99_ms),
                    n(p.goodput_per_s),
                )
            ),
        ]
        for p in points
    ]
    section.tables.append(make_table(header, rows))
    return section


def power_section(
    source: StudySource, figures: Figures, numbers: Mapping[str, int]
) -> Section | None:
    """Every run's power over time as small multiples (None when no energy was sampled)."""
    if not figures.enabled:
        return None
    labels = {c.config_hash: c.label for c in source.statistics.configs}
    by_config: dict[str, list[PowerPanel]] = {}
    for run in source.runs:
        r, ts = run.result, run.timeseries
        if r is None or ts is None or len(ts) == 0:
            continue
        h = r.measurement_config_hash
        title = f"#{numbers.get(h, '?')} {labels.get(h, '')} · cycle {run.cycle}"
        panel = PowerPanel(title, ts, 0, 0, r.energy.baseline_power_w)
        by_config.setdefault(h, []).append(panel)
    section = Section("Power over time")
    if not by_config:
        if any(r.result is not None and r.result.energy_total_j is not None for r in source.runs):
            section.notes.append("No run has a timeseries sidecar (timeseries.parquet).")
            return section
        return None
    panels = _place(by_config, numbers)
    total = len(panels)
    if total > MAX_GRID_PANELS:
        panels = panels[:MAX_GRID_PANELS]
        section.notes.append(f"The first {MAX_GRID_PANELS} of {total} runs are drawn.")
    figure = figures.draw(
        "power",
        lambda p: plot_power_grid(
            panels, p, title="Power over time of each run, phases shaded (one power axis)"
        ),
        "power over time of every run, phases shaded",
        POWER_CAPTION,
    )
    if figure is not None:
        section.figures.append(figure)
    return section


def _place(
    by_config: Mapping[str, Sequence[PowerPanel]], numbers: Mapping[str, int]
) -> list[PowerPanel]:
    """Rows = configs (in study order), columns = its runs in cycle order, wrapped; one run per
    config: two configs a row."""
    ordered = sorted(by_config, key=lambda k: numbers.get(k, math.inf))
    if max(len(v) for v in by_config.values()) == 1:
        columns = min(2, len(ordered))
        return [
            replace(by_config[h][0], row=i // columns, column=i % columns)
            for i, h in enumerate(ordered)
        ]
    columns = min(max(len(v) for v in by_config.values()), GRID_COLUMNS)
    placed: list[PowerPanel] = []
    row = 0
    for h in ordered:
        panels = by_config[h]
        for i, panel in enumerate(panels):
            placed.append(replace(panel, row=row + i // columns, column=i % columns))
        row += math.ceil(len(panels) / columns)
    return placed
