"""Arrival schedules: the right mean and spread for each process, reproducible from the seed."""

from __future__ import annotations

import math
import statistics

import pytest

from llenergymeasure.online.arrivals import arrival_offsets, inter_arrival_gaps

N = 20_000


@pytest.mark.parametrize("rate", [0.5, 4.0, 64.0])
def test_poisson_gaps_are_exponential_with_mean_one_over_rate(rate: float):
    gaps = inter_arrival_gaps(N, rate, "poisson", seed=1)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # exponential: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.05)
    assert min(gaps) >= 0


def test_constant_gaps_are_exactly_one_over_rate():
    assert inter_arrival_gaps(5, 4.0, "constant") == [0.25] * 5


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_keep_the_mean_and_scale_the_variance(burstiness: float):
    rate = 8.0
    gaps = inter_arrival_gaps(N, rate, "gamma", burstiness=burstiness, seed=2)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.04)
    expected_var = 1 / (burstiness * rate**2)
    assert statistics.pvariance(gaps) == pytest.approx(expected_var, rel=0.1)


def test_gamma_with_burstiness_one_matches_poisson_statistics():
    g = inter_arrival_gaps(N, 2.0, "gamma", burstiness=1.0, seed=3)
    p = inter_arrival_gaps(N, 2.0, "poisson", seed=4)
    assert statistics.fmean(g) == pytest.approx(statistics.fmean(p), rel=0.05)
    assert statistics.pstdev(g) == pytest.approx(statistics.pstdev(p), rel=0.07)


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_infinite_rate_sends_everything_at_once(arrival):
    assert arrival_offsets(4, math.inf, arrival) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_same_seed_same_schedule_other_seed_other_schedule(arrival):
    a = arrival_offsets(50, 3.0, arrival, burstiness=0.5 if arrival == "gamma" else 1.0, seed=7)
    b = arrival_offsets(50, 3.0, arrival, burstiness=0.5 if arrival == "gamma" else 1.0, seed=7)
    c = arrival_offsets(50, 3.0, arrival, burstiness=0.5 if arrival == "gamma" else 1.0, seed=8)
    assert a == b
    assert a != c


def test_offsets_start_at_zero_and_accumulate_the_gaps():
    offsets = arrival_offsets(4, 2.0, "constant")
    assert offsets == [0.0, 0.5, 1.0, 1.5]
    assert arrival_offsets(1, 2.0) == [0.0]
    assert arrival_offsets(0, 2.0) == []


def test_offsets_are_non_decreasing():
    offsets = arrival_offsets(1000, 10.0, "gamma", burstiness=0.2, seed=5)
    assert offsets == sorted(offsets)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 3, "rate": 0.0}, "rate"),
        ({"n": 3, "rate": float("nan")}, "rate"),
        ({"n": -1, "rate": 1.0}, "n must"),
        ({"n": 3, "rate": 1.0, "burstiness": 0.0}, "burstiness"),
        ({"n": 3, "rate": 1.0, "arrival": "uniform"}, "unknown arrival"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inter_arrival_gaps(**kwargs)
