"""Render a report: PNGs beside a self-contained HTML file (images inlined as data URIs).

The HTML has inline CSS only: no scripts, fonts, stylesheets or links to anywhere, so it opens
offline and can be mailed around as one file.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.files import write_text
from llenergymeasure.report.html import cell as _td
from llenergymeasure.report.html import escape as _e
from llenergymeasure.report.html import page as _page
from llenergymeasure.report.html import table as _table
from llenergymeasure.report.loader import (
    ExperimentSource,
    RunRecord,
    StudySource,
    load_source,
)
from llenergymeasure.report.phase_section import PhaseSection, phase_figures, phase_summary_rows
from llenergymeasure.report.plots import (
    ConfigPoint,
    plot_config_bars,
    plot_efficiency,
    plot_timeseries,
)
from llenergymeasure.results.models import ExperimentResult, StudyStatistics
from llenergymeasure.results.stats import (
    METRIC_LABELS,
    STATS_INSTALL_HINT,
    _fmt,
    format_statistics,
    interval_text,
    method_text,
    pareto_front,
    study_statistics,
)

#: Shown in place of the figures when matplotlib is missing (statistics need no matplotlib).
NO_FIGURES_NOTE = (
    "Figures are left out: they need matplotlib, which is not installed "
    f"({STATS_INSTALL_HINT}). The tables and statistics are complete."
)


@dataclass
class ReportOutcome:
    """What ``render_report`` wrote and the statistics table it produced."""

    html_path: Path
    images: list[Path] = field(default_factory=list)
    kind: str = "study"
    statistics_text: str = ""
    statistics: StudyStatistics | None = None
    notes: list[str] = field(default_factory=list)


def _img(path: Path, alt: str, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _num(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{_fmt(value)}{unit}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.2f} ms"


def _join(values: list[int] | list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "n/a"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "run"


def _warnings_html(result: ExperimentResult | None, error: str | None = None) -> str:
    if error:
        return f'<span class="bad">{_e(error)}</span>'
    if result is None or not result.measurement_warnings:
        return '<span class="ok">none</span>'
    return ", ".join(f'<span class="warn">{_e(w)}</span>' for w in result.measurement_warnings)


def _subtitle(result: ExperimentResult) -> str:
    parts = []
    if result.energy_per_output_token_j is not None:
        parts.append(f"{result.energy_per_output_token_j:.4g} J/output token")
    parts.append(f"{result.tokens_per_second:.4g} tok/s")
    if result.mean_power_w is not None:
        parts.append(f"mean {result.mean_power_w:.0f} W")
    return ", ".join(parts)


def _timeseries_figure(run: RunRecord, path: Path, title: str) -> Path | None:
    if run.timeseries is None or len(run.timeseries) == 0 or run.result is None:
        return None
    return plot_timeseries(
        run.timeseries,
        path,
        title=title,
        subtitle=_subtitle(run.result),
        baseline_power_w=run.result.energy.baseline_power_w,
    )


TIMESERIES_CAPTION = (
    "GPU power (solid, left axis) and temperature (dashed, right axis) sampled during the "
    "experiment. Shaded: idle baseline (before the model loads), model load, warmup "
    "(excluded from every metric), thermal floor (wait after warmup) and the measurement "
    "window, the only part whose energy and tokens are reported."
)


# --- single experiment -------------------------------------------------------------------------


def _experiment_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    e = r.energy
    gpus = ", ".join(str(g.get("name", "?")) for g in r.environment.gpus) or "none (CPU)"
    per_device = "; ".join(
        f"GPU {d.device_index}: {d.energy_j:.1f} J" if d.energy_j is not None else ""
        for d in e.per_device
    )
    counter = (
        f"counter {_num(e.counter_energy_j, ' J')} vs poll {_num(e.poll_energy_j, ' J')} "
        f"({e.counter_vs_poll_diff_pct:+.2f} %)"
        if e.counter_vs_poll_diff_pct is not None
        else f"counter {_num(e.counter_energy_j, ' J')}, poll {_num(e.poll_energy_j, ' J')}"
    )
    baseline = "disabled / not measured"
    if e.baseline_power_w is not None:
        src = ""
        if e.baseline is not None:
            src = " (cached)" if e.baseline.from_cache else f" ({e.baseline.duration_s:.0f} s)"
        baseline = f"{e.baseline_power_w:.1f} W{src}; {_num(e.baseline_energy_j, ' J')} in window"
    lat, ttft, itl = r.latency, r.ttft, r.itl
    rows = [
        (
            "model / backend / precision",
            f"{r.config.model} / {r.config.backend} / {r.config.precision}",
        ),
        ("prompts, tokens", f"{r.n_requests} prompts, {r.input_tokens} in, {r.output_tokens} out"),
        ("measurement window", f"{r.duration_s:.3f} s"),
        (
            "energy (raw)",
            _num(r.energy_total_j, " J") + (f"  [{per_device}]" if len(e.per_device) > 1 else ""),
        ),
        ("energy (baseline-adjusted)", _num(r.energy_adjusted_j, " J")),
        ("J / output token (raw)", _num(r.energy_per_output_token_j, " J")),
        ("J / output token (baseline-adjusted)", _num(r.energy_per_output_token_adjusted_j, " J")),
        (
            "throughput",
            f"{r.tokens_per_second:.2f} output tokens/s, {r.requests_per_second:.3f} requests/s",
        ),
        ("mean power", _num(r.mean_power_w, " W")),
        ("idle baseline", baseline),
        (
            "latency mean / p50 / p90 / p99",
            " / ".join(_ms(v) for v in (lat.mean, lat.p50, lat.p90, lat.p99)),
        ),
        ("TTFT mean / p50 / p99", " / ".join(_ms(v) for v in (ttft.mean, ttft.p50, ttft.p99))),
        ("ITL mean / p50 / p99", " / ".join(_ms(v) for v in (itl.mean, itl.p50, itl.p99))),
        (
            "energy method",
            f"{e.backend} {e.backend_version or ''}: {e.method}"
            + ("" if e.available else " (energy not available)"),
        ),
        ("counter vs poll", counter),
        ("methodology", r.measurement_methodology),
        (
            "peak GPU memory",
            "n/a" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**30:.2f} GiB",
        ),
        ("GPU(s)", gpus),
        (
            "driver / CUDA",
            f"{r.environment.driver_version or 'n/a'} / {r.environment.cuda_version or 'n/a'}",
        ),
        ("engine", f"{r.environment.engine} {r.environment.engine_version or ''}"),
        ("engine settings", _engine_settings(r)),
        (
            "warmup",
            f"{r.warmup.runs} run(s) of {r.warmup.prompts_per_run} prompt(s), "
            f"{r.warmup.duration_s:.1f} s; thermal floor {r.warmup.thermal_floor_seconds:g} s",
        ),
        ("started (UTC)", r.started_at_utc.strftime("%Y-%m-%d %H:%M:%S")),
        ("llem / schema", f"{r.llem_version} / {r.schema_version}"),
    ]
    rows[7:7] = phase_summary_rows(r)  # after the J / output token rows
    if r.online is not None:
        rows[2:2] = _online_rows(r)
    return rows


def _phase_html(section: PhaseSection, images: list[Path]) -> list[str]:
    """The "where the joules go" section (nothing when no result has the data)."""
    if not section.figures:
        return []
    out = ["<h2>Where the energy goes: prefill vs decode, per request</h2>"]
    for fig in section.figures:
        images.append(fig.path)
        out.append(_img(fig.path, fig.alt, fig.caption))
    return out


def _online_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    """The online run's load, energy per request, goodput and latency percentiles."""
    online = r.online
    assert online is not None
    m = online.metrics

    def pair(stats: object) -> str:
        p50, p99 = getattr(stats, "p50_ms", None), getattr(stats, "p99_ms", None)
        return f"{_num(p50)} / {_num(p99)} ms"

    cap = f", at most {online.max_concurrency} in flight" if online.max_concurrency else ""
    return [
        (
            "online load",
            f"{online.request_rate} req/s {online.arrival}{cap} (achieved "
            f"{_num(online.achieved_rate_per_s)} req/s) to {online.endpoint}; "
            f"{m.n_ok}/{m.n_requests} requests ok",
        ),
        (
            "J / request (raw / adjusted)",
            f"{_num(m.energy_per_request_j, ' J')} / {_num(m.adjusted_energy_per_request_j, ' J')}",
        ),
        (
            "goodput",
            "n/a (no SLO)"
            if m.goodput_per_s is None
            else f"{m.goodput_per_s:.3f} req/s; {_num(m.energy_per_slo_request_j, ' J')} per "
            "request that met the SLO",
        ),
        ("TTFT p50 / p99", pair(m.ttft)),
        ("TPOT p50 / p99", pair(m.tpot)),
        ("ITL p50 / p99", pair(m.itl)),
    ]


