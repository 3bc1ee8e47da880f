"""The statistics layer: log-scale intervals, describe(), B/A ratios, power and planning, Pareto
set, labels.

The intervals are checked against scipy computed independently here (``scipy.stats.t`` on the
logs, ``ttest_ind``), and by simulation: the nominal 95 % intervals must cover the true value in
93-97 % of seeded trials.
"""

from __future__ import annotations

import math
import random
import sys

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.stats import (
    STATS_INSTALL_HINT,
    cycles_needed,
    describe,
    log_ratio,
    log_spread,
    mean_interval,
    min_detectable_log_ratio,
    welch_power,
)
from llenergymeasure.results.study import ConfigStatistics, StudyStatistics
from llenergymeasure.results.study_statistics import config_labels, format_statistics, pareto_front

scipy_stats = pytest.importorskip("scipy.stats")
np = pytest.importorskip("numpy")

SEED = 20261207
TRIALS = 2000


# --- intervals of one sample --------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 10])
def test_positive_values_get_the_t_interval_of_the_logs_mapped_back(n: int) -> None:
    rng = random.Random(n)
    sample = [rng.lognormvariate(3.0, 0.2) for _ in range(n)]
    ci = mean_interval(sample, 0.95)
    logs = np.log(sample)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=logs.mean(), scale=scipy_stats.sem(logs))
    assert ci.method == "log_t"
    assert (ci.low, ci.high) == pytest.approx((math.exp(low), math.exp(high)), rel=1e-9)


def test_an_interval_of_a_positive_quantity_never_reaches_below_zero() -> None:
    # the tokens/s at 3 cycles: a raw-scale t interval spans [-2,671, 4,572]
    sample = [900.0, 3600.0, 300.0]
    raw_low, _ = scipy_stats.t.interval(0.95, 2, loc=np.mean(sample), scale=scipy_stats.sem(sample))
    assert raw_low < 0
    stats = describe(sample)
    assert stats.ci_low is not None and stats.ci_high is not None
    assert 0 < stats.ci_low < stats.geometric_mean < stats.ci_high  # type: ignore[operator]


def test_values_that_are_not_all_positive_get_a_raw_scale_interval() -> None:
    # baseline-adjusted energy can come out <= 0: its range includes those values
    stats = describe([-0.1, 0.2, 0.4])
    assert stats.ci_method == "t" and stats.geometric_mean is None
    low, high = scipy_stats.t.interval(
        0.95, 2, loc=np.mean([-0.1, 0.2, 0.4]), scale=scipy_stats.sem([-0.1, 0.2, 0.4])
    )
    assert (stats.ci_low, stats.ci_high) == pytest.approx((low, high), rel=1e-9)


