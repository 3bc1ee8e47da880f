"""Study statistics: t quantile and intervals, bootstrap CI, describe(), Pareto set, labels.

scipy is a test-only reference: the package computes everything in pure Python.
"""

from __future__ import annotations

import math
import random

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.stats import (
    bootstrap_interval,
    config_labels,
    describe,
    format_statistics,
    pareto_front,
    t_cdf,
    t_interval,
    t_quantile,
)

scipy_stats = pytest.importorskip("scipy.stats")
np = pytest.importorskip("numpy")


# --- Student t ---------------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30, 100, 1000])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df: int, p: float) -> None:
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("df", [1, 3, 7.5, 40])
@pytest.mark.parametrize("x", [-4.0, -0.3, 0.0, 1.0, 2.5, 12.0])
def test_t_cdf_matches_scipy(df: float, x: float) -> None:
    assert t_cdf(x, df) == pytest.approx(scipy_stats.t.cdf(x, df), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_matches_scipy_for_small_samples(n: int) -> None:
    rng = random.Random(n)
    sample = [rng.gauss(3.0, 0.4) for _ in range(n)]
    low, high = t_interval(sample, 0.95)
    ref = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(sample), scale=scipy_stats.sem(sample))
    assert (low, high) == pytest.approx(ref, rel=1e-9)


def test_a_t_interval_of_a_known_sample() -> None:
    # mean 2, sample std 1, n 3: half width = t(0.975, 2) * 1/sqrt(3) = 4.302653 / 1.732051
    low, high = t_interval([1.0, 2.0, 3.0])
    assert high - 2.0 == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-9)
    assert low == pytest.approx(4.0 - high)


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_ci_is_close_to_scipy_percentile_bootstrap_for_n_40() -> None:
    rng = np.random.default_rng(7)
    sample = rng.lognormal(mean=0.0, sigma=0.3, size=40)
    low, high = bootstrap_interval(list(sample), 0.95, resamples=10_000, seed=0)
    ref = scipy_stats.bootstrap(
        (sample,),
        np.mean,
        confidence_level=0.95,
        n_resamples=10_000,
        method="percentile",
        random_state=0,
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(low - ref.low) < 0.05 * width
    assert abs(high - ref.high) < 0.05 * width


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    sample = [random.Random(1).random() for _ in range(35)]
    sample = [x * (i + 1) for i, x in enumerate(sample)]
    assert bootstrap_interval(sample, seed=3) == bootstrap_interval(sample, seed=3)
    assert bootstrap_interval(sample, seed=3) != bootstrap_interval(sample, seed=4)


# --- describe ----------------------------------------------------------------------------------


def test_describe_uses_t_below_30_and_bootstrap_from_30() -> None:
    small = describe([1.0, 2.0, 3.0, 4.0])
    assert small.ci_method == "t"
    assert small.n == 4 and small.mean == 2.5
    assert small.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert small.cv == pytest.approx(small.std / 2.5)
    large = describe([float(i % 7) for i in range(30)])
    assert large.ci_method == "bootstrap"
    assert large.ci_low is not None and large.ci_high is not None
    assert large.ci_low < large.mean < large.ci_high  # type: ignore[operator]


def test_one_value_has_a_mean_but_no_spread_or_ci() -> None:
    stats = describe([5.0])
    assert (stats.n, stats.mean) == (1, 5.0)
    assert stats.std is None and stats.cv is None
    assert stats.ci_low is None and stats.ci_high is None and stats.ci_method is None


def test_missing_values_are_not_counted_and_none_at_all_gives_no_mean() -> None:
    assert describe([None, 2.0, None, 4.0]).n == 2
    empty = describe([None, None])
    assert empty.n == 0 and empty.mean is None and empty.std is None


def test_cv_is_none_when_the_mean_is_zero() -> None:
    assert describe([-1.0, 1.0]).cv is None


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


# --- labels and text ---------------------------------------------------------------------------


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
    from llenergymeasure.results.models import ConfigStatistics, StudyStatistics

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
    assert "output tokens / s" in text and "(t)" in text and "11" in text