def _engine_settings(r: ExperimentResult) -> str:
    keys = (
        "batch_size",
        "batching_strategy",
        "attn_implementation",
        "torch_compile",
        "load_in_4bit",
        "load_in_8bit",
        "num_processes",
        "decoding_strategy",
    )
    params = r.effective_parameters
    return ", ".join(f"{k}={params[k]}" for k in keys if params.get(k) is not None) or "n/a"


def _render_experiment(
    source: ExperimentSource, html_path: Path, prefix: str, *, figures: bool
) -> ReportOutcome:
    r = source.result
    images: list[Path] = []
    body = [
        f"<h1>llem report: {_e(r.config.model)} [{_e(r.config.backend)}, "
        f"{_e(r.config.precision)}]</h1>",
        f'<p class="meta">{_e(source.directory)} · config hash {_e(r.measurement_config_hash)}'
        f" · experiment {_e(r.experiment_id)}</p>",
    ]
    if not r.energy.available or r.energy_total_j is None:
        body.append('<p class="note">Energy was not measured (no GPU energy sensor).</p>')
    rows = [[_td(k), _td(v)] for k, v in _experiment_rows(r)]
    rows.append([_td("warnings"), _td(_warnings_html(r), raw=True)])
    body += ["<h2>Summary</h2>", _table(["quantity", "value"], rows)]
    if not figures:
        body.append(f'<p class="note">{_e(NO_FIGURES_NOTE)}</p>')
    else:
        body += _phase_html(
            phase_figures([(r.config.model, [r])], html_path.parent, prefix), images
        )
    body.append("<h2>Power and temperature over time</h2>")
    png = (
        _timeseries_figure(
            source.run, html_path.parent / f"{prefix}_timeseries.png", f"{source.directory.name}"
        )
        if figures
        else None
    )
    if png is not None:
        images.append(png)
        body.append(_img(png, "power and temperature timeseries", TIMESERIES_CAPTION))
    elif figures:
        body.append('<p class="note">No timeseries recorded (no GPU sensor or no sidecar).</p>')
    body.append(
        "<h2>Configuration</h2><details><summary>resolved config and effective engine "
        "parameters</summary><pre>"
        + _e(
            json.dumps(
                {
                    "config": r.config.model_dump(mode="json"),
                    "effective_parameters": r.effective_parameters,
                },
                indent=2,
                default=str,
            )
        )
        + "</pre></details>"
    )
    body.append(f'<p class="meta">{_e(r.reproducibility_notes)}</p>')
    write_text(html_path, _page(f"llem report: {r.config.model}", "".join(body)))
    stats = study_statistics([(r.measurement_config_hash, r.config)], [(1, r)])
    return ReportOutcome(
        html_path=html_path,
        images=images,
        kind="experiment",
        statistics_text=format_statistics(stats),
        statistics=stats,
        notes=[] if figures else [NO_FIGURES_NOTE],
    )


