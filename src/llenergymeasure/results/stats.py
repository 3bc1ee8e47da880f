"""The one statistics layer of llem: intervals, ratios, power, and the study tables built on them.

Used by the study runner at the end of a study (``study_summary.json``), by ``llem report`` and
by ``llem compare``, so it lives on the results floor below all three.

Every quantity llem summarises across cycles is positive (J per token, tokens/s, latencies,
power), and its cycle-to-cycle spread is multiplicative, so intervals are computed on the
log scale and mapped back: they never leave the range of the quantity.

- ``describe``: n, mean, sample std, CV, geometric mean and a confidence interval of the
  geometric mean: Student t on the logs for ``n < t_below_n`` cycles, a seeded BCa bootstrap of
  the mean log otherwise. Below ``MIN_CYCLES_FOR_INTERVAL`` (3) cycles there is no interval,
  and ``ci_note`` says why. Values that are not all positive (baseline-adjusted energy can come
  out <= 0) get the same intervals on the raw scale, whose range includes them.
- ``log_ratio``: B/A as the ratio of geometric means with a Welch t interval on the logs.
- ``welch_power``, ``min_detectable_log_ratio``, ``cycles_needed``: how large a difference a
  comparison can detect, and how many cycles a study needs for a chosen one.

scipy (the ``report`` extra) does the distribution work; ``require_scipy`` raises a
``ConfigError`` naming the install command when it is missing, and ``describe`` then leaves the
interval out and says so (a study still finishes without the extra).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.install import extra_install_hint
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

DEFAULT_CONFIDENCE = 0.95
DEFAULT_POWER = 0.80
MIN_CYCLES_FOR_INTERVAL = 3
T_INTERVAL_BELOW_N = 30
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: ``cycles_needed`` gives up beyond this many cycles per side.
MAX_PLANNED_CYCLES = 10_000

#: Installing the statistics (and figures) from a checkout of this repository. The
#: distribution name on PyPI belongs to another project, so never ``pip install <name>[...]``.
STATS_INSTALL_HINT = extra_install_hint("report")

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

CiMethod = Literal["t", "bootstrap", "log_t", "log_bootstrap"]


# --- scipy ---------------------------------------------------------------------------------------


def scipy_available() -> bool:
    """Whether ``scipy.stats`` can be imported."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def require_scipy(what: str = "llem's statistics") -> Any:
    """Import and return ``scipy.stats``; ``ConfigError`` with the install command if missing."""
    try:
        import scipy.stats
    except ImportError as exc:
        raise ConfigError(
            f"{what} need scipy, which is not installed ({exc})",
            hint=f"install the report extra: {STATS_INSTALL_HINT}",
        ) from None
    return scipy.stats


# --- intervals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A confidence interval and how it was computed."""

    low: float
    high: float
    method: CiMethod


