"""The statistics of a study, built on ``results.stats``: the headline metrics of each config
across its cycles, labels of what varies between configs, the Pareto front, and the plain-text
table of ``llem run`` and ``llem report``."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from llenergymeasure.results.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    DEFAULT_CONFIDENCE,
    MIN_CYCLES_FOR_INTERVAL,
    T_INTERVAL_BELOW_N,
    describe,
)
from llenergymeasure.results.study import (
    HEADLINE_METRICS,
    ConfigStatistics,
    MetricStatistics,
    StudyStatistics,
)
from llenergymeasure.text_table import render_table

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.results.models import ExperimentResult

# Short names of the headline metrics, with units (tables and plots).
METRIC_LABELS: dict[str, str] = {
    "energy_per_output_token_j": "J / output token",
    "energy_per_output_token_adjusted_j": "J / output token (baseline-adjusted)",
    "tokens_per_second": "output tokens / s",
    "energy_total_j": "energy total (J)",
    "mean_power_w": "mean power (W)",
    "latency_p50_s": "latency p50 (s)",
    "ttft_mean_s": "TTFT mean (s)",
}


# --- metrics, labels, Pareto -------------------------------------------------------------------


def metric_value(result: ExperimentResult, metric: str) -> float | None:
    """A headline metric of one result (``latency_p50_s`` -> ``result.latency.p50``)."""
    if metric.endswith("_s") and metric.split("_", 1)[0] in ("latency", "ttft", "itl"):
        dist, stat = metric[:-2].split("_", 1)
        value = getattr(getattr(result, dist), stat)
    else:
        value = getattr(result, metric)
    return None if value is None else float(value)


def varying_fields(
    configs: Sequence[ExperimentConfig], *, exclude: Collection[str] = ()
) -> list[str]:
    """Dotted config keys whose value differs between ``configs``, in first-seen order.

    The one rule for "what varies across a study", used by the study table, the report and the
    dry-run preview: configs are compared as JSON (``model_dump(mode="json")`` flattened to
    dotted keys, lists as JSON text); a key missing from one config differs from any value.
    Keys in ``exclude`` (columns a table shows anyway, e.g. ``backend``) are left out.
    """
    from llenergymeasure.results.io import flatten

    flat = [flatten(c.model_dump(mode="json")) for c in configs]
    keys: list[str] = []
    for row in flat:
        keys.extend(k for k in row if k not in keys)
    return [k for k in keys if k not in exclude and len({repr(r.get(k)) for r in flat}) > 1]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Last component of each dotted key, unless two keys would share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def config_labels(configs: Sequence[ExperimentConfig]) -> list[str]:
    """What distinguishes each config, e.g. ``"batch_size=8, torch_compile=True"``.

    Unset (None) values are left out; a config with every varying field unset reads
    ``"defaults"``; a single config reads ``"<model>, <backend>, <precision>"``.
    """
    from llenergymeasure.results.io import flatten, model_slug

    keys = varying_fields(configs)
    if not keys:
        return [f"{model_slug(c.model)}, {c.backend}, {c.precision}" for c in configs]
    short = _short_keys(keys)
    labels = []
    for config in configs:
        flat = flatten(config.model_dump(mode="json"))
        parts = [f"{short[k]}={flat.get(k)}" for k in keys if flat.get(k) is not None]
        labels.append(", ".join(parts) or "defaults")
    return labels


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the Pareto-optimal points, given as ``(tokens_per_s, joules_per_token)``.

    Maximise tokens/s, minimise J/token. A point is dominated when another is at least as
    good on both and strictly better on one; equal points do not dominate each other (both
    stay on the front). Points with a None coordinate are never on the front.
    """
    valid = [
        (i, x, y)
        for i, (x, y) in enumerate(points)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    front = []
    for i, x, y in valid:
        dominated = any(
            (ox >= x and oy <= y) and (ox > x or oy < y) for j, ox, oy in valid if j != i
        )
        if not dominated:
            front.append(i)
    return front


def study_statistics(
    configs: Sequence[tuple[str, ExperimentConfig]],
    results: Sequence[tuple[int, ExperimentResult]],
    *,
    planned: Mapping[str, int] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> StudyStatistics:
    """Per-config statistics across cycles.

    ``configs``: ``(measurement_config_hash, config)`` in design order; ``results``:
    ``(cycle, result)`` of the completed runs, grouped by ``result.measurement_config_hash``
    (a result whose hash is not among ``configs`` adds a config of its own); ``planned``:
    runs planned per hash.
    """
    order: list[str] = []
    by_hash: dict[str, ExperimentConfig] = {}
    index: dict[str, int] = {}
    for i, (h, config) in enumerate(configs):
        if h not in by_hash:
            order.append(h)
            by_hash[h] = config
            index[h] = i
    grouped: dict[str, list[tuple[int, ExperimentResult]]] = {}
    for cycle, result in results:
        h = result.measurement_config_hash
        if h not in by_hash:
            order.append(h)
            by_hash[h] = result.config
        grouped.setdefault(h, []).append((cycle, result))
    all_configs = [by_hash[h] for h in order]
    labels = config_labels(all_configs)
    from llenergymeasure.results.io import flatten

    keys = varying_fields(all_configs)
    out: list[ConfigStatistics] = []
    for h, label, config in zip(order, labels, all_configs, strict=True):
        runs = sorted(grouped.get(h, []), key=lambda cr: cr[0])
        flat = flatten(config.model_dump(mode="json"))
        metrics = {
            m: describe(
                [metric_value(r, m) for _, r in runs],
                confidence=confidence,
                resamples=resamples,
                seed=seed,
            )
            for m in HEADLINE_METRICS
        }
        out.append(
            ConfigStatistics(
                config_index=index.get(h),
                config_hash=h,
                label=label,
                varying={k: flat.get(k) for k in keys},
                runs_planned=None if planned is None else planned.get(h, 0),
                runs_completed=len(runs),
                cycles=[c for c, _ in runs],
                metrics=metrics,
            )
        )
    return StudyStatistics(
        confidence_level=confidence,
        min_cycles_for_interval=MIN_CYCLES_FOR_INTERVAL,
        t_interval_below_n=T_INTERVAL_BELOW_N,
        bootstrap_resamples=resamples,
        bootstrap_seed=seed,
        configs=out,
    )


# --- plain text --------------------------------------------------------------------------------


def format_number(value: float | None) -> str:
    """A figure for tables: 4 significant digits, thousands separated, "n/a" for None."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


_fmt = format_number


def interval_text(m: MetricStatistics) -> str:
    """``[low, high] (method)``, or ``n/a (why)`` when there is no interval."""
    if m.ci_low is None or m.ci_high is None:
        return f"n/a ({m.ci_note})" if m.ci_note else "n/a"
    return f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}] ({m.ci_method})"


def method_text(stats: StudyStatistics) -> str:
    """One sentence on how the intervals were computed (tables' captions)."""
    level = f"{stats.confidence_level * 100:g} %"
    return (
        f"{level} CI of the geometric mean, computed on the logs so that it stays above zero: "
        f"Student t for n < {stats.t_interval_below_n}, seeded BCa bootstrap "
        f"({stats.bootstrap_resamples} resamples, seed {stats.bootstrap_seed}) otherwise; on the "
        "raw scale (t, bootstrap) for a metric with a value <= 0; no interval below "
        f"{stats.min_cycles_for_interval} cycles, where the spread of so few values is too "
        "uncertain to bound the mean (from 2 values a t interval is +-12.7 standard errors wide)"
    )


def is_single_run(stats: StudyStatistics) -> bool:
    """True when no config has more than one completed run (nothing to summarise across)."""
    return all(c.runs_completed <= 1 for c in stats.configs)


def format_statistics(stats: StudyStatistics) -> str:
    """Plain-text table of the per-config statistics (what ``llem report`` prints).

    A single run (no config with a second cycle) gets its values alone, and a line saying
    that spread and intervals need a study of several cycles.
    """
    if stats.configs and is_single_run(stats):
        return _format_single_runs(stats)
    level = f"{stats.confidence_level * 100:g} %"
    lines = [
        "per-config statistics across cycles (std = sample std, CV = std/mean, geo mean = "
        "geometric mean)",
        method_text(stats),
    ]
    for number, cfg in enumerate(stats.configs, 1):
        planned = "" if cfg.runs_planned is None else f"/{cfg.runs_planned}"
        lines += [
            "",
            f"config {number}  {cfg.label}  [{cfg.config_hash}]  "
            f"{cfg.runs_completed}{planned} run(s) completed",
            render_table(
                ["metric", "n", "mean", "std", "CV %", "geo mean", f"{level} CI"],
                [
                    [
                        METRIC_LABELS.get(key, key),
                        str(m.n),
                        _fmt(m.mean),
                        _fmt(m.std),
                        "n/a" if m.cv is None else f"{m.cv * 100:.2f}",
                        _fmt(m.geometric_mean),
                        interval_text(m),
                    ]
                    for key, m in cfg.metrics.items()
                ],
                justify=["left", "right", "right", "right", "right", "right", "left"],
            ),
        ]
    if not stats.configs:
        lines.append("  (no completed runs)")
    return "\n".join(lines)


def _format_single_runs(stats: StudyStatistics) -> str:
    lines = [
        "single run: the values of one measurement (spread and confidence intervals need a "
        f"study that repeats each config over at least {stats.min_cycles_for_interval} cycles)"
    ]
    for number, cfg in enumerate(stats.configs, 1):
        lines += ["", f"config {number}  {cfg.label}  [{cfg.config_hash}]"]
        rows = [[METRIC_LABELS.get(key, key), _fmt(m.mean)] for key, m in cfg.metrics.items()]
        lines.append(render_table(None, rows, justify=["left", "right"]))
    return "\n".join(lines)
