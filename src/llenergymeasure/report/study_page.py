"""The page of a study: the swept field, energy vs throughput, per-config statistics, phases,
latency, runs, power over time and the environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llenergymeasure.report.experiment_page import num, warning_spans
from llenergymeasure.report.figures import (
    ENERGY_NOT_MEASURED,
    Figures,
    energy_measured,
    latency_section,
    phase_section,
)
from llenergymeasure.report.html import Cell, Section, Span, make_table, spans_cell, text_cell
from llenergymeasure.report.loader import StudySource
from llenergymeasure.report.plots import ConfigPoint, plot_config_bars, plot_efficiency
from llenergymeasure.report.study_sections import (
    online_curve_section,
    power_section,
    sweep_section,
)
from llenergymeasure.report.versions import engine_text
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.stats import MIN_CYCLES_FOR_INTERVAL
from llenergymeasure.results.study import MetricStatistics, StudyStatistics
from llenergymeasure.results.study_statistics import (
    METRIC_LABELS,
    interval_text,
    is_single_run,
    method_text,
    pareto_front,
)

SINGLE_RUN_STUDY_NOTE = (
    "One run per config: each figure is a single measurement, without spread or confidence "
    f"interval (repeat the study over at least {MIN_CYCLES_FOR_INTERVAL} cycles for them)."
)


def config_runs(source: StudySource) -> dict[str, list[ExperimentResult]]:
    """The completed runs of each config, by config hash, in run order."""
    out: dict[str, list[ExperimentResult]] = {}
    for run in source.runs:
        if run.result is not None:
            out.setdefault(run.result.measurement_config_hash, []).append(run.result)
    return out


def _bounds(m: MetricStatistics) -> tuple[float, float] | None:
    return None if m.ci_low is None or m.ci_high is None else (m.ci_low, m.ci_high)


def config_points(
    source: StudySource, runs: dict[str, list[ExperimentResult]]
) -> list[ConfigPoint]:
    """One ``ConfigPoint`` per config of the statistics (means, intervals, cycles)."""
    points = []
    for number, cfg in enumerate(source.statistics.configs, 1):
        jpt = cfg.metrics["energy_per_output_token_j"]
        tps = cfg.metrics["tokens_per_second"]
        points.append(
            ConfigPoint(
                number=number,
                label=cfg.label,
                tps=tps.mean,
                jpt=jpt.mean,
                tps_ci=_bounds(tps),
                jpt_ci=_bounds(jpt),
                runs=[
                    (x.tokens_per_second, x.energy_per_output_token_j)
                    for x in runs.get(cfg.config_hash, [])
                ],
            )
        )
    return points


def measured_metrics(stats: StudyStatistics) -> tuple[list[str], list[str]]:
    """The metrics some config reported, and those no config did."""
    keys = list(stats.configs[0].metrics) if stats.configs else list(stats.metrics)
    seen = [k for k in keys if any(c.metrics[k].n > 0 for c in stats.configs)]
    return seen, [k for k in keys if k not in seen]


def stats_table_rows(
    stats: StudyStatistics, front: set[int], metrics: Sequence[str]
) -> tuple[list[str], list[list[Cell]], list[str]]:
    """Header, rows and row classes of the statistics table (values only for single runs)."""
    single = is_single_run(stats)
    level = f"{stats.confidence_level * 100:g} % CI"
    header = (
        ["#", "config", "metric", "value"]
        if single
        else ["#", "config", "runs", "metric", "n", "mean", "std", "CV %", "geo mean", level]
    )
    rows: list[list[Cell]] = []
    classes: list[str] = []
    for number, cfg in enumerate(stats.configs, 1):
        planned = "" if cfg.runs_planned is None else f"/{cfg.runs_planned}"
        for k, key in enumerate(metrics):
            m, first = cfg.metrics[key], k == 0
            mark = " ★ Pareto" if number in front else ""
            head = [
                text_cell(f"#{number}{mark}" if first else ""),
                text_cell(f"{cfg.label} [{cfg.config_hash}]" if first else ""),
            ]
            label = text_cell(METRIC_LABELS.get(key, key))
            if single:
                rows.append([*head, label, text_cell(num(m.mean), num=True)])
            else:
                rows.append(
                    [
                        *head,
                        text_cell(f"{cfg.runs_completed}{planned}" if first else "", num=True),
                        label,
                        text_cell(m.n, num=True),
                        text_cell(num(m.mean), num=True),
                        text_cell(num(m.std), num=True),
                        text_cell("n/a" if m.cv is None else f"{m.cv * 100:.2f}", num=True),
                        text_cell(num(m.geometric_mean), num=True),
                        text_cell(interval_text(m), num=True),
                    ]
                )
            classes.append(("first front" if number in front else "first") if first else "")
    return header, rows, classes


def runs_table(source: StudySource, numbers: dict[str, int], *, energy: bool) -> Any:
    """Every run: config, cycle, state, headline figures, warnings or error."""
    labels = {c.config_hash: c.label for c in source.statistics.configs}
    header = ["run", "config", "cycle", "status"]
    header += ["J/out-token", "J/out-token adj."] if energy else []
    header += ["tokens/s"] + (["mean power W"] if energy else []) + ["window s", "warnings / error"]
    rows = []
    for run in source.runs:
        r = run.result
        h = r.measurement_config_hash if r is not None else run.config_hash
        status = "ok" if run.status == "completed" else "bad"
        cells = [
            text_cell(run.run_id),
            text_cell(f"#{numbers.get(h, '?')} {labels.get(h, '')}"),
            text_cell(run.cycle, num=True),
            spans_cell([Span(run.status, status)]),
        ]
        if energy:
            cells += [
                text_cell(num(r.energy_per_output_token_j if r else None), num=True),
                text_cell(num(r.energy_per_output_token_adjusted_j if r else None), num=True),
            ]
        cells.append(text_cell(num(r.tokens_per_second if r else None), num=True))
        if energy:
            cells.append(text_cell(num(r.mean_power_w if r else None), num=True))
        cells += [
            text_cell(num(r.duration_s if r else None), num=True),
            spans_cell(warning_spans(r, run.error if r is None else None)),
        ]
        rows.append(cells)
    return make_table(header, rows)


def _efficiency_section(
    figures: Figures, points: list[ConfigPoint], front: set[int], level: str, single: bool
) -> Section | None:
    section = Section("Energy vs throughput")
    names = ", ".join(f"#{n}" for n in sorted(front))
    figure = figures.draw(
        "efficiency",
        lambda p: plot_efficiency(points, p, level=level, single_run=single),
        "energy per output token vs tokens per second",
        f"Pareto front (circled, dashed line): {names}. A config is on the front when no other "
        "config has both higher throughput and lower energy per output token (means across "
        "cycles, raw J/token).",
    )
    if figure is None:
        return None
    section.figures.append(figure)
    return section


def _statistics_section(
    source: StudySource, figures: Figures, points: list[ConfigPoint], front: set[int]
) -> Section:
    stats = source.statistics
    single = is_single_run(stats)
    level = f"{stats.confidence_level * 100:g} %"
    section = Section(
        "Per-config values (one run each)" if single else "Per-config statistics across cycles"
    )
    if points:
        figure = figures.draw(
            "configs",
            lambda p: plot_config_bars(points, p, level=level, single_run=single),
            "per-config J/token and tokens/s",
        )
        if figure is not None:
            section.figures.append(figure)
    metrics, missing = measured_metrics(stats)
    if single:
        section.meta.append(SINGLE_RUN_STUDY_NOTE)
    else:
        section.meta.append(
            "std = sample standard deviation, CV = std / mean, geo mean = geometric mean; "
            f"{method_text(stats)}."
        )
    if missing:
        section.meta.append(
            "Not measured in any run (left out): "
            + ", ".join(METRIC_LABELS.get(k, k) for k in missing)
            + "."
        )
    header, rows, classes = stats_table_rows(stats, front, metrics)
    section.tables.append(make_table(header, rows, classes))
    return section


def _environment_section(source: StudySource) -> Section | None:
    first = next((r.result for r in source.runs if r.result is not None), None)
    if first is None:
        return None
    env = first.environment
    gpus = ", ".join(str(g.get("name", "?")) for g in env.gpus) or "none (CPU)"
    engines = sorted({engine_text(r.result.environment) for r in source.completed if r.result})
    return Section(
        "Environment",
        meta=[
            f"GPU(s): {gpus} · driver {env.driver_version or 'n/a'} · CUDA "
            f"{env.cuda_version or 'n/a'} · engine {' | '.join(engines)} · Python "
            f"{env.python_version} · {env.os}",
            first.reproducibility_notes,
        ],
    )


def _meta(source: StudySource) -> list[str]:
    stats = source.statistics
    completed = sum(1 for r in source.runs if r.status == "completed")
    meta = [
        f"{source.directory} · design {source.design_hash or '?'} · {len(stats.configs)} "
        f"config(s) · {completed}/{len(source.runs)} runs completed"
    ]
    if source.summary is not None:
        s, p = source.summary, source.summary.protocol
        meta.append(
            f"{s.started_at_utc:%Y-%m-%d %H:%M} → {s.finished_at_utc:%Y-%m-%d %H:%M} UTC · "
            f"{p.n_cycles} cycle(s), {p.cycle_order} order · gaps {p.config_gap_seconds:g} s / "
            f"{p.cycle_gap_seconds:g} s · energy {', '.join(p.energy_methods) or 'n/a'} · warmup "
            f"runs {_join(p.warmup_runs)} · thermal floor {_join(p.thermal_floor_seconds)} s"
        )
    return meta


def _join(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "n/a"


def study_context(
    source: StudySource, figures: Figures, *, x_field: str | None = None
) -> dict[str, Any]:
    """What ``report.html.j2`` needs for a study."""
    stats = source.statistics
    single = is_single_run(stats)
    level = f"{stats.confidence_level * 100:g} %"
    numbers = {c.config_hash: i for i, c in enumerate(stats.configs, 1)}
    runs = config_runs(source)
    energy = energy_measured([r for rs in runs.values() for r in rs])
    notes = list(source.notes)
    if not energy and runs:
        notes.append(ENERGY_NOT_MEASURED)
    if single:
        notes.append(SINGLE_RUN_STUDY_NOTE)
    points = config_points(source, runs)
    usable = [p for p in points if p.tps is not None and p.jpt is not None]
    front = {usable[i].number for i in pareto_front([(p.tps, p.jpt) for p in usable])}
    labelled = [
        (f"#{numbers[c.config_hash]} {c.label}", runs.get(c.config_hash, [])) for c in stats.configs
    ]
    sections = [
        sweep_section(source, figures, runs, energy=energy, x_field=x_field),
        _efficiency_section(figures, points, front, level, single) if usable else None,
        online_curve_section(source, figures),
        _statistics_section(source, figures, points, front),
        phase_section(figures, labelled) if energy else None,
        latency_section(figures, labelled),
        Section("Runs", tables=[runs_table(source, numbers, energy=energy)]),
        power_section(source, figures, numbers),
        _environment_section(source),
    ]
    return {
        "title": f"llem study report: {source.name}",
        "heading": f"llem study report: {source.name}",
        "meta": _meta(source),
        "notes": notes,
        "sections": [s for s in sections if s is not None],
        "footer": [],
    }