# --- study -------------------------------------------------------------------------------------


def _points(source: StudySource) -> list[ConfigPoint]:
    points = []
    for number, cfg in enumerate(source.statistics.configs, 1):
        runs = [
            r.result
            for r in source.runs
            if r.result is not None and r.result.measurement_config_hash == cfg.config_hash
        ]
        jpt = cfg.metrics["energy_per_output_token_j"]
        tps = cfg.metrics["tokens_per_second"]
        points.append(
            ConfigPoint(
                number=number,
                label=cfg.label,
                tps=tps.mean,
                jpt=jpt.mean,
                tps_ci=(tps.ci_low, tps.ci_high)
                if tps.ci_low is not None and tps.ci_high is not None
                else None,
                jpt_ci=(jpt.ci_low, jpt.ci_high)
                if jpt.ci_low is not None and jpt.ci_high is not None
                else None,
                runs=[(x.tokens_per_second, x.energy_per_output_token_j) for x in runs],
            )
        )
    return points


def _stats_table(stats: StudyStatistics, front: set[int]) -> str:
    level = f"{stats.confidence_level * 100:g} % CI"
    header = ["#", "config", "runs", "metric", "n", "mean", "std", "CV %", "geo mean", level]
    rows: list[list[str]] = []
    classes: list[str] = []
    for number, cfg in enumerate(stats.configs, 1):
        planned = "" if cfg.runs_planned is None else f"/{cfg.runs_planned}"
        for k, (key, m) in enumerate(cfg.metrics.items()):
            first = k == 0
            mark = " ★ Pareto" if number in front else ""
            rows.append(
                [
                    _td(f"#{number}{mark}" if first else ""),
                    _td(f"{cfg.label} [{cfg.config_hash}]" if first else ""),
                    _td(f"{cfg.runs_completed}{planned}" if first else "", num=True),
                    _td(METRIC_LABELS.get(key, key)),
                    _td(m.n, num=True),
                    _td(_num(m.mean), num=True),
                    _td(_num(m.std), num=True),
                    _td("n/a" if m.cv is None else f"{m.cv * 100:.2f}", num=True),
                    _td(_num(m.geometric_mean), num=True),
                    _td(interval_text(m), num=True),
                ]
            )
            classes.append(("first front" if number in front else "first") if first else "")
    return _table(header, rows, classes)


