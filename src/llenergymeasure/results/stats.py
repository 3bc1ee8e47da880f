"""Study statistics in pure Python (no numpy/scipy): t and bootstrap CIs, Pareto set, labels.

Used by the study runner at the end of a study (``study_summary.json``) and by ``llem report``,
so it lives on the results floor below both.
The Student t quantile comes from the regularised incomplete beta function (continued fraction)
and bisection, accurate to ~1e-10; the tests check it against scipy.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from llenergymeasure.results.models import (
    HEADLINE_METRICS,
    ConfigStatistics,
    MetricStatistics,
    StudyStatistics,
)

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.results.models import ExperimentResult

DEFAULT_CONFIDENCE = 0.95
T_INTERVAL_BELOW_N = 30
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

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


# --- Student t ---------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Cumulative distribution function of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be positive")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t: the ``x`` with ``t_cdf(x, df) == p``."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --- intervals -----------------------------------------------------------------------------------


def t_interval(
    values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """Student t confidence interval of the mean (needs at least 2 values)."""
    n = len(values)
    if n < 2:
        raise ValueError("a t interval needs at least 2 values")
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sem
    return mean - half, mean + half


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]) of sorted values (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, deterministic)."""
    n = len(values)
    if n < 2:
        raise ValueError("a bootstrap interval needs at least 2 values")
    rng = random.Random(seed)
    data = list(values)
    means = sorted(math.fsum(rng.choices(data, k=n)) / n for _ in range(resamples))
    alpha = 1.0 - confidence
    return _percentile(means, alpha / 2.0), _percentile(means, 1.0 - alpha / 2.0)


def describe(
    values: Sequence[float | None],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    t_below_n: int = T_INTERVAL_BELOW_N,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> MetricStatistics:
    """n, mean, sample std, CV and CI of the values that are not None.

    The CI is a t interval for ``n < t_below_n`` and a seeded percentile bootstrap otherwise;
    with ``n < 2`` std, CV and CI are None.
    """
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(data)
    if n == 0:
        return MetricStatistics(n=0, mean=None, std=None, cv=None, ci_low=None, ci_high=None)
    mean = statistics.fmean(data)
    if n < 2:
        return MetricStatistics(n=n, mean=mean, std=None, cv=None, ci_low=None, ci_high=None)
    std = statistics.stdev(data)
    cv = std / abs(mean) if mean != 0 else None
    if n < t_below_n:
        low, high = t_interval(data, confidence)
        method = "t"
    else:
        low, high = bootstrap_interval(data, confidence, resamples=resamples, seed=seed)
        method = "bootstrap"
    return MetricStatistics(
        n=n, mean=mean, std=std, cv=cv, ci_low=low, ci_high=high, ci_method=method
    )


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
        t_interval_below_n=T_INTERVAL_BELOW_N,
        bootstrap_resamples=resamples,
        bootstrap_seed=seed,
        configs=out,
    )


# --- plain text --------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_statistics(stats: StudyStatistics) -> str:
    """Plain-text table of the per-config statistics (what ``llem report`` prints)."""
    level = f"{stats.confidence_level * 100:g} %"
    lines = [
        f"per-config statistics across cycles (std = sample std, CV = std/mean, {level} CI: "
        f"t interval for n < {stats.t_interval_below_n}, seeded bootstrap otherwise)"
    ]
    for number, cfg in enumerate(stats.configs, 1):
        planned = "" if cfg.runs_planned is None else f"/{cfg.runs_planned}"
        lines += [
            "",
            f"config {number}  {cfg.label}  [{cfg.config_hash}]  "
            f"{cfg.runs_completed}{planned} run(s) completed",
            f"  {'metric':<38} {'n':>3} {'mean':>11} {'std':>11} {'CV %':>7}  {level} CI",
        ]
        for key, m in cfg.metrics.items():
            cv = "n/a" if m.cv is None else f"{m.cv * 100:.2f}"
            ci = (
                "n/a"
                if m.ci_low is None or m.ci_high is None
                else f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}] ({m.ci_method})"
            )
            lines.append(
                f"  {METRIC_LABELS.get(key, key):<38} {m.n:>3} {_fmt(m.mean):>11} "
                f"{_fmt(m.std):>11} {cv:>7}  {ci}"
            )
    if not stats.configs:
        lines.append("  (no completed runs)")
    return "\n".join(lines)
