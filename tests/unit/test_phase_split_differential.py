"""Specification of the differential prefill/decode split (``phase_split.differential``).

Full window: 8 requests, 4 000 input tokens, 8 x 128 output tokens, 1 000 J in 10 s.
Prefill-only window (max_new_tokens 1): 120 J in 1 s. Idle baseline: 50 W.
"""

from __future__ import annotations

import math

import pytest

from llenergymeasure.phase_split.differential import (
    PhaseSplit,
    differential_phase_split,
    predict_energy_j,
)

FULL = {
    "total_energy_j": 1000.0,
    "total_duration_s": 10.0,
    "input_tokens": 4000,
    "output_tokens": 8 * 128,
    "requests": 8,
    "prefill_energy_j": 120.0,
    "prefill_duration_s": 1.0,
}


def split_of(**overrides: float | int | None) -> PhaseSplit:
    split, reason = differential_phase_split(**{**FULL, **overrides})  # type: ignore[arg-type]
    assert reason is None
    assert split is not None
    return split


def test_decode_is_the_total_minus_the_prefill_window_and_the_first_token_is_prefill() -> None:
    s = split_of()
    assert s.method == "differential"
    assert s.energy_prefill_j == 120.0
    assert s.energy_decode_j == pytest.approx(880.0)
    assert s.decode_tokens == 8 * 127
    assert s.duration_decode_s == pytest.approx(9.0)


def test_per_token_figures_divide_by_input_tokens_and_by_decode_tokens() -> None:
    s = split_of()
    assert s.j_per_input_token_prefill == pytest.approx(120.0 / 4000)
    assert s.j_per_decode_token == pytest.approx(880.0 / (8 * 127))


def test_shares_are_fractions_of_the_total_and_add_up_to_one() -> None:
    s = split_of()
    assert s.share_prefill == pytest.approx(0.12)
    assert s.share_decode == pytest.approx(0.88)


def test_baseline_adjusted_figures_subtract_idle_power_times_each_windows_duration() -> None:
    s = split_of(baseline_power_w=50.0)
    assert s.energy_total_adjusted_j == pytest.approx(1000.0 - 500.0)
    assert s.energy_prefill_adjusted_j == pytest.approx(120.0 - 50.0)
    assert s.energy_decode_adjusted_j == pytest.approx(880.0 - 450.0)
    assert s.j_per_input_token_prefill_adjusted == pytest.approx(70.0 / 4000)
    assert s.j_per_decode_token_adjusted == pytest.approx(430.0 / (8 * 127))
    assert s.share_prefill_adjusted == pytest.approx(70.0 / 500.0)
    assert s.share_decode_adjusted == pytest.approx(430.0 / 500.0)
    assert s.notes == []


def test_without_a_baseline_the_adjusted_figures_are_absent() -> None:
    s = split_of()
    assert s.baseline_power_w is None
    assert s.energy_prefill_adjusted_j is None
    assert s.j_per_decode_token_adjusted is None


def test_a_baseline_above_a_phases_draw_is_reported_not_clipped() -> None:
    s = split_of(baseline_power_w=150.0)
    assert s.energy_prefill_adjusted_j == pytest.approx(-30.0)
    assert any("exceeds" in n for n in s.notes)


def test_a_prefill_window_costing_more_than_the_full_run_is_refused_with_a_reason() -> None:
    split, reason = differential_phase_split(**{**FULL, "prefill_energy_j": 1001.0})  # type: ignore[arg-type]
    assert split is None
    assert reason is not None and "more energy" in reason


def test_no_decode_tokens_is_refused_with_a_reason() -> None:
    split, reason = differential_phase_split(**{**FULL, "output_tokens": 8})  # type: ignore[arg-type]
    assert split is None
    assert reason is not None and "no decode token" in reason


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prefill_duration_s": 11.0}, "lasted longer"),
        ({"requests": 0}, "no request"),
        ({"input_tokens": 0}, "no input tokens"),
        ({"total_energy_j": math.nan}, "not a finite number"),
    ],
)
def test_other_impossible_inputs_are_refused(override: dict[str, float], needle: str) -> None:
    split, reason = differential_phase_split(**{**FULL, **override})  # type: ignore[arg-type]
    assert split is None
    assert reason is not None and needle in reason


def test_the_split_round_trips_through_json() -> None:
    s = split_of(baseline_power_w=50.0)
    assert PhaseSplit.model_validate_json(s.model_dump_json()) == s


# -- prediction of another output length -------------------------------------------------


def test_prediction_at_the_measured_length_gives_back_the_measured_total() -> None:
    s = split_of(baseline_power_w=50.0)
    assert predict_energy_j(s, FULL["output_tokens"]) == pytest.approx(1000.0)  # type: ignore[arg-type]
    assert predict_energy_j(s, FULL["output_tokens"], adjusted=True) == pytest.approx(500.0)  # type: ignore[arg-type]


def test_twice_the_output_length_is_prefill_plus_twice_decode_plus_one_token_per_request() -> None:
    """The issue's GPU check: a 256-token run vs prefill + 2 x decode of the 128-token run."""
    s = split_of()
    doubled = predict_energy_j(s, 8 * 256)
    assert doubled is not None
    prefill_plus_twice_decode = s.energy_prefill_j + 2 * s.energy_decode_j
    # 2 x 128 tokens = 255 decode tokens per request, one more than 2 x 127
    assert doubled == pytest.approx(prefill_plus_twice_decode + 8 * s.j_per_decode_token)
    assert doubled == pytest.approx(120.0 + 880.0 * 255 / 127)
    # and the two readings of "twice the output" differ by under 1 % here
    assert abs(doubled - prefill_plus_twice_decode) / doubled < 0.01


def test_a_linear_workload_is_predicted_exactly() -> None:
    """Synthetic engine: prefill 0.03 J per input token, 0.9 J per decode token."""

    def run_energy(tokens_per_request: int) -> float:
        return 0.03 * 4000 + 0.9 * 8 * (tokens_per_request - 1)

    s = split_of(total_energy_j=run_energy(128), prefill_energy_j=run_energy(1))
    assert s.j_per_input_token_prefill == pytest.approx(0.03)
    assert s.j_per_decode_token == pytest.approx(0.9)
    assert predict_energy_j(s, 8 * 256) == pytest.approx(run_energy(256))


def test_adjusted_prediction_needs_a_baseline() -> None:
    assert predict_energy_j(split_of(), 2048, adjusted=True) is None


def test_fewer_output_tokens_than_requests_cannot_be_predicted() -> None:
    with pytest.raises(ValueError, match="fewer than one per request"):
        predict_energy_j(split_of(), 4)