def _runs_table(source: StudySource, numbers: dict[str, int]) -> str:
    header = [
        "run",
        "config",
        "cycle",
        "status",
        "J/out-token",
        "J/out-token adj.",
        "tokens/s",
        "mean power W",
        "window s",
        "warnings / error",
    ]
    rows = []
    labels = {c.config_hash: c.label for c in source.statistics.configs}
    for run in source.runs:
        r = run.result
        h = r.measurement_config_hash if r is not None else run.config_hash
        status_cls = "ok" if run.status == "completed" else "bad"
        rows.append(
            [
                _td(run.run_id),
                _td(f"#{numbers.get(h, '?')} {labels.get(h, '')}"),
                _td(run.cycle, num=True),
                _td(f'<span class="{status_cls}">{_e(run.status)}</span>', raw=True),
                _td(_num(r.energy_per_output_token_j if r else None), num=True),
                _td(_num(r.energy_per_output_token_adjusted_j if r else None), num=True),
                _td(_num(r.tokens_per_second if r else None), num=True),
                _td(_num(r.mean_power_w if r else None), num=True),
                _td(_num(r.duration_s if r else None), num=True),
                _td(_warnings_html(r, run.error if r is None else None), raw=True),
            ]
        )
    return _table(header, rows)


ONLINE_CURVE_CAPTION = (
    "Online runs against their target request rate (inf: all requests at once), the mean of "
    "each rate's cycles. Top: energy per successful request, raw and baseline-adjusted (the "
    "idle share dominates at low rates), and mean GPU power on the right axis. Bottom: TTFT "
    "and inter-token latency percentiles."
)


