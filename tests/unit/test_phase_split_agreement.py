"""The differential and time-resolved splits agree on a simulated engine (CPU analogue of the
issue's GPU check), and the split predicts a run with twice the output length.

Simulated engine: static batches; prefill takes 0.05 ms per prompt token at 800 W, each decode
step 20 ms at 400 W, 5 ms at 100 W between batches. The GPU's energy counter is sampled every
``dt`` (counter in mJ, like NVML).
"""

from __future__ import annotations

import math

import pytest

from llenergymeasure.phase_split.attribution import attribute_energy
from llenergymeasure.phase_split.curves import EnergyCurve
from llenergymeasure.phase_split.differential import differential_phase_split, predict_energy_j
from llenergymeasure.phase_split.timeline import (
    BatchTokenTimes,
    RequestTokenTimes,
    steps_from_token_times,
)

PREFILL_S_PER_TOKEN, PREFILL_W = 0.00005, 800.0
DECODE_STEP_S, DECODE_W = 0.020, 400.0
GAP_S, IDLE_W = 0.005, 100.0
BATCHES = [[120, 300, 250, 80], [400, 410, 90, 60], [200, 200, 200, 200]]


def simulate(new_tokens: int) -> tuple[list[BatchTokenTimes], list[tuple[float, float, float]]]:
    """Token times per batch and the power profile as (start, end, watts) segments."""
    t = 0.0
    batches, profile = [], []
    for b, prompts in enumerate(BATCHES):
        profile.append((t, t + GAP_S, IDLE_W))
        t += GAP_S
        start = t
        prefill = PREFILL_S_PER_TOKEN * sum(prompts)
        profile.append((t, t + prefill, PREFILL_W))
        t += prefill
        times = [t]
        for _ in range(new_tokens - 1):
            profile.append((t, t + DECODE_STEP_S, DECODE_W))
            t += DECODE_STEP_S
            times.append(t)
        batches.append(
            BatchTokenTimes(
                start, [RequestTokenTimes(10 * b + i, p, times) for i, p in enumerate(prompts)]
            )
        )
    return batches, profile


def energy_until(profile: list[tuple[float, float, float]], t: float) -> float:
    return sum(w * (min(t, b) - a) for a, b, w in profile if t > a)


def counter_curve(profile: list[tuple[float, float, float]], dt: float) -> EnergyCurve:
    end = profile[-1][1]
    n = math.ceil(end / dt) + 1
    times = [k * dt for k in range(n + 1)]
    return EnergyCurve.from_counter(times, [round(energy_until(profile, t) * 1000) for t in times])


def window_energy(profile: list[tuple[float, float, float]]) -> tuple[float, float]:
    return energy_until(profile, profile[-1][1]), profile[-1][1]


@pytest.mark.parametrize("dt", [0.001, 0.005])
def test_time_resolved_prefill_agrees_with_the_differential_prefill(dt: float) -> None:
    full_batches, full_profile = simulate(64)
    _, prefill_profile = simulate(1)
    total_j, total_s = window_energy(full_profile)
    prefill_j, prefill_s = window_energy(prefill_profile)
    n_requests = sum(len(b) for b in BATCHES)
    split, reason = differential_phase_split(
        total_energy_j=total_j,
        total_duration_s=total_s,
        input_tokens=sum(map(sum, BATCHES)),
        output_tokens=64 * n_requests,
        requests=n_requests,
        prefill_energy_j=prefill_j,
        prefill_duration_s=prefill_s,
    )
    assert reason is None and split is not None
    attribution = attribute_energy(
        steps_from_token_times(full_batches),
        counter_curve(full_profile, dt),
        window=(0.0, total_s),
        total_energy_j=total_j,
    )
    assert math.fsum(r.energy_j for r in attribution.requests) == pytest.approx(total_j)
    assert attribution.energy_prefill_j == pytest.approx(split.energy_prefill_j, rel=0.10)
    assert attribution.confidence in {"high", "medium"}


def test_coarse_sampling_is_flagged_low_but_keeps_the_total() -> None:
    full_batches, full_profile = simulate(64)
    total_j, total_s = window_energy(full_profile)
    attribution = attribute_energy(
        steps_from_token_times(full_batches),
        counter_curve(full_profile, 0.1),
        window=(0.0, total_s),
        total_energy_j=total_j,
    )
    assert attribution.confidence == "low"
    assert math.fsum(r.energy_j for r in attribution.requests) == pytest.approx(total_j)


def test_the_split_of_a_64_token_run_predicts_the_128_token_run() -> None:
    n_requests = sum(len(b) for b in BATCHES)
    runs = {}
    for new in (1, 64, 128):
        runs[new] = window_energy(simulate(new)[1])
    split, _ = differential_phase_split(
        total_energy_j=runs[64][0],
        total_duration_s=runs[64][1],
        input_tokens=sum(map(sum, BATCHES)),
        output_tokens=64 * n_requests,
        requests=n_requests,
        prefill_energy_j=runs[1][0],
        prefill_duration_s=runs[1][1],
    )
    assert split is not None
    predicted = predict_energy_j(split, 128 * n_requests)
    assert predicted == pytest.approx(runs[128][0], rel=1e-9)
    # the reading, prefill + 2 x decode, is within 5 % here
    assert split.energy_prefill_j + 2 * split.energy_decode_j == pytest.approx(
        runs[128][0], rel=0.05
    )
