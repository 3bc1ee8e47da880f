"""The one statistics layer of llem: intervals, ratios and power (the study tables built on them
are ``results.study_statistics``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.install import extra_install_hint
from llenergymeasure.results.study import (
    MetricStatistics,
)

if TYPE_CHECKING:
    pass

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