def test_from_30_values_the_interval_is_a_seeded_bootstrap_of_the_logs() -> None:
    rng = random.Random(30)
    sample = [rng.lognormvariate(0.0, 0.3) for _ in range(30)]
    a, b = describe(sample, seed=3), describe(sample, seed=3)
    assert a.ci_method == "log_bootstrap" and (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert describe(sample, seed=4).ci_low != a.ci_low
    assert 0 < a.ci_low < a.geometric_mean < a.ci_high  # type: ignore[operator]
    ref = scipy_stats.bootstrap(
        (np.log(sample),),
        np.mean,
        n_resamples=10_000,
        method="BCa",
        random_state=np.random.default_rng(3),
    ).confidence_interval
    assert (a.ci_low, a.ci_high) == pytest.approx((math.exp(ref.low), math.exp(ref.high)))


def test_identical_values_give_a_zero_width_interval() -> None:
    stats = describe([2.0, 2.0, 2.0])
    assert (stats.ci_low, stats.ci_high) == pytest.approx((2.0, 2.0))


@pytest.mark.parametrize("n", [3, 10])
def test_the_interval_of_one_sample_covers_the_true_geometric_mean_95_percent(n: int) -> None:
    rng = random.Random(SEED + n)
    true_gm = math.exp(1.5)
    covered = 0
    for _ in range(TRIALS):
        ci = mean_interval([rng.lognormvariate(1.5, 0.1) for _ in range(n)])
        covered += ci.low <= true_gm <= ci.high
    assert 0.93 <= covered / TRIALS <= 0.97


# --- describe: n = 2, 3, 10 ----------------------------------------------------------------------


def test_two_cycles_give_mean_and_spread_but_no_interval_and_say_why() -> None:
    stats = describe([10.0, 12.0])
    assert stats.n == 2 and stats.mean == 11.0 and stats.std == pytest.approx(math.sqrt(2))
    assert stats.ci_low is None and stats.ci_high is None and stats.ci_method is None
    assert stats.ci_note == "2 cycles: no interval below 3"


def test_three_and_ten_cycles_get_a_log_t_interval() -> None:
    for n in (3, 10):
        stats = describe([10.0 + (i % 3) for i in range(n)])
        assert stats.n == n and stats.ci_method == "log_t" and stats.ci_note is None
        assert 0 < stats.ci_low < stats.geometric_mean < stats.ci_high  # type: ignore[operator]
    wide, narrow = describe([10.0, 11.0, 12.0]), describe([10.0, 11.0, 12.0] * 3 + [11.0])
    assert (narrow.ci_high - narrow.ci_low) < (wide.ci_high - wide.ci_low)  # type: ignore[operator]


def test_one_value_has_a_mean_but_no_spread_or_ci() -> None:
    stats = describe([5.0])
    assert (stats.n, stats.mean) == (1, 5.0)
    assert stats.std is None and stats.cv is None
    assert stats.ci_low is None and stats.ci_high is None and stats.ci_method is None
    assert stats.ci_note == "single run: no spread, no interval"


def test_missing_values_are_not_counted_and_none_at_all_gives_no_mean() -> None:
    assert describe([None, 2.0, None, 4.0]).n == 2
    empty = describe([None, None])
    assert empty.n == 0 and empty.mean is None and empty.std is None
    assert empty.ci_note == "not measured"


def test_cv_is_none_when_the_mean_is_zero() -> None:
    assert describe([-1.0, 1.0]).cv is None


def test_without_scipy_describe_leaves_the_interval_out_and_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy -> ImportError
    stats = describe([1.0, 2.0, 3.0])
    assert stats.mean == 2.0 and stats.ci_low is None
    assert stats.ci_note is not None and STATS_INSTALL_HINT in stats.ci_note
    assert 'pip install -e ".[report]"' in STATS_INSTALL_HINT


# --- B/A ---------------------------------------------------------------------------------------


def test_the_ratio_is_of_geometric_means_with_welchs_interval_on_the_logs() -> None:
    a = [100.0, 104.0, 98.0, 101.0]
    b = [110.0, 118.0, 112.0]
    est = log_ratio(a, b)
    ref = scipy_stats.ttest_ind(np.log(b), np.log(a), equal_var=False).confidence_interval(0.95)
    assert est.ratio == pytest.approx(math.exp(np.log(b).mean() - np.log(a).mean()), rel=1e-12)
    assert (est.low, est.high) == pytest.approx((math.exp(ref.low), math.exp(ref.high)), rel=1e-9)
    assert est.df == pytest.approx(ref.df if hasattr(ref, "df") else est.df)


def test_b_over_a_and_a_over_b_get_reciprocal_intervals() -> None:
    a, b = [1.0, 1.1, 1.05], [1.3, 1.2, 1.4]
    ab, ba = log_ratio(a, b), log_ratio(b, a)
    assert ab.ratio == pytest.approx(1 / ba.ratio)
    assert (ab.low, ab.high) == pytest.approx((1 / ba.high, 1 / ba.low))


def test_a_ratio_needs_three_positive_values_on_each_side() -> None:
    with pytest.raises(ValueError, match="3 on each side"):
        log_ratio([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="<= 0"):
        log_ratio([1.0, 2.0, 3.0], [1.0, 0.0, 3.0])


def test_without_spread_on_either_side_the_ratio_is_exact() -> None:
    est = log_ratio([2.0, 2.0, 2.0], [3.0, 3.0, 3.0])
    assert est.df is None and est.low == est.high == pytest.approx(1.5)
    assert min_detectable_log_ratio(est.se_log, est.df) == 0.0


CASES = [  # (cycles per side, sd of the logs of A, of B)
    (3, 0.03, 0.03),
    (3, 0.02, 0.06),
    (5, 0.05, 0.05),
    (10, 0.02, 0.06),
]


@pytest.mark.parametrize(("n", "sd_a", "sd_b"), CASES)
def test_the_95_percent_ratio_interval_covers_the_true_ratio_93_to_97_percent(
    n: int, sd_a: float, sd_b: float
) -> None:
    # log-normal cycle values with a known true B/A of 1.08 (ratio of geometric means)
    rng = random.Random(SEED + n)
    true_ratio = 1.08
    covered = 0
    for _ in range(TRIALS):
        a = [rng.lognormvariate(0.0, sd_a) for _ in range(n)]
        b = [rng.lognormvariate(math.log(true_ratio), sd_b) for _ in range(n)]
        est = log_ratio(a, b)
        covered += est.low <= true_ratio <= est.high
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


# --- power, minimum detectable difference, cycles needed ----------------------------------------


def test_at_the_minimum_detectable_difference_the_power_is_80_percent() -> None:
    est = log_ratio([1.0, 1.02, 0.99, 1.01], [1.03, 1.0, 1.05, 1.02])
    assert est.df is not None
    mdd = min_detectable_log_ratio(est.se_log, est.df)
    assert welch_power(mdd, est.se_log, est.df) == pytest.approx(0.8, abs=1e-6)
    assert (
        welch_power(mdd * 0.9, est.se_log, est.df)
        < 0.8
        < welch_power(mdd * 1.1, est.se_log, est.df)
    )


def test_the_power_formula_matches_simulated_welch_tests() -> None:
    # 5 cycles a side, sd of the logs 0.04: simulate the test at a true difference of 6 %
    n, sd, delta = 5, 0.04, math.log(1.06)
    se = math.sqrt(2 * sd**2 / n)
    predicted = welch_power(delta, se, 2 * (n - 1))  # df with equal, known spreads
    rng = np.random.default_rng(SEED)
    a = rng.normal(0.0, sd, (TRIALS, n))
    b = rng.normal(delta, sd, (TRIALS, n))
    p = scipy_stats.ttest_ind(b, a, axis=1, equal_var=False).pvalue
    assert abs(float(np.mean(p < 0.05)) - predicted) < 0.04


def test_cycles_needed_is_the_smallest_count_with_80_percent_power() -> None:
    sd = 0.03
    n = cycles_needed(sd, sd, 5.0)
    assert n is not None and n >= 3

    def power(cycles: int) -> float:
        return welch_power(math.log(1.05), math.sqrt(2 * sd**2 / cycles), 2 * (cycles - 1))

    assert power(n) >= 0.8 and (n == 3 or power(n - 1) < 0.8)
    assert cycles_needed(sd, sd, 1.0) > n  # type: ignore[operator]
    assert cycles_needed(0.001, 0.001, 20.0) == 3  # never fewer than 3 cycles
    assert cycles_needed(0.5, 0.5, 0.1) is None  # beyond the planning limit


def test_the_spread_is_the_sd_of_the_logs() -> None:
    assert log_spread([1.0, math.e, math.e**2]) == pytest.approx(1.0)
    assert log_spread([1.0]) is None and log_spread([1.0, -1.0]) is None


# --- the statistics text --------------------------------------------------------------------------


def _stats(*configs: tuple[str, list[float]]) -> StudyStatistics:
    return StudyStatistics(
        configs=[
            ConfigStatistics(
                config_index=i,
                config_hash=f"h{i}",
                label=label,
                runs_completed=len(values),
                metrics={"tokens_per_second": describe(values)},
            )
            for i, (label, values) in enumerate(configs)
        ]
    )


def test_the_text_says_why_two_cycles_have_no_interval() -> None:
    text = format_statistics(_stats(("batch_size=1", [10.0, 12.0]), ("batch_size=8", [80.0, 84.0])))
    assert "n/a (2 cycles: no interval below 3)" in text
    assert "too uncertain to bound the mean" in text


def test_a_single_run_is_shown_as_one_measurement_without_statistics_columns() -> None:
    text = format_statistics(_stats(("tiny, pytorch, fp32", [42.0])))
    assert text.startswith("single run:")
    assert "at least 3 cycles" in text and "42" in text
    assert "CV %" not in text and "CI" not in text


# --- Pareto ------------------------------------------------------------------------------------


def test_pareto_front_keeps_only_undominated_points() -> None:
    # (tokens/s up, J/token down)
    points = [
        (100.0, 1.0),  # 0: front
        (50.0, 0.5),  # 1: front (lowest energy)
        (80.0, 1.2),  # 2: dominated by 0
        (100.0, 1.5),  # 3: same speed as 0, more energy -> dominated
        (120.0, 2.0),  # 4: front (fastest)
        (40.0, 0.5),  # 5: same energy as 1, slower -> dominated
    ]
    assert pareto_front(points) == [0, 1, 4]


def test_identical_points_are_both_on_the_front() -> None:
    assert pareto_front([(10.0, 1.0), (10.0, 1.0), (5.0, 2.0)]) == [0, 1]


def test_points_without_a_value_are_never_on_the_front() -> None:
    assert pareto_front([(None, 1.0), (10.0, None), (1.0, 9.0)]) == [2]
    assert pareto_front([]) == []


# --- labels and text --------------------------------------------------------------------------


def _config(**pytorch: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"model": "builtin:tiny", "backend": "pytorch", "pytorch": pytorch}
    )


def test_labels_name_what_varies_and_leave_out_unset_values() -> None:
    configs = [
        _config(batch_size=8, torch_compile=True),
        _config(batch_size=1, torch_compile=True),
        _config(batch_size=1, torch_compile=False),
    ]
    assert config_labels(configs) == [
        "batch_size=8, torch_compile=True",
        "batch_size=1, torch_compile=True",
        "batch_size=1, torch_compile=False",
    ]
    modes = [_config(torch_compile=False), _config(torch_compile=True), _config(load_in_4bit=True)]
    assert config_labels(modes) == [
        "torch_compile=False",
        "torch_compile=True",
        "load_in_4bit=True",
    ]


def test_a_single_config_is_labelled_by_model_backend_and_precision() -> None:
    (label,) = config_labels([_config(batch_size=2)])
    assert label.startswith("tiny, pytorch")


def test_format_statistics_prints_every_metric_and_the_ci_method() -> None:
    from llenergymeasure.results.study import ConfigStatistics, StudyStatistics

    stats = StudyStatistics(
        configs=[
            ConfigStatistics(
                config_index=0,
                config_hash="abc",
                label="batch_size=4",
                runs_completed=3,
                runs_planned=3,
                metrics={"tokens_per_second": describe([10.0, 11.0, 12.0])},
            )
        ]
    )
    text = format_statistics(stats)
    assert "batch_size=4" in text and "3/3 run(s)" in text
    assert "output tokens / s" in text and "(log_t)" in text and "11" in text
    assert "geometric mean" in text and "no interval below 3 cycles" in text