def _online_curve_section(
    source: StudySource, png_path: Path | None
) -> tuple[str, Path | None] | None:
    """The energy-vs-load curve of a study's online runs (None when it has none); the table
    alone when ``png_path`` is None (no matplotlib)."""
    from llenergymeasure.report.online_curve import (
        mean_over_cycles,
        online_curve_points,
        plot_online_curve,
    )

    online = [r.result.online for r in source.runs if r.result is not None and r.result.online]
    if not online:
        return None
    points = mean_over_cycles(online_curve_points(online))
    png = plot_online_curve(points, png_path) if png_path is not None else None
    header = [
        "rate (req/s)",
        "cap",
        "achieved",
        "ok",
        "mean W",
        "J/request",
        "J/request adj.",
        "J/token",
        "J/token adj.",
        "TTFT p50 / p99",
        "ITL p50 / p99",
        "goodput (req/s)",
    ]

    def ms(a: float | None, b: float | None) -> str:
        return f"{_num(a)} / {_num(b)} ms"

    rows = [
        [
            _td(p.rate_label),
            _td(p.max_concurrency or "-"),
            _td(_num(p.achieved_rate), num=True),
            _td(f"{p.n_ok}/{p.n_requests}", num=True),
            _td(_num(p.mean_power_w), num=True),
            _td(_num(p.j_per_request), num=True),
            _td(_num(p.j_per_request_adjusted), num=True),
            _td(_num(p.j_per_token), num=True),
            _td(_num(p.j_per_token_adjusted), num=True),
            _td(ms(p.ttft_p50_ms, p.ttft_p99_ms), num=True),
            _td(ms(p.itl_p50_ms, p.itl_p99_ms), num=True),
            _td(_num(p.goodput_per_s), num=True),
        ]
        for p in points
    ]
    figure = (
        _img(
            png, "energy per request, power and latency against request rate", ONLINE_CURVE_CAPTION
        )
        if png is not None
        else ""
    )
    html_part = "<h2>Energy against request rate (online runs)</h2>" + figure + _table(header, rows)
    return html_part, png


