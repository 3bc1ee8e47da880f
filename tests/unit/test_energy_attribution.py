"""Specification of time-resolved energy attribution (``llenergymeasure.energy.attribution``).

Hand-made timelines with hand-computed energies: a step's energy (counter difference,
interpolated at its boundaries) is shared among its requests in proportion to the tokens each
processed in it; energy between steps goes to the step that follows; the requests' energies
sum to the window's energy.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llenergymeasure.energy.attribution import (
    BatchTokenTimes,
    EnergyCurve,
    EngineStep,
    RequestEnergy,
    RequestTokenTimes,
    RequestWork,
    attribute_energy,
    attribution_confidence,
    batches_from_records,
    curves_from_samples,
    steps_from_token_times,
)
from llenergymeasure.energy.maths import EnergyCounterResetError, integrate_power_j
from llenergymeasure.energy.sampler import Sample


def constant_power_counter(power_w: float, t0: float, t1: float, dt: float) -> EnergyCurve:
    """Counter samples (mJ) of a device drawing ``power_w`` constantly, every ``dt`` s."""
    n = round((t1 - t0) / dt)
    times = [t0 + k * dt for k in range(n + 1)]
    return EnergyCurve.from_counter(times, [round(power_w * (t - t0) * 1000) for t in times])


def by_request(result_requests: list[RequestEnergy]) -> dict[int, float]:
    return {r.request: r.energy_j for r in result_requests}


# -- building the step timeline from token times -----------------------------------------


def test_a_single_request_has_a_prefill_step_then_one_decode_step_per_token() -> None:
    steps = steps_from_token_times(
        [
            BatchTokenTimes(
                0.0, [RequestTokenTimes(7, prompt_tokens=100, token_times_s=[0.5, 0.6, 0.7])]
            )
        ]
    )
    assert steps == [
        EngineStep(0.0, 0.5, (RequestWork(7, 100, "prefill"),)),
        EngineStep(0.5, 0.6, (RequestWork(7, 1, "decode"),)),
        EngineStep(0.6, 0.7, (RequestWork(7, 1, "decode"),)),
    ]


def test_requests_of_a_static_batch_share_steps_and_early_finishers_drop_out() -> None:
    times = [1.2, 1.3, 1.4, 1.5]
    batch = BatchTokenTimes(
        1.0,
        [
            RequestTokenTimes(0, prompt_tokens=30, token_times_s=times),
            RequestTokenTimes(1, prompt_tokens=10, token_times_s=times[:2]),  # hit EOS early
        ],
    )
    steps = steps_from_token_times([batch])
    assert [(s.start_s, s.end_s) for s in steps] == [(1.0, 1.2), (1.2, 1.3), (1.3, 1.4), (1.4, 1.5)]
    assert steps[0].work == (RequestWork(0, 30, "prefill"), RequestWork(1, 10, "prefill"))
    assert steps[1].work == (RequestWork(0, 1, "decode"), RequestWork(1, 1, "decode"))
    assert steps[2].work == (RequestWork(0, 1, "decode"),)
    assert steps[3].work == (RequestWork(0, 1, "decode"),)


def test_tokens_accepted_together_count_as_several_decode_tokens_of_one_step() -> None:
    steps = steps_from_token_times(
        [BatchTokenTimes(0.0, [RequestTokenTimes(0, 5, [0.1, 0.2, 0.2, 0.2])])]
    )
    assert steps[1].work == (RequestWork(0, 3, "decode"),)


def test_a_request_whose_first_token_is_also_accepted_with_others_keeps_its_prefill() -> None:
    steps = steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 5, [0.1, 0.1])])])
    assert steps == [
        EngineStep(0.0, 0.1, (RequestWork(0, 5, "prefill"), RequestWork(0, 1, "decode")))
    ]


def test_a_request_that_generated_nothing_is_charged_its_prompt_in_the_first_step() -> None:
    steps = steps_from_token_times(
        [BatchTokenTimes(0.0, [RequestTokenTimes(0, 5, [0.1, 0.2]), RequestTokenTimes(1, 9, [])])]
    )
    assert steps[0].work == (RequestWork(0, 5, "prefill"), RequestWork(1, 9, "prefill"))


def test_consecutive_batches_leave_the_gap_between_them_outside_any_step() -> None:
    steps = steps_from_token_times(
        [
            BatchTokenTimes(2.0, [RequestTokenTimes(1, 4, [2.5, 2.6])]),
            BatchTokenTimes(0.0, [RequestTokenTimes(0, 4, [0.5, 0.6])]),
        ]
    )
    assert [(s.start_s, s.end_s) for s in steps] == [(0.0, 0.5), (0.5, 0.6), (2.0, 2.5), (2.5, 2.6)]


def test_overlapping_batches_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlap"):
        steps_from_token_times(
            [
                BatchTokenTimes(0.0, [RequestTokenTimes(0, 4, [0.5, 0.6])]),
                BatchTokenTimes(0.55, [RequestTokenTimes(1, 4, [0.7])]),
            ]
        )


def test_a_batch_without_token_times_cannot_be_reconstructed() -> None:
    with pytest.raises(ValueError, match="beam search"):
        steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 4, [])])])


def test_decreasing_token_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 4, [0.5, 0.4])])])


# -- energy curves -----------------------------------------------------------------------


def test_counter_curve_interpolates_linearly_between_samples() -> None:
    curve = EnergyCurve.from_counter([0.0, 1.0, 2.0], [10_000, 110_000, 410_000])
    assert curve.energy_between(0.0, 1.0) == pytest.approx(100.0)
    assert curve.energy_between(0.5, 1.5) == pytest.approx(50.0 + 150.0)
    assert curve.energy_between(2.0, 2.5) == pytest.approx(150.0)  # edge slope held


def test_power_curve_matches_the_trapezoid_integral_anywhere() -> None:
    times, powers = [0.0, 0.3, 0.7, 1.0], [100.0, 400.0, 250.0, 300.0]
    curve = EnergyCurve.from_power(times, powers)
    for a, b in [(0.0, 1.0), (0.1, 0.5), (0.35, 0.36), (-0.2, 1.3)]:
        expected = integrate_power_j(times, powers, t0=a, t1=b)
        assert expected is not None
        assert curve.energy_between(a, b) == pytest.approx(expected)


def test_a_counter_reset_between_samples_is_an_error_not_energy() -> None:
    with pytest.raises(EnergyCounterResetError):
        EnergyCurve.from_counter([0.0, 1.0], [5_000_000_000, 10])


def test_curves_from_sampler_samples_prefer_the_counter_and_fall_back_to_power() -> None:
    def sample(t: float, device: int, power: float | None, energy: int | None) -> Sample:
        return Sample(t, device, None, "measurement", power, energy, None, None, None, None)

    samples = [
        sample(0.0, 0, 100.0, 0),
        sample(1.0, 0, 100.0, 250_000),  # counter says 250 J, power says 100 J
        sample(0.0, 1, 200.0, None),
        sample(1.0, 1, 200.0, None),
        sample(0.0, 2, None, None),
    ]
    curves = curves_from_samples(samples)
    assert sorted(curves) == [0, 1]
    assert curves[0].source == "counter"
    assert curves[0].energy_between(0.0, 1.0) == pytest.approx(250.0)
    assert curves[1].source == "power_integration"
    assert curves[1].energy_between(0.0, 1.0) == pytest.approx(200.0)


# -- attribution on hand-made timelines --------------------------------------------------


def test_a_single_request_gets_the_whole_window_energy() -> None:
    curve = constant_power_counter(300.0, 0.0, 2.0, 0.01)
    steps = steps_from_token_times(
        [BatchTokenTimes(0.5, [RequestTokenTimes(0, 50, [0.7, 0.8, 0.9])])]
    )
    result = attribute_energy(steps, curve, window=(0.0, 2.0))
    assert result.energy_j == pytest.approx(600.0)
    (req,) = result.requests
    assert req.energy_j == pytest.approx(600.0)
    # prefill step 0.5-0.7 plus the 0.5 s before it; the tail 0.9-2.0 goes to the last decode
    assert req.prefill_energy_j == pytest.approx(300.0 * 0.7)
    assert req.decode_energy_j == pytest.approx(300.0 * 1.3)
    assert (req.prefill_tokens, req.decode_tokens) == (50, 2)
    assert result.between_steps_energy_j == pytest.approx(300.0 * (0.5 + 1.1))
    assert result.energy_prefill_j == pytest.approx(req.prefill_energy_j)


def test_a_static_batch_splits_prefill_by_prompt_tokens_and_decode_equally() -> None:
    # power 500 W during prefill (0-0.4 s), 200 W during decode (0.4-1.0 s)
    times = [0.0, 0.4, 0.4000001, 1.0]
    curve = EnergyCurve.from_power(times, [500.0, 500.0, 200.0, 200.0])
    batch = BatchTokenTimes(
        0.0,
        [
            RequestTokenTimes(0, 300, [0.4, 0.7, 1.0]),
            RequestTokenTimes(1, 100, [0.4, 0.7, 1.0]),
        ],
    )
    result = attribute_energy(steps_from_token_times([batch]), curve)
    r = {x.request: x for x in result.requests}
    prefill_j = curve.energy_between(0.0, 0.4)
    decode_j = curve.energy_between(0.4, 1.0)
    assert r[0].prefill_energy_j == pytest.approx(prefill_j * 0.75)
    assert r[1].prefill_energy_j == pytest.approx(prefill_j * 0.25)
    assert r[0].decode_energy_j == pytest.approx(decode_j / 2)
    assert r[1].decode_energy_j == pytest.approx(decode_j / 2)
    assert result.energy_prefill_j == pytest.approx(prefill_j)
    assert result.energy_decode_j == pytest.approx(decode_j)
    assert result.share_prefill == pytest.approx(prefill_j / (prefill_j + decode_j))
    assert result.between_steps_energy_j == pytest.approx(0.0)


def test_a_request_that_finishes_early_stops_sharing_the_later_steps() -> None:
    curve = constant_power_counter(100.0, 0.0, 1.0, 0.01)
    batch = BatchTokenTimes(
        0.0,
        [
            RequestTokenTimes(0, 10, [0.2, 0.4, 0.6, 0.8, 1.0]),
            RequestTokenTimes(1, 10, [0.2, 0.4]),
        ],
    )
    result = attribute_energy(steps_from_token_times([batch]), curve)
    e = by_request(result.requests)
    # prefill 20 J split 10/10; step 0.2-0.4 (20 J) split 10/10; 0.4-1.0 (60 J) to request 0
    assert e[1] == pytest.approx(20.0)
    assert e[0] == pytest.approx(80.0)
    assert sum(e.values()) == pytest.approx(100.0)


def test_the_gap_between_batches_is_charged_to_the_next_batchs_prefill() -> None:
    curve = constant_power_counter(100.0, 0.0, 3.0, 0.01)
    steps = steps_from_token_times(
        [
            BatchTokenTimes(0.0, [RequestTokenTimes(0, 8, [0.5, 1.0])]),
            BatchTokenTimes(2.0, [RequestTokenTimes(1, 8, [2.5, 3.0])]),
        ]
    )
    result = attribute_energy(steps, curve, window=(0.0, 3.0))
    r = {x.request: x for x in result.requests}
    assert r[0].energy_j == pytest.approx(100.0)
    assert r[1].prefill_energy_j == pytest.approx(150.0)  # 1.0-2.0 idle + 2.0-2.5 prefill
    assert r[1].decode_energy_j == pytest.approx(50.0)
    assert result.between_steps_energy_j == pytest.approx(100.0)


def test_a_mixed_continuous_batching_step_splits_by_tokens_across_phases() -> None:
    curve = constant_power_counter(100.0, 0.0, 1.0, 0.001)
    steps = [
        EngineStep(0.0, 0.5, (RequestWork(0, 90, "prefill"),)),
        EngineStep(
            0.5, 1.0, (RequestWork(0, 1, "decode"), RequestWork(1, 9, "prefill"))
        ),  # a new request's prefill rides with an ongoing decode
    ]
    result = attribute_energy(steps, curve)
    r = {x.request: x for x in result.requests}
    assert r[0].prefill_energy_j == pytest.approx(50.0)
    assert r[0].decode_energy_j == pytest.approx(5.0)
    assert r[1].prefill_energy_j == pytest.approx(45.0)
    assert result.energy_prefill_j == pytest.approx(95.0)


def test_steps_without_tokens_are_merged_into_the_next_step_that_has_some() -> None:
    curve = constant_power_counter(10.0, 0.0, 3.0, 0.01)
    steps = [
        EngineStep(0.0, 1.0, ()),
        EngineStep(1.0, 2.0, (RequestWork(0, 1, "decode"),)),
        EngineStep(2.0, 3.0, (RequestWork(1, 1, "decode"),)),
    ]
    e = by_request(attribute_energy(steps, curve).requests)
    assert e == pytest.approx({0: 20.0, 1: 10.0})


def test_several_devices_of_one_engine_are_summed() -> None:
    a = constant_power_counter(100.0, 0.0, 1.0, 0.01)
    b = constant_power_counter(50.0, 0.0, 1.0, 0.01)
    steps = [EngineStep(0.0, 1.0, (RequestWork(0, 1, "decode"),))]
    assert attribute_energy(steps, [a, b]).energy_j == pytest.approx(150.0)


def test_scaling_to_the_backends_window_energy_keeps_conservation_against_it() -> None:
    curve = constant_power_counter(100.0, 0.0, 1.0, 0.01)
    steps = steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 8, [0.5, 1.0])])])
    result = attribute_energy(steps, curve, total_energy_j=102.0)
    assert result.curve_energy_j == pytest.approx(100.0)
    assert result.scale_factor == pytest.approx(1.02)
    assert math.fsum(r.energy_j for r in result.requests) == pytest.approx(102.0, rel=1e-12)


def test_overlapping_steps_and_steps_outside_the_window_are_rejected() -> None:
    curve = constant_power_counter(1.0, 0.0, 1.0, 0.1)
    work = (RequestWork(0, 1, "decode"),)
    with pytest.raises(ValueError, match="overlap"):
        attribute_energy([EngineStep(0.0, 0.5, work), EngineStep(0.4, 0.6, work)], curve)
    with pytest.raises(ValueError, match="outside the window"):
        attribute_energy([EngineStep(0.0, 0.5, work)], curve, window=(0.1, 1.0))
    with pytest.raises(ValueError, match="no step processed"):
        attribute_energy([EngineStep(0.0, 0.5, ())], curve)


# -- confidence --------------------------------------------------------------------------


def test_sampling_coarser_than_half_a_step_gives_low_confidence_and_says_why() -> None:
    curve = constant_power_counter(100.0, 0.0, 2.0, 0.1)  # 100 ms sampling
    token_times = [0.2 + 0.025 * k for k in range(40)]  # 25 ms decode steps
    steps = steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 8, token_times)])])
    result = attribute_energy(steps, curve, window=(0.0, 2.0))
    assert result.confidence == "low"
    assert "more than half a step" in result.confidence_reason
    assert result.sampling_interval_s == pytest.approx(0.1)
    assert result.median_step_s == pytest.approx(0.025)


def test_fine_sampling_gives_high_confidence() -> None:
    curve = constant_power_counter(100.0, 0.0, 2.0, 0.001)
    token_times = [0.2 + 0.025 * k for k in range(40)]
    steps = steps_from_token_times([BatchTokenTimes(0.0, [RequestTokenTimes(0, 8, token_times)])])
    assert attribute_energy(steps, curve, window=(0.0, 2.0)).confidence == "high"


@pytest.mark.parametrize(
    ("interval", "step", "inside", "expected"),
    [
        (0.001, 0.02, 100, "high"),
        (0.005, 0.02, 100, "medium"),
        (0.011, 0.02, 100, "low"),
        (0.001, 0.02, 1, "low"),
        (0.001, 0.0, 100, "low"),
    ],
)
def test_confidence_thresholds(interval: float, step: float, inside: int, expected: str) -> None:
    confidence, reason = attribution_confidence(interval, step, inside)
    assert confidence == expected
    assert reason


# -- conservation (property) -------------------------------------------------------------


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[BatchTokenTimes], EnergyCurve, float, float]:
    n_batches = draw(st.integers(1, 4))
    batches = []
    t = draw(st.floats(0.0, 5.0))
    t_start = t - draw(st.floats(0.0, 1.0))
    request = 0
    for _ in range(n_batches):
        t += draw(st.floats(0.0, 0.5))  # gap before the batch
        start = t
        n_steps = draw(st.integers(1, 12))
        step_times = []
        for _ in range(n_steps):
            t += draw(st.floats(0.001, 0.3))
            step_times.append(t)
        reqs = []
        for _ in range(draw(st.integers(1, 6))):
            count = draw(st.integers(0, n_steps))
            reqs.append(RequestTokenTimes(request, draw(st.integers(0, 500)), step_times[:count]))
            request += 1
        if all(not r.token_times_s for r in reqs):
            reqs[0] = RequestTokenTimes(reqs[0].request, reqs[0].prompt_tokens, step_times)
        if all(r.prompt_tokens == 0 for r in reqs) and all(len(r.token_times_s) <= 1 for r in reqs):
            reqs[0] = RequestTokenTimes(reqs[0].request, 1, reqs[0].token_times_s)
        batches.append(BatchTokenTimes(start, reqs))
    t_end = t + draw(st.floats(0.0, 1.0))
    n_samples = draw(st.integers(1, 40))
    sample_times = sorted(
        draw(st.lists(st.floats(t_start - 1, t_end + 1), min_size=n_samples, max_size=n_samples))
    )
    powers = draw(st.lists(st.floats(0.0, 1000.0), min_size=n_samples, max_size=n_samples))
    use_counter = draw(st.booleans()) and n_samples >= 2
    if use_counter:
        energy, counter = 0, []
        for p in powers:
            energy += int(p * 10)
            counter.append(energy)
        curve = EnergyCurve.from_counter(sample_times, counter)
    else:
        curve = EnergyCurve.from_power(sample_times, powers)
    return batches, curve, t_start, t_end


@settings(max_examples=200, deadline=None)
@given(timelines())
def test_request_energies_always_sum_to_the_window_energy(
    case: tuple[list[BatchTokenTimes], EnergyCurve, float, float],
) -> None:
    batches, curve, t0, t1 = case
    result = attribute_energy(steps_from_token_times(batches), curve, window=(t0, t1))
    window_j = curve.energy_between(t0, t1)
    scale = max(1.0, abs(window_j), sum(abs(r.energy_j) for r in result.requests))
    assert math.fsum(r.energy_j for r in result.requests) == pytest.approx(
        window_j, abs=1e-9 * scale
    )
    assert result.energy_prefill_j + result.energy_decode_j == pytest.approx(
        window_j, abs=1e-9 * scale
    )
    for r in result.requests:
        assert r.energy_j == pytest.approx(r.prefill_energy_j + r.decode_energy_j, abs=1e-9 * scale)


# -- from engine records -----------------------------------------------------------------


def test_engine_records_rebuild_shared_steps_of_a_static_batch() -> None:
    from llenergymeasure.engines.base import RequestRecord

    start, times = 10.0, [10.3, 10.35, 10.41, 10.46]
    rec = [
        RequestRecord(
            index=i,
            input_tokens=20 + i,
            output_tokens=n,
            latency_s=0.5,
            ttft_s=times[0] - start,
            itl_s=[b - a for a, b in itertools.pairwise(times[:n])],
            batch_index=0,
        )
        for i, n in enumerate([4, 2])
    ]
    (batch,) = batches_from_records(rec, {0: start})
    assert batch.start_s == start
    assert list(batch.requests[0].token_times_s) == pytest.approx(times)
    steps = steps_from_token_times([batch])
    assert len(steps) == 4  # the two requests share their steps exactly
    assert steps[0].work == (RequestWork(0, 20, "prefill"), RequestWork(1, 21, "prefill"))
    assert steps[1].work == (RequestWork(0, 1, "decode"), RequestWork(1, 1, "decode"))


def test_records_without_first_token_time_or_batch_start_are_rejected() -> None:
    from llenergymeasure.engines.base import RequestRecord

    beam = RequestRecord(0, 5, 3, 1.0, None)
    with pytest.raises(ValueError, match="beam search"):
        batches_from_records([beam], {0: 0.0})
    with pytest.raises(ValueError, match="no start time for batch 0"):
        batches_from_records([RequestRecord(0, 5, 1, 1.0, 0.1)], {})


def test_attribute_run_chains_records_sampler_samples_and_the_backend_total() -> None:
    from llenergymeasure.energy.attribution import attribute_run
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.engines.base import RequestRecord
    from llenergymeasure.testing.energy import FakeClock, FakeGpuSensor

    clock = FakeClock(start=100.0)
    sensor = FakeGpuSensor(n_devices=2, power_w=[300.0, 50.0], clock=clock)
    sampler = EnergySampler(sensor, clock=clock)
    for _ in range(21):  # one sample every 10 ms over 0.2 s, on the sampler's clock
        sampler.sample_now()
        clock.advance(0.01)
    records = [
        RequestRecord(0, 10, 3, 0.1, ttft_s=0.05, itl_s=[0.02, 0.02], batch_index=0),
        RequestRecord(1, 30, 3, 0.1, ttft_s=0.05, itl_s=[0.02, 0.02], batch_index=0),
    ]
    result = attribute_run(
        records, {0: 100.02}, sampler.samples, (100.0, 100.2), devices=[0], total_energy_j=61.2
    )
    assert result.curve_energy_j == pytest.approx(60.0)  # device 0 only: 300 W x 0.2 s
    assert math.fsum(r.energy_j for r in result.requests) == pytest.approx(61.2)
    assert result.source == "counter"
    r = {x.request: x for x in result.requests}
    assert r[1].prefill_energy_j == pytest.approx(3 * r[0].prefill_energy_j)
    assert r[0].decode_energy_j == pytest.approx(r[1].decode_energy_j)
    with pytest.raises(ValueError, match="no sampled device"):
        attribute_run(records, {0: 100.02}, sampler.samples, (100.0, 100.2), devices=[5])
