"""Specification of the prefill-only window (``phase_split.prefill_window``).

Same prompts, same engine, ``max_new_tokens`` 1, opened and closed like the measurement
window; its energy and the full window's give the differential prefill/decode split.
"""

from __future__ import annotations

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.phase_split.prefill_window import (
    PREFILL_WINDOW_PHASE,
    measure_prefill_window,
    prefill_only_config,
    prefill_only_prompts,
    split_from_windows,
)
from llenergymeasure.testing.energy import FakeClock, FakeEnergyBackend, FakeGpuSensor
from llenergymeasure.testing.engines import FakeEngine


def config(**overrides: object) -> ExperimentConfig:
    data: dict[str, object] = {
        "model": "fake-model",
        "backend": "pytorch",
        "dataset": {"n": 4, "input_len": 16, "output_len": 20},
        "n": 4,
        "max_new_tokens": 20,
        "warmup": {"n_warmup": 0, "thermal_floor_seconds": 0},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def prompts(n: int = 4, own_limit: int | None = None) -> list[Prompt]:
    return [Prompt(" ".join(["w"] * 16), max_new_tokens=own_limit, index=i) for i in range(n)]


def test_the_prefill_config_asks_for_one_new_token_and_changes_nothing_else() -> None:
    cfg = config()
    one = prefill_only_config(cfg)
    assert one.max_new_tokens == 1
    assert one.effective_max_new_tokens == 1
    assert one.model_dump(exclude={"max_new_tokens", "dataset"}) == cfg.model_dump(
        exclude={"max_new_tokens", "dataset"}
    )
    assert cfg.effective_max_new_tokens == 20  # the original is untouched


def test_the_prefill_config_of_a_named_dataset_sets_max_new_tokens() -> None:
    cfg = config(dataset="aienergyscore", n=4)
    assert prefill_only_config(cfg).effective_max_new_tokens == 1


def test_prompts_with_their_own_budget_are_lowered_to_one_token() -> None:
    out = prefill_only_prompts(prompts(own_limit=64) + prompts(1))
    assert [p.max_new_tokens for p in out] == [1, 1, 1, 1, None]
    assert [p.text for p in out] == [p.text for p in prompts(own_limit=64) + prompts(1)]


def test_the_window_runs_the_same_prompts_for_one_token_inside_one_energy_window() -> None:
    engine = FakeEngine(output_tokens=20, seconds_per_token=0.0)
    backend = FakeEnergyBackend(42.0)
    window = measure_prefill_window(engine, backend, prompts(own_limit=20), config())
    assert engine.calls == [("warmup", 4), (PREFILL_WINDOW_PHASE, 4)]
    assert (backend.begin_calls, backend.end_calls) == (1, 1)
    assert [r.output_tokens for r in window.records] == [1, 1, 1, 1]
    assert window.energy.total_energy_j == 42.0
    assert window.duration_s >= 0
    assert window.window[1] >= window.window[0]


def test_the_thermal_floor_is_waited_before_the_window_and_samples_are_labelled() -> None:
    clock = FakeClock()
    sensor = FakeGpuSensor(clock=clock)
    sampler = EnergySampler(sensor, interval_ms=1000.0, clock=clock)
    slept: list[float] = []
    phases_at_generate: list[str] = []
    engine = FakeEngine(on_generate=lambda _: phases_at_generate.append(sampler.phase))
    sampler.start()
    try:
        measure_prefill_window(
            engine,
            FakeEnergyBackend(),
            prompts(),
            config(),
            sampler=sampler,
            thermal_floor_s=30.0,
            sleep=slept.append,
            clock=clock,
        )
    finally:
        sampler.stop()
    assert slept == [30.0]
    assert phases_at_generate == ["warmup", PREFILL_WINDOW_PHASE]
    marks = [p for _, p in sampler.phase_marks]
    assert marks[-4:] == ["warmup", "thermal_floor", PREFILL_WINDOW_PHASE, "cooldown"]
    assert any(s.phase == PREFILL_WINDOW_PHASE for s in sampler.samples)


def records(n: int, input_tokens: int, output_tokens: int) -> list[RequestRecord]:
    return [RequestRecord(i, input_tokens, output_tokens, 1.0, 0.1) for i in range(n)]


def test_split_from_windows_takes_token_counts_from_the_full_windows_records() -> None:
    engine = FakeEngine(seconds_per_token=0.0)
    window = measure_prefill_window(engine, FakeEnergyBackend(100.0), prompts(), config())
    window.duration_s = 0.5
    split, reason = split_from_windows(
        records(4, 16, 20), 900.0, 5.0, window, baseline_power_w=40.0
    )
    assert reason is None and split is not None
    assert split.input_tokens == 64
    assert split.decode_tokens == 4 * 19
    assert split.energy_decode_j == pytest.approx(800.0)
    assert split.energy_prefill_adjusted_j == pytest.approx(100.0 - 40.0 * 0.5)


def test_split_from_windows_refuses_without_energy_or_with_other_requests() -> None:
    engine = FakeEngine(seconds_per_token=0.0)
    window = measure_prefill_window(engine, FakeEnergyBackend(100.0), prompts(), config())
    assert split_from_windows(records(4, 16, 20), None, 5.0, window)[1] == (
        "the measurement window has no energy figure"
    )
    no_energy = measure_prefill_window(engine, FakeEnergyBackend(None), prompts(), config())
    assert split_from_windows(records(4, 16, 20), 900.0, 5.0, no_energy)[1] == (
        "the prefill-only window has no energy figure"
    )
    split, reason = split_from_windows(records(3, 16, 20), 900.0, 5.0, window)
    assert split is None and reason is not None and "ran 4 requests" in reason


def test_the_warmup_runs_the_one_token_config_outside_the_window() -> None:
    backend = FakeEnergyBackend()
    begun_at: list[int] = []
    engine = FakeEngine(seconds_per_token=0.0)
    engine.on_generate = lambda phase: begun_at.append(backend.begin_calls)
    window = measure_prefill_window(
        engine, backend, prompts(), config(), warmup_runs=2, warmup_prompts=prompts(2, 64)
    )
    assert engine.calls == [("warmup", 2), ("warmup", 2), (PREFILL_WINDOW_PHASE, 4)]
    assert begun_at == [0, 0, 1]  # the energy window opens only for the measured run
    assert [r.output_tokens for r in window.records] == [1, 1, 1, 1]


def test_no_warmup_when_asked_for_none() -> None:
    engine = FakeEngine(seconds_per_token=0.0)
    measure_prefill_window(engine, FakeEnergyBackend(), prompts(), config(), warmup_runs=0)
    assert engine.calls == [(PREFILL_WINDOW_PHASE, 4)]


def test_a_request_that_generated_nothing_has_no_first_token_to_take_off_its_decode() -> None:
    # decode tokens are each request's tokens after its first: 0 + 19 + 19 + 19, not 58 - 4
    engine = FakeEngine(seconds_per_token=0.0)
    window = measure_prefill_window(engine, FakeEnergyBackend(100.0), prompts(), config())
    full = records(4, 16, 20)
    full[0].output_tokens = 0
    split, reason = split_from_windows(full, 900.0, 5.0, window)
    assert reason is None and split is not None
    assert split.output_tokens == 60
    assert split.decode_tokens == 57
    assert split.j_per_decode_token == pytest.approx(800.0 / 57)