def _render_study(
    source: StudySource, html_path: Path, prefix: str, *, figures: bool
) -> ReportOutcome:
    stats = source.statistics
    level = f"{stats.confidence_level * 100:g} %"
    out_dir = html_path.parent
    images: list[Path] = []
    numbers = {c.config_hash: i for i, c in enumerate(stats.configs, 1)}
    counts = {s: sum(1 for r in source.runs if r.status == s) for s in ("completed",)}
    n_runs = len(source.runs)
    body = [
        f"<h1>llem study report: {_e(source.name)}</h1>",
        f'<p class="meta">{_e(source.directory)} · design {_e(source.design_hash or "?")} · '
        f"{len(stats.configs)} config(s) · {counts['completed']}/{n_runs} runs completed</p>",
    ]
    if source.summary is not None:
        s, p = source.summary, source.summary.protocol
        body.append(
            f'<p class="meta">{_e(s.started_at_utc.strftime("%Y-%m-%d %H:%M"))} → '
            f"{_e(s.finished_at_utc.strftime('%Y-%m-%d %H:%M'))} UTC · {p.n_cycles} cycle(s), "
            f"{_e(p.cycle_order)} order · gaps {p.config_gap_seconds:g} s / "
            f"{p.cycle_gap_seconds:g} s · energy {_e(', '.join(p.energy_methods) or 'n/a')} · "
            f"warmup runs {_e(_join(p.warmup_runs))} · thermal floor "
            f"{_e(_join(p.thermal_floor_seconds))} s</p>"
        )
    for note in source.notes:
        body.append(f'<p class="note">{_e(note)}</p>')
    if not figures:
        body.append(f'<p class="note">{_e(NO_FIGURES_NOTE)}</p>')
    points = _points(source)
    usable = [p for p in points if p.tps is not None and p.jpt is not None]
    front_idx = pareto_front([(p.tps, p.jpt) for p in usable])
    front = {usable[i].number for i in front_idx}
    body.append("<h2>Energy vs throughput</h2>")
    if usable and figures:
        png = plot_efficiency(points, out_dir / f"{prefix}_efficiency.png", level=level)
        images.append(png)
        names = ", ".join(f"#{n}" for n in sorted(front))
        body.append(
            _img(
                png,
                "energy per output token vs tokens per second",
                f"Pareto front (circled, dashed line): {names}. A config is on the front when no "
                "other config has both higher throughput and lower energy per output token "
                "(means across cycles, raw J/token).",
            )
        )
    elif not usable:
        body.append('<p class="note">No energy measured in any run: no scatter plot.</p>')
    online_section = _online_curve_section(
        source, out_dir / f"{prefix}_online_curve.png" if figures else None
    )
    if online_section is not None:
        html_part, online_png = online_section
        body.append(html_part)
        if online_png is not None:
            images.append(online_png)
    body.append("<h2>Per-config statistics across cycles</h2>")
    if points and figures:
        png = plot_config_bars(points, out_dir / f"{prefix}_configs.png", level=level)
        images.append(png)
        body.append(_img(png, "per-config J/token and tokens/s with confidence intervals"))
    body.append(
        '<p class="meta">std = sample standard deviation, CV = std / mean, geo mean = geometric '
        f"mean; {_e(method_text(stats))}.</p>"
    )
    body.append(_stats_table(stats, front))
    configs = [
        (
            f"#{numbers[c.config_hash]} {c.label}",
            [
                run.result
                for run in source.runs
                if run.result is not None and run.result.measurement_config_hash == c.config_hash
            ],
        )
        for c in stats.configs
    ]
    if figures:
        body += _phase_html(phase_figures(configs, out_dir, prefix), images)
    body.append("<h2>Runs</h2>")
    body.append(_runs_table(source, numbers))
    body.append("<h2>Power and temperature over time</h2>")
    body.append(f'<p class="meta">{_e(TIMESERIES_CAPTION)}</p>')
    drawn = 0
    for run in source.runs:
        if run.result is None or not figures:
            continue
        h = run.result.measurement_config_hash
        label = next((c.label for c in stats.configs if c.config_hash == h), "")
        title = f"{run.run_id}: #{numbers.get(h, '?')} {label}, cycle {run.cycle}"
        series = _timeseries_figure(
            run, out_dir / f"{prefix}_timeseries_{_safe(run.run_id)}.png", title
        )
        if series is None:
            continue
        drawn += 1
        images.append(series)
        body.append(f"<h3>{_e(run.run_id)}</h3>" + _img(series, f"timeseries of {run.run_id}"))
    if not drawn and figures:
        body.append('<p class="note">No run has a timeseries sidecar (timeseries.parquet).</p>')
    first = next((r.result for r in source.runs if r.result is not None), None)
    if first is not None:
        env = first.environment
        gpus = ", ".join(str(g.get("name", "?")) for g in env.gpus) or "none (CPU)"
        body.append(
            f'<h2>Environment</h2><p class="meta">GPU(s): {_e(gpus)} · driver '
            f"{_e(env.driver_version or 'n/a')} · CUDA {_e(env.cuda_version or 'n/a')} · "
            f"{_e(env.engine)} {_e(env.engine_version or '')} · Python {_e(env.python_version)}"
            f' · {_e(env.os)}</p><p class="meta">{_e(first.reproducibility_notes)}</p>'
        )
    write_text(html_path, _page(f"llem study report: {source.name}", "".join(body)))
    return ReportOutcome(
        html_path=html_path,
        images=images,
        kind="study",
        statistics_text=format_statistics(stats),
        statistics=stats,
        notes=[] if figures else [NO_FIGURES_NOTE],
    )


def render_report(path: str | Path, output: str | Path | None = None) -> ReportOutcome:
    """Write ``report.html`` (default: inside ``path``) and its PNGs beside it.

    PNGs are named ``<html stem>_*.png``. Raises ``ConfigError`` when ``path`` is not an
    experiment or study directory. Without matplotlib the HTML and the statistics are written
    without figures, and ``ReportOutcome.notes`` says so.
    """
    from llenergymeasure.report.plots import matplotlib_available

    source = load_source(path)
    figures = matplotlib_available()
    html_path = Path(output) if output is not None else source.directory / "report.html"
    if html_path.is_dir():
        html_path = html_path / "report.html"
    prefix = html_path.stem
    if isinstance(source, ExperimentSource):
        return _render_experiment(source, html_path, prefix, figures=figures)
    return _render_study(source, html_path, prefix, figures=figures)
