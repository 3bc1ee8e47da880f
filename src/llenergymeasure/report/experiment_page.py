"""The page of a single experiment: summary table, phases, latency, power over time, config."""

from __future__ import annotations

import json
from typing import Any

from llenergymeasure.report.figures import (
    ENERGY_NOT_MEASURED,
    Figures,
    energy_measured,
    latency_section,
    phase_section,
)
from llenergymeasure.report.html import Section, Span, make_table, spans_cell, text_cell
from llenergymeasure.report.loader import ExperimentSource, RunRecord
from llenergymeasure.report.phase_section import phase_summary_rows
from llenergymeasure.report.versions import engine_text
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.stats import MIN_CYCLES_FOR_INTERVAL
from llenergymeasure.results.study_statistics import format_number

TIMESERIES_CAPTION = (
    "GPU power (solid, left axis) and temperature (dashed, right axis) sampled during the "
    "experiment. Shaded: idle baseline (before the model loads), model load, warmup "
    "(excluded from every metric), thermal floor (wait after warmup), the measurement "
    "window (the only part whose energy and tokens are reported) and, with the differential "
    "prefill/decode split, the prefill-only window that follows it."
)

SINGLE_RUN_NOTE = (
    "A single run: each figure is one measurement, without spread or confidence interval (a "
    f"study that repeats the config over at least {MIN_CYCLES_FOR_INTERVAL} cycles gives them)."
)

# summary rows that only hold energy figures (left out when no energy was measured)
ENERGY_ROWS = frozenset(
    {
        "energy (raw)",
        "energy (baseline-adjusted)",
        "J / output token (raw)",
        "J / output token (baseline-adjusted)",
        "mean power",
        "idle baseline",
        "counter vs poll",
        "J / request (raw / adjusted)",
    }
)


def num(value: float | None, unit: str = "") -> str:
    """A figure for the page: ``format_number`` with a unit, "n/a" for None."""
    return "n/a" if value is None else f"{format_number(value)}{unit}"


def ms(value: float | None) -> str:
    """Seconds shown as milliseconds."""
    return "n/a" if value is None else f"{value * 1000:.2f} ms"


def warning_spans(result: ExperimentResult | None, error: str | None = None) -> list[Span]:
    """A run's error, its measurement warnings, or "none"."""
    if error:
        return [Span(error, "bad")]
    if result is None or not result.measurement_warnings:
        return [Span("none", "ok")]
    return [Span(w, "warn") for w in result.measurement_warnings]


def subtitle(result: ExperimentResult) -> str:
    """J/token, tok/s and mean power of a run, for a figure's title."""
    parts = []
    if result.energy_per_output_token_j is not None:
        parts.append(f"{result.energy_per_output_token_j:.4g} J/output token")
    parts.append(f"{result.tokens_per_second:.4g} tok/s")
    if result.mean_power_w is not None:
        parts.append(f"mean {result.mean_power_w:.0f} W")
    return ", ".join(parts)


def _energy_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    e = r.energy
    per_device = "; ".join(
        f"GPU {d.device_index}: {d.energy_j:.1f} J" for d in e.per_device if d.energy_j is not None
    )
    counter = f"counter {num(e.counter_energy_j, ' J')}, poll {num(e.poll_energy_j, ' J')}"
    if e.counter_vs_poll_diff_pct is not None:
        counter = (
            f"counter {num(e.counter_energy_j, ' J')} vs poll {num(e.poll_energy_j, ' J')} "
            f"({e.counter_vs_poll_diff_pct:+.2f} %)"
        )
    baseline = "disabled / not measured"
    if e.baseline_power_w is not None:
        src = ""
        if e.baseline is not None:
            src = " (cached)" if e.baseline.from_cache else f" ({e.baseline.duration_s:.0f} s)"
        baseline = f"{e.baseline_power_w:.1f} W{src}; {num(e.baseline_energy_j, ' J')} in window"
    return [
        (
            "energy (raw)",
            num(r.energy_total_j, " J") + (f"  [{per_device}]" if len(e.per_device) > 1 else ""),
        ),
        ("energy (baseline-adjusted)", num(r.energy_adjusted_j, " J")),
        ("J / output token (raw)", num(r.energy_per_output_token_j, " J")),
        ("J / output token (baseline-adjusted)", num(r.energy_per_output_token_adjusted_j, " J")),
        *phase_summary_rows(r),
        (
            "throughput",
            f"{r.tokens_per_second:.2f} output tokens/s, {r.requests_per_second:.3f} requests/s",
        ),
        ("mean power", num(r.mean_power_w, " W")),
        ("idle baseline", baseline),
        ("counter vs poll", counter),
    ]


