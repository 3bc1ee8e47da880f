"""The prefill-only window of the differential prefill/decode split (issue 16).

``measure_prefill_window`` runs the same prompts through the same engine with
``max_new_tokens`` 1 (each request: its prefill and its first token), inside an energy window
opened and closed like the measurement window (``energy.window.MeasurementWindow``: prompts
prepared before it, sync, ``begin``, ``execute``, sync, ``end``, records after it; no peak-memory
reset and no RAPL reading), after its own warmup run(s) of the one-token config and the same
thermal floor.
``split_from_windows`` turns the full window and this one into a ``PhaseSplit`` (see
``phase_split.differential`` for the arithmetic).

The caller (the orchestrator) runs it after the measurement window on the loaded, warmed-up
engine; nothing here runs inside the measurement window.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llenergymeasure.config.models import ExperimentConfig, SyntheticDatasetConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.base import EnergyBackend, EnergyMeasurement
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.engines.base import WARMUP_PHASE, InferenceBackend, RequestRecord
from llenergymeasure.phase_split.differential import PhaseSplit, differential_phase_split

__all__ = [
    "PREFILL_WINDOW_PHASE",
    "PrefillWindow",
    "measure_prefill_window",
    "prefill_only_config",
    "prefill_only_prompts",
    "split_from_windows",
]

PREFILL_WINDOW_PHASE = "prefill_window"


@dataclass
class PrefillWindow:
    """What the prefill-only window measured: energy, duration (s) and the engine's records.

    ``window`` is ``(start, end)`` on the orchestrator's clock, like the measurement window's.
    """

    energy: EnergyMeasurement
    duration_s: float
    records: list[RequestRecord]
    window: tuple[float, float]


def prefill_only_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with one new token per request (a synthetic dataset's ``output_len`` too)."""
    update: dict[str, Any] = {"max_new_tokens": 1}
    if isinstance(config.dataset, SyntheticDatasetConfig):
        update["dataset"] = config.dataset.model_copy(update={"output_len": 1})
    return config.model_copy(update=update)


def prefill_only_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The same prompts with their own ``max_new_tokens`` (where set) lowered to 1."""
    return [
        dataclasses.replace(p, max_new_tokens=1) if p.max_new_tokens is not None else p
        for p in prompts
    ]


def measure_prefill_window(
    engine: InferenceBackend,
    energy_backend: EnergyBackend,
    prompts: Sequence[Prompt],
    config: ExperimentConfig,
    *,
    sampler: EnergySampler | None = None,
    warmup_runs: int = 1,
    warmup_prompts: Sequence[Prompt] | None = None,
    thermal_floor_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PrefillWindow:
    """Measure the prefill-only twin of the measurement window over ``prompts``.

    ``warmup_runs`` prefill-only runs over ``warmup_prompts`` (default: all ``prompts``) come
    first, outside the window: a one-token ``generate`` can take paths the full run's warmup
    did not (a new static-cache size with ``torch_compile``, other kernels), and those must
    not land in the window. ``thermal_floor_s``: the wait before the window (the config's
    ``warmup.thermal_floor_seconds``, as before the measurement window). The sampler, when
    given, labels its samples ``"warmup"``, ``"thermal_floor"``, ``"prefill_window"`` and
    ``"cooldown"`` after it; it must already be running.
    """
    run_config = prefill_only_config(config)
    run_prompts = prefill_only_prompts(prompts)
    if warmup_runs > 0:
        if sampler is not None:
            sampler.set_phase(WARMUP_PHASE)
        warm = prefill_only_prompts(warmup_prompts) if warmup_prompts is not None else run_prompts
        for _ in range(warmup_runs):
            engine.generate(warm, run_config, phase=WARMUP_PHASE)
        engine.synchronize()
    if thermal_floor_s > 0:
        if sampler is not None:
            sampler.set_phase("thermal_floor")
        sleep(thermal_floor_s)
    prepared = engine.prepare(run_prompts, run_config, phase=PREFILL_WINDOW_PHASE)
    window = MeasurementWindow(
        energy_backend, phase=PREFILL_WINDOW_PHASE, sampler=sampler, device=engine, clock=clock
    )
    with window:
        raw = engine.execute(prepared)
    records = engine.records(raw)
    reading = window.reading
    return PrefillWindow(
        energy=reading.energy, duration_s=reading.duration_s, records=records, window=reading.span
    )


def split_from_windows(
    full_records: Sequence[RequestRecord],
    full_energy_j: float | None,
    full_duration_s: float,
    prefill: PrefillWindow,
    *,
    baseline_power_w: float | None = None,
) -> tuple[PhaseSplit | None, str | None]:
    """``differential_phase_split`` of the measurement window and its prefill-only twin.

    Token counts come from the full window's records (input tokens, output tokens, one
    request per record; decode tokens: each record's tokens after its first).
    ``(None, reason)`` when either window has no energy or the arithmetic refuses.
    """
    if full_energy_j is None:
        return None, "the measurement window has no energy figure"
    if prefill.energy.total_energy_j is None:
        return None, "the prefill-only window has no energy figure"
    if len(prefill.records) != len(full_records):
        return None, (
            f"the prefill-only window ran {len(prefill.records)} requests, the measurement "
            f"window {len(full_records)}"
        )
    return differential_phase_split(
        total_energy_j=full_energy_j,
        total_duration_s=full_duration_s,
        input_tokens=sum(r.input_tokens for r in full_records),
        output_tokens=sum(r.output_tokens for r in full_records),
        requests=len(full_records),
        prefill_energy_j=prefill.energy.total_energy_j,
        prefill_duration_s=prefill.duration_s,
        baseline_power_w=baseline_power_w,
        decode_tokens=sum(max(r.output_tokens - 1, 0) for r in full_records),
    )