def _t_bounds(values: Sequence[float], confidence: float) -> tuple[float, float]:
    st = require_scipy()
    n = len(values)
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(n)
    if sem == 0.0:
        return mean, mean
    half = float(st.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    return mean - half, mean + half


def _bootstrap_bounds(
    values: Sequence[float], confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    st = require_scipy()
    import numpy as np

    mean = statistics.fmean(values)
    if statistics.stdev(values) == 0.0:
        return mean, mean
    ci = st.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="BCa",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def mean_interval(
    values: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    t_below_n: int = T_INTERVAL_BELOW_N,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Confidence interval of the centre of ``values`` (at least ``MIN_CYCLES_FOR_INTERVAL``).

    All values positive: an interval of the geometric mean, from the logs (``log_t`` below
    ``t_below_n`` values, ``log_bootstrap`` from there on), so it stays above zero. Otherwise an
    interval of the arithmetic mean on the raw scale (``t`` / ``bootstrap``).
    """
    n = len(values)
    if n < MIN_CYCLES_FOR_INTERVAL:
        raise ValueError(f"an interval needs at least {MIN_CYCLES_FOR_INTERVAL} values, got {n}")
    positive = all(v > 0 for v in values)
    data = [math.log(v) for v in values] if positive else list(values)
    if n < t_below_n:
        low, high = _t_bounds(data, confidence)
        method: CiMethod = "log_t" if positive else "t"
    else:
        low, high = _bootstrap_bounds(data, confidence, resamples, seed)
        method = "log_bootstrap" if positive else "bootstrap"
    if positive:
        return Interval(math.exp(low), math.exp(high), method)
    return Interval(low, high, method)


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values (None when any value is <= 0 or there are none)."""
    if not values or any(v <= 0 for v in values):
        return None
    return math.exp(statistics.fmean(math.log(v) for v in values))


def log_spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation of the logs (close to the CV for small spreads): the spread
    that ``log_ratio`` and ``cycles_needed`` work with. None below 2 values or when a value
    is <= 0."""
    if len(values) < 2 or any(v <= 0 for v in values):
        return None
    return statistics.stdev(math.log(v) for v in values)


def no_interval_reason(n: int) -> str:
    """Why ``n`` values get no interval (``n < MIN_CYCLES_FOR_INTERVAL``)."""
    if n == 0:
        return "not measured"
    if n == 1:
        return "single run: no spread, no interval"
    return f"{n} cycles: no interval below {MIN_CYCLES_FOR_INTERVAL}"


def describe(
    values: Sequence[float | None],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    t_below_n: int = T_INTERVAL_BELOW_N,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> MetricStatistics:
    """n, mean, sample std, CV, geometric mean and CI of the values that are not None.

    The CI is ``mean_interval``'s; with fewer than ``MIN_CYCLES_FOR_INTERVAL`` values, or
    without scipy, it is None and ``ci_note`` says why. With ``n < 2`` std and CV are None.
    """
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(data)
    if n == 0:
        return MetricStatistics(
            n=0, mean=None, std=None, cv=None, ci_low=None, ci_high=None, ci_note="not measured"
        )
    mean = statistics.fmean(data)
    std = statistics.stdev(data) if n >= 2 else None
    cv = std / abs(mean) if std is not None and mean != 0 else None
    base: dict[str, Any] = {
        "n": n,
        "mean": mean,
        "std": std,
        "cv": cv,
        "geometric_mean": geometric_mean(data),
    }
    if n < MIN_CYCLES_FOR_INTERVAL:
        return MetricStatistics(**base, ci_low=None, ci_high=None, ci_note=no_interval_reason(n))
    if not scipy_available():
        return MetricStatistics(
            **base,
            ci_low=None,
            ci_high=None,
            ci_note=f"no interval: scipy is not installed ({STATS_INSTALL_HINT})",
        )
    ci = mean_interval(data, confidence, t_below_n=t_below_n, resamples=resamples, seed=seed)
    return MetricStatistics(**base, ci_low=ci.low, ci_high=ci.high, ci_method=ci.method)


# --- ratios, power, planning ---------------------------------------------------------------------


@dataclass(frozen=True)
class RatioEstimate:
    """B/A as the ratio of geometric means, with a Welch t interval on the logs.

    ``se_log``: standard error of the log ratio; ``df``: Welch-Satterthwaite degrees of freedom
    (None when neither side varies: then the interval is the ratio itself).
    """

    ratio: float
    low: float
    high: float
    se_log: float
    df: float | None
    sd_log_a: float
    sd_log_b: float
    n_a: int
    n_b: int


def _welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float | None:
    """Welch-Satterthwaite degrees of freedom of ``var_a/n_a + var_b/n_b`` (None when 0)."""
    qa, qb = var_a / n_a, var_b / n_b
    denom = qa * qa / (n_a - 1) + qb * qb / (n_b - 1)
    return None if denom == 0.0 else (qa + qb) ** 2 / denom


def log_ratio(
    a: Sequence[float], b: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> RatioEstimate:
    """B/A of positive samples: ratio of geometric means, Welch t interval on the logs.

    Needs ``MIN_CYCLES_FOR_INTERVAL`` values on each side, all positive (``ValueError``
    otherwise). The interval is exp(d +- t * se) with d the difference of mean logs, so it is
    positive and B/A and A/B get reciprocal intervals.
    """
    for name, side in (("A", a), ("B", b)):
        if len(side) < MIN_CYCLES_FOR_INTERVAL:
            raise ValueError(
                f"{name} has {len(side)} values; a ratio interval needs "
                f"{MIN_CYCLES_FOR_INTERVAL} on each side"
            )
        if any(v <= 0 for v in side):
            raise ValueError(f"{name} has values <= 0: no log ratio")
    la = [math.log(v) for v in a]
    lb = [math.log(v) for v in b]
    var_a, var_b = statistics.variance(la), statistics.variance(lb)
    d = statistics.fmean(lb) - statistics.fmean(la)
    se = math.sqrt(var_a / len(la) + var_b / len(lb))
    df = _welch_df(var_a, len(la), var_b, len(lb))
    if df is None:
        low = high = d
    else:
        st = require_scipy()
        half = float(st.t.ppf(0.5 + confidence / 2.0, df)) * se
        low, high = d - half, d + half
    return RatioEstimate(
        ratio=math.exp(d),
        low=math.exp(low),
        high=math.exp(high),
        se_log=se,
        df=df,
        sd_log_a=math.sqrt(var_a),
        sd_log_b=math.sqrt(var_b),
        n_a=len(la),
        n_b=len(lb),
    )


def welch_power(
    delta_log: float, se_log: float, df: float, confidence: float = DEFAULT_CONFIDENCE
) -> float:
    """Power of the two-sided Welch test at level ``1 - confidence`` to see a true log ratio
    ``delta_log`` when the log ratio's standard error is ``se_log`` (noncentral t)."""
    st = require_scipy()
    if se_log <= 0.0:
        return 1.0 if delta_log != 0.0 else 0.0
    t_crit = float(st.t.ppf(0.5 + confidence / 2.0, df))
    ncp = abs(delta_log) / se_log
    upper = float(st.nct.sf(t_crit, df, ncp))
    lower = float(st.nct.cdf(-t_crit, df, ncp))
    # scipy's noncentral t returns NaN deep in a tail at some (df, ncp): the tail is ~0 there
    if not math.isfinite(upper):
        upper = float(st.norm.sf(t_crit - ncp))
    if not math.isfinite(lower):
        lower = 0.0
    return min(1.0, upper + lower)


def min_detectable_log_ratio(
    se_log: float,
    df: float | None,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> float:
    """The smallest |log(B/A)| that the two-sided Welch test detects with ``power``.

    0 when neither side varies (``df`` None): any difference is then exact.
    """
    if df is None or se_log <= 0.0:
        return 0.0
    from scipy.optimize import brentq

    hi = se_log
    while welch_power(hi, se_log, df, confidence) < power:
        hi *= 2.0
    return float(brentq(lambda x: welch_power(x, se_log, df, confidence) - power, 0.0, hi))


def cycles_needed(
    sd_log_a: float,
    sd_log_b: float,
    detect_pct: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
    max_cycles: int = MAX_PLANNED_CYCLES,
) -> int | None:
    """Cycles per side for the Welch test to detect a ``detect_pct`` % difference (either way)
    with ``power``, given the cycle-to-cycle spreads (sd of the logs, ~ the CV) of A and B.

    At least ``MIN_CYCLES_FOR_INTERVAL``; None when more than ``max_cycles`` would be needed.
    """
    if detect_pct <= 0:
        raise ValueError("detect_pct must be positive")
    # the smaller of the two log distances, so that both +pct and -pct are detected
    delta = min(math.log1p(detect_pct / 100.0), -math.log1p(-min(detect_pct, 99.9) / 100.0))
    var_a, var_b = sd_log_a**2, sd_log_b**2

    def enough(n: int) -> bool:
        se = math.sqrt((var_a + var_b) / n)
        df = _welch_df(var_a, n, var_b, n)
        return df is None or welch_power(delta, se, df, confidence) >= power

    n = MIN_CYCLES_FOR_INTERVAL
    if enough(n):
        return n
    hi = n
    while not enough(hi):
        if hi >= max_cycles:
            return None
        n, hi = hi, min(hi * 2, max_cycles)
    while hi - n > 1:  # enough(hi), not enough(n)
        mid = (n + hi) // 2
        n, hi = (n, mid) if enough(mid) else (mid, hi)
    return hi


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