def summary_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    """The summary table of one result: what ran, what it measured, how, and on what."""
    e, lat, ttft, itl = r.energy, r.latency, r.ttft, r.itl
    gpus = ", ".join(str(g.get("name", "?")) for g in r.environment.gpus) or "none (CPU)"
    rows = [
        (
            "model / backend / precision",
            f"{r.config.model} / {r.config.backend} / {r.config.precision}",
        ),
        *(online_rows(r) if r.online is not None else []),
        ("prompts, tokens", f"{r.n_requests} prompts, {r.input_tokens} in, {r.output_tokens} out"),
        ("measurement window", f"{r.duration_s:.3f} s"),
        *_energy_rows(r),
        (
            "latency mean / p50 / p90 / p99",
            " / ".join(ms(v) for v in (lat.mean, lat.p50, lat.p90, lat.p99)),
        ),
        ("TTFT mean / p50 / p99", " / ".join(ms(v) for v in (ttft.mean, ttft.p50, ttft.p99))),
        ("ITL mean / p50 / p99", " / ".join(ms(v) for v in (itl.mean, itl.p50, itl.p99))),
        (
            "energy method",
            f"{e.backend} {e.backend_version or ''}: {e.method}"
            + ("" if e.available else " (energy not available)"),
        ),
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
        ("engine", engine_text(r.environment)),
        ("engine settings", engine_settings(r)),
        (
            "warmup",
            f"{r.warmup.runs} run(s) of {r.warmup.prompts_per_run} prompt(s), "
            f"{r.warmup.duration_s:.1f} s; thermal floor {r.warmup.thermal_floor_seconds:g} s",
        ),
        ("started (UTC)", r.started_at_utc.strftime("%Y-%m-%d %H:%M:%S")),
        ("llem / schema", f"{r.llem_version} / {r.schema_version}"),
    ]
    if not energy_measured([r]):
        rows = [(k, v) for k, v in rows if k not in ENERGY_ROWS]
    return rows


def online_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    """The online run's load, energy per request, goodput and latency percentiles."""
    online = r.online
    assert online is not None
    m = online.metrics

    def pair(stats: Any) -> str:
        p50, p99 = getattr(stats, "p50_ms", None), getattr(stats, "p99_ms", None)
        return f"{num(p50)} / {num(p99)} ms"

    cap = f", at most {online.max_concurrency} in flight" if online.max_concurrency else ""
    goodput = "n/a (no SLO)"
    if m.goodput_per_s is not None:
        goodput = (
            f"{m.goodput_per_s:.3f} req/s; {num(m.energy_per_slo_request_j, ' J')} per request "
            "that met the SLO"
        )
    return [
        (
            "online load",
            f"{online.request_rate} req/s {online.arrival}{cap} (achieved "
            f"{num(online.achieved_rate_per_s)} req/s) to {online.endpoint}; "
            f"{m.n_ok}/{m.n_requests} requests ok",
        ),
        (
            "J / request (raw / adjusted)",
            f"{num(m.energy_per_request_j, ' J')} / {num(m.adjusted_energy_per_request_j, ' J')}",
        ),
        ("goodput", goodput),
        ("TTFT p50 / p99", pair(m.ttft)),
        ("TPOT p50 / p99", pair(m.tpot)),
        ("ITL p50 / p99", pair(m.itl)),
    ]


def engine_settings(r: ExperimentResult) -> str:
    """The engine parameters that shape a run, from its effective parameters."""
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


def timeseries_section(figures: Figures, run: RunRecord, title: str) -> Section | None:
    """Power and temperature over time of one run (None without samples or figures)."""
    from llenergymeasure.report.timeline_plots import plot_timeseries

    ts, result = run.timeseries, run.result
    if ts is None or len(ts) == 0 or result is None or not figures.enabled:
        return None
    figure = figures.draw(
        "timeseries",
        lambda p: plot_timeseries(
            ts,
            p,
            title=title,
            subtitle=subtitle(result),
            baseline_power_w=result.energy.baseline_power_w,
        ),
        "power and temperature timeseries",
        TIMESERIES_CAPTION,
    )
    section = Section("Power and temperature over time")
    if figure is not None:
        section.figures.append(figure)
    return section


def experiment_context(source: ExperimentSource, figures: Figures) -> dict[str, Any]:
    """What ``report.html.j2`` needs for one experiment."""
    r = source.result
    measured = energy_measured([r])
    notes = [] if measured else [ENERGY_NOT_MEASURED]
    rows = [[text_cell(k), text_cell(v)] for k, v in summary_rows(r)]
    rows.append([text_cell("warnings"), spans_cell(warning_spans(r))])
    summary = Section("Summary", meta=[SINGLE_RUN_NOTE])
    summary.tables.append(make_table(["quantity", "value"], rows))
    configs = [(r.config.model, [r])]
    sections = [summary, phase_section(figures, configs), latency_section(figures, configs)]
    power = timeseries_section(figures, source.run, source.directory.name)
    if power is None and measured and figures.enabled:
        power = Section("Power and temperature over time")
        power.notes.append("No timeseries recorded (no timeseries.parquet beside the result).")
    sections.append(power)
    config = Section("Configuration")
    config.details.append(
        (
            "resolved config and effective engine parameters",
            json.dumps(
                {
                    "config": r.config.model_dump(mode="json"),
                    "effective_parameters": r.effective_parameters,
                },
                indent=2,
                default=str,
            ),
        )
    )
    sections.append(config)
    return {
        "title": f"llem report: {r.config.model}",
        "heading": f"llem report: {r.config.model} [{r.config.backend}, {r.config.precision}]",
        "meta": [
            f"{source.directory} · config hash {r.measurement_config_hash} · experiment "
            f"{r.experiment_id}"
        ],
        "notes": notes,
        "sections": [s for s in sections if s is not None],
        "footer": [r.reproducibility_notes],
    }
