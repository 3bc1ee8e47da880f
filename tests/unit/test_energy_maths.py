"""Specification of the pure energy arithmetic in ``llenergymeasure.energy.maths``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llenergymeasure.energy.maths import (
    EnergyCounterResetError,
    adjusted_energy_j,
    counter_delta_mj,
    energy_per,
    integrate_power_j,
    mean_power_w,
    relative_difference,
)
from llenergymeasure.exceptions import BackendError

# -- counter deltas ---------------------------------------------------------------------------


def test_counter_delta_is_plain_difference_when_counter_increases() -> None:
    assert counter_delta_mj(1_000_000, 1_250_500) == 250_500


def test_counter_delta_of_unchanged_counter_is_zero() -> None:
    assert counter_delta_mj(42, 42) == 0


def test_counter_wrap_is_handled_as_modular_delta() -> None:
    start = 2**32 - 100
    assert counter_delta_mj(start, 50, bits=32) == 150


def test_counter_wrap_of_64_bit_counter_is_modular() -> None:
    assert counter_delta_mj(2**64 - 1, 9) == 10


def test_counter_going_far_backwards_is_a_reset_not_a_wrap() -> None:
    with pytest.raises(EnergyCounterResetError, match="reset"):
        counter_delta_mj(5_000_000_000, 1_000)


def test_counter_reset_error_is_a_backend_error() -> None:
    assert issubclass(EnergyCounterResetError, BackendError)


def test_counter_wrap_larger_than_the_plausible_maximum_is_a_reset() -> None:
    with pytest.raises(EnergyCounterResetError):
        counter_delta_mj(2**32 - 100, 50, bits=32, max_delta_mj=100)


def test_counter_jump_larger_than_the_plausible_maximum_is_rejected() -> None:
    with pytest.raises(EnergyCounterResetError, match="plausible"):
        counter_delta_mj(0, 10_000_000, max_delta_mj=1_000)


def test_counter_values_outside_the_counter_range_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        counter_delta_mj(-1, 5)
    with pytest.raises(ValueError):
        counter_delta_mj(0, 2**32, bits=32)


@given(
    start=st.integers(min_value=0, max_value=2**32 - 1),
    delta=st.integers(min_value=0, max_value=2**31),
)
def test_counter_delta_recovers_any_plausible_increment_across_a_wrap(
    start: int, delta: int
) -> None:
    end = (start + delta) % 2**32
    assert counter_delta_mj(start, end, bits=32) == delta


# -- trapezoid integration --------------------------------------------------------------------


def test_constant_power_integrates_to_power_times_duration() -> None:
    assert integrate_power_j([0.0, 1.0, 2.0, 3.0], [100.0] * 4) == pytest.approx(300.0)


def test_linear_ramp_integrates_exactly_with_trapezoids() -> None:
    # 0 W -> 100 W over 10 s = 500 J
    assert integrate_power_j([0.0, 5.0, 10.0], [0.0, 50.0, 100.0]) == pytest.approx(500.0)


def test_missing_power_samples_are_bridged_by_their_neighbours() -> None:
    with_gap = integrate_power_j([0.0, 1.0, 2.0, 3.0], [100.0, None, None, 200.0])
    assert with_gap == pytest.approx((100.0 + 200.0) / 2 * 3.0)


def test_nan_power_samples_are_treated_as_missing() -> None:
    assert integrate_power_j([0.0, 1.0, 2.0], [100.0, math.nan, 100.0]) == pytest.approx(200.0)


def test_unsorted_samples_are_integrated_in_time_order() -> None:
    assert integrate_power_j([2.0, 0.0, 1.0], [100.0, 100.0, 100.0]) == pytest.approx(200.0)


def test_window_clipping_interpolates_linearly_at_the_edges() -> None:
    # ramp 0..100 W over 0..10 s; window [2, 6] -> power 20..60 W -> 4 s * 40 W = 160 J
    energy = integrate_power_j([0.0, 10.0], [0.0, 100.0], t0=2.0, t1=6.0)
    assert energy == pytest.approx(160.0)


def test_window_clipping_keeps_interior_samples() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    powers = [100.0, 100.0, 300.0, 100.0, 100.0]
    # [0.5, 3.5]: 0.5 s at 100 W + 1 s ramp (avg 200) + 1 s ramp (avg 200) + 0.5 s at 100 W
    assert integrate_power_j(times, powers, t0=0.5, t1=3.5) == pytest.approx(500.0)


def test_window_beyond_the_samples_holds_the_nearest_power() -> None:
    assert integrate_power_j([1.0, 2.0], [100.0, 100.0], t0=0.0, t1=4.0) == pytest.approx(400.0)


def test_single_sample_with_a_window_is_held_over_the_window() -> None:
    assert integrate_power_j([1.0], [80.0], t0=0.0, t1=2.0) == pytest.approx(160.0)


def test_too_few_samples_give_none_rather_than_zero() -> None:
    assert integrate_power_j([], []) is None
    assert integrate_power_j([1.0], [80.0]) is None
    assert integrate_power_j([0.0, 1.0], [None, None], t0=0.0, t1=1.0) is None


def test_empty_window_integrates_to_zero() -> None:
    assert integrate_power_j([0.0, 1.0], [100.0, 100.0], t0=0.5, t1=0.5) == 0.0


def test_reversed_window_is_rejected() -> None:
    with pytest.raises(ValueError):
        integrate_power_j([0.0, 1.0], [100.0, 100.0], t0=1.0, t1=0.0)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        integrate_power_j([0.0, 1.0], [100.0])


@given(
    powers=st.lists(st.floats(min_value=0, max_value=1000), min_size=3, max_size=30),
    split=st.floats(min_value=0.0, max_value=1.0),
)
def test_integral_is_additive_over_adjacent_windows(powers: list[float], split: float) -> None:
    times = [0.1 * k for k in range(len(powers))]
    end = times[-1]
    cut = split * end
    whole = integrate_power_j(times, powers, t0=0.0, t1=end)
    left = integrate_power_j(times, powers, t0=0.0, t1=cut)
    right = integrate_power_j(times, powers, t0=cut, t1=end)
    assert whole is not None and left is not None and right is not None
    assert left + right == pytest.approx(whole, rel=1e-9, abs=1e-6)


# -- means and differences --------------------------------------------------------------------


def test_mean_power_is_time_weighted() -> None:
    # 100 W for 9 s then ramp to 200 W over 1 s: (900 + 150) / 10
    assert mean_power_w([0.0, 9.0, 10.0], [100.0, 100.0, 200.0]) == pytest.approx(105.0)


def test_mean_power_of_a_single_sample_is_that_sample() -> None:
    assert mean_power_w([3.0], [72.5]) == pytest.approx(72.5)


def test_mean_power_without_valid_samples_is_none() -> None:
    assert mean_power_w([0.0, 1.0], [None, None]) is None


def test_relative_difference_is_signed_fraction_of_the_reference() -> None:
    assert relative_difference(110.0, 100.0) == pytest.approx(0.10)
    assert relative_difference(90.0, 100.0) == pytest.approx(-0.10)


def test_relative_difference_to_zero_reference_is_undefined() -> None:
    assert relative_difference(5.0, 0.0) is None


def test_baseline_adjusted_energy_subtracts_idle_power_times_duration() -> None:
    assert adjusted_energy_j(1000.0, 73.0, 10.0) == pytest.approx(270.0)


def test_baseline_adjusted_energy_is_not_clipped_at_zero() -> None:
    assert adjusted_energy_j(100.0, 73.0, 10.0) == pytest.approx(-630.0)


# -- energy per token / request ---------------------------------------------------------------


def test_energy_per_unit_is_none_without_energy_or_without_units() -> None:
    assert energy_per(300.0, 120) == pytest.approx(2.5)
    assert energy_per(-30.0, 10) == pytest.approx(-3.0)  # adjusted energy is not clipped
    assert energy_per(None, 10) is None
    assert energy_per(300.0, 0) is None
