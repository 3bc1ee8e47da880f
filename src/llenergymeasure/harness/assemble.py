"""Build an ``ExperimentResult`` from what the measurement protocol collected.

The orchestrator runs the protocol and hands over a ``CollectedRun``: the request records, the
energy backend's measurement, the idle baseline, the sampler and the timings. Everything here
runs after the measurement window has closed.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from llenergymeasure._version import __version__
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig, SyntheticDatasetConfig
from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.energy.maths import adjusted_energy_j, energy_per
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.exceptions import ExperimentError
from llenergymeasure.harness import metrics as m
from llenergymeasure.harness.settings import MeasurementSettings
from llenergymeasure.phase_split.attribution import EnergyAttribution
from llenergymeasure.phase_split.differential import PhaseSplit
from llenergymeasure.phase_split.records import time_resolved_attribution
from llenergymeasure.results.environment import EnvironmentSnapshot
from llenergymeasure.results.measurements import (
    EnergyBreakdown,
    PhaseTimings,
    RequestResult,
    WarmupResult,
)
from llenergymeasure.results.models import ExperimentResult

__all__ = [
    "CollectedRun",
    "assemble_result",
    "carbon_estimate",
    "dataset_provenance",
    "energy_breakdown",
    "with_request_energy",
]


@dataclass
class CollectedRun:
    """Everything the protocol produced for one experiment, before any result arithmetic.

    ``window`` is the measurement window on the sampler's clock; ``duration_s`` its length on
    ``time.perf_counter``. ``record_processes`` names the process of each record (all 0 for a
    single-process engine); ``process_results`` holds per-process summaries, if any.
    ``components``: the window's energy by component (GPU + host), ``phase_split`` /
    ``phase_split_unavailable``: the differential split, or why it is missing when asked for.
    """

    config: ExperimentConfig
    environment: EnvironmentSnapshot
    records: list[RequestRecord]
    energy: EnergyMeasurement
    baseline: BaselineMeasurement | None
    duration_s: float
    window: tuple[float, float]
    sampler: EnergySampler | None
    warmup: WarmupResult
    timings: PhaseTimings
    started: datetime
    parameter_count: int
    draft_parameter_count: int
    peak_memory_bytes: int | None
    effective_parameters: dict[str, Any]
    process_results: list[dict[str, Any]] = field(default_factory=list)
    record_processes: list[int] | None = None
    components: EnergyComponents | None = None
    phase_split: PhaseSplit | None = None
    phase_split_unavailable: str | None = None
    # the dataset's provenance as pre-flight read it (None: describe it now)
    dataset: dict[str, Any] | None = None


def trusts_remote_code(config: ExperimentConfig) -> bool:
    """Whether ``passthrough_kwargs.trust_remote_code`` lets the model repository run code."""
    return bool((config.passthrough_kwargs or {}).get("trust_remote_code"))


def assemble_result(run: CollectedRun, settings: MeasurementSettings) -> ExperimentResult:
    """The experiment's result; ``ExperimentError`` when the engine lost or invented requests."""
    config, records, duration = run.config, run.records, run.duration_s
    if len(records) != config.n:
        raise ExperimentError(
            f"engine returned {len(records)} request records for {config.n} prompts"
        )
    w0, w1 = run.window
    samples = run.sampler.samples if run.sampler is not None else []
    out_tokens = sum(r.output_tokens for r in records)
    in_tokens = sum(r.input_tokens for r in records)

    breakdown = energy_breakdown(run.energy, run.baseline, duration, run.sampler, run.window)
    if run.components is not None:
        breakdown = breakdown.model_copy(update={"components": run.components})
    total, adjusted = breakdown.total_j, breakdown.adjusted_j
    requests = _request_results(records, run.record_processes)
    attribution, attribution_missing = time_resolved_attribution(
        records, samples, run.window, total_energy_j=total, record_processes=run.record_processes
    )
    if attribution is not None:
        requests = with_request_energy(requests, attribution)
        attribution = attribution.model_copy(update={"requests": []})
    cpu = run.environment.cpu_conditions
    warnings = m.measurement_warnings(
        duration_s=duration,
        window_samples=[s for s in samples if w0 <= s.t <= w1],
        n_devices=len({s.device_index for s in samples}),
        energy_available=breakdown.available,
        persistence_mode=run.environment.persistence_mode,
        counter_vs_poll_diff_pct=breakdown.counter_vs_poll_diff_pct,
        thermal_floor_seconds=config.warmup.thermal_floor_seconds,
        trust_remote_code=trusts_remote_code(config),
        host_oversubscribed=bool(cpu and cpu.oversubscribed),
    )
    return ExperimentResult(
        llem_version=__version__,
        experiment_id=uuid.uuid4().hex[:12],
        started_at_utc=run.started,
        finished_at_utc=datetime.now(timezone.utc),
        config=config,
        measurement_config_hash=measurement_config_hash(config),
        effective_parameters=run.effective_parameters,
        dataset=run.dataset if run.dataset is not None else dataset_provenance(config),
        energy_total_j=total,
        energy_adjusted_j=adjusted,
        energy_per_output_token_j=energy_per(total, out_tokens),
        energy_per_output_token_adjusted_j=energy_per(adjusted, out_tokens),
        mean_power_w=total / duration if total is not None and duration > 0 else None,
        tokens_per_second=out_tokens / duration if duration > 0 else 0.0,
        requests_per_second=len(records) / duration if duration > 0 else 0.0,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        n_requests=len(records),
        duration_s=duration,
        latency=m.distribution([r.latency_s for r in records]),
        ttft=m.distribution([r.ttft_s for r in records if r.ttft_s is not None]),
        itl=m.distribution([x for r in records for x in r.itl_s]),
        peak_memory_bytes=run.peak_memory_bytes,
        energy=breakdown,
        flops=_flops(run, in_tokens, out_tokens),
        carbon=carbon_estimate(total, settings),
        environment=run.environment,
        warmup=run.warmup,
        timing=run.timings,
        measurement_warnings=warnings,
        measurement_methodology="total",
        steady_state_window=m.steady_state_window(samples, w0, w1),
        warmup_excluded_samples=len([s for s in samples if s.phase == "warmup"]),
        timeseries_samples=len(samples),
        requests=requests,
        process_results=run.process_results,
        phase_split=run.phase_split,
        phase_split_unavailable=run.phase_split_unavailable,
        energy_attribution=attribution,
        energy_attribution_unavailable=attribution_missing,
    )


# -- energy ---------------------------------------------------------------------------------


def energy_breakdown(
    energy: EnergyMeasurement,
    baseline: BaselineMeasurement | None,
    duration_s: float,
    sampler: EnergySampler | None,
    window: tuple[float, float],
) -> EnergyBreakdown:
    """Total, counter and poll energy, their disagreement, and the baseline-adjusted energy."""
    poll_j = _poll_energy_j(energy, sampler, window)
    poll_source = energy.poll_power_source
    if poll_source is None and poll_j is not None and sampler is not None:
        poll_source = sampler.sensor.device_info(0).power_source
    counter_j = _counter_energy_j(energy)
    diff_pct = _counter_vs_poll_pct(energy, counter_j, poll_j)

    total = energy.total_energy_j if energy.available else None
    baseline_power = baseline.power_w if baseline is not None else None
    baseline_j = baseline_power * duration_s if baseline_power is not None else None
    adjusted = (
        adjusted_energy_j(total, baseline_power, duration_s)
        if total is not None and baseline_power is not None
        else None
    )
    notes = list(energy.notes)
    if adjusted is not None and adjusted < 0:
        notes.append("energy_adjusted_j is negative: the idle baseline exceeded the measured draw")
    return EnergyBreakdown(
        available=energy.available and total is not None,
        backend=energy.backend,
        backend_version=energy.backend_version,
        method=energy.method,
        total_j=total,
        per_device=energy.devices,
        counter_energy_j=counter_j,
        poll_energy_j=poll_j,
        counter_vs_poll_diff_pct=diff_pct,
        poll_power_source=poll_source,
        baseline=baseline,
        baseline_power_w=baseline_power,
        baseline_energy_j=baseline_j,
        adjusted_j=adjusted,
        not_measured_reason=None if total is not None else _not_measured_reason(energy),
        notes=notes,
    )


def _not_measured_reason(energy: EnergyMeasurement) -> str:
    """Why the window has no energy figure: the backend's reason, else its last note."""
    if energy.not_measured_reason:
        return energy.not_measured_reason
    if energy.notes:
        return energy.notes[-1]
    return f"energy backend '{energy.backend}' returned no energy figure"


def _poll_energy_j(
    energy: EnergyMeasurement, sampler: EnergySampler | None, window: tuple[float, float]
) -> float | None:
    """The backend's power-integrated energy, else the sampler's over the window (all devices)."""
    if energy.poll_energy_j is not None:
        return energy.poll_energy_j
    if sampler is None or not sampler.samples:
        return None
    w0, w1 = window
    parts = [sampler.poll_energy_j(w0, w1, d) for d in sampler.device_indices()]
    if any(p is None for p in parts):
        return None
    return math.fsum(p for p in parts if p is not None)


def _counter_energy_j(energy: EnergyMeasurement) -> float | None:
    """Sum of the devices' energy-counter deltas (None when no device has a counter)."""
    counters = [d.counter_energy_j for d in energy.devices if d.counter_energy_j is not None]
    return math.fsum(counters) if counters else None


def _counter_vs_poll_pct(
    energy: EnergyMeasurement, counter_j: float | None, poll_j: float | None
) -> float | None:
    """How far the polled energy is from the counter (or the backend total), in percent.

    Not computed when the total itself is the polled energy (``nvml_power_integration``).
    """
    if energy.counter_vs_poll_diff_pct is not None:
        return energy.counter_vs_poll_diff_pct
    reference = counter_j if counter_j is not None else energy.total_energy_j
    if not reference or poll_j is None or energy.method == "nvml_power_integration":
        return None
    return (poll_j - reference) / reference * 100.0


# -- the rest of the result -----------------------------------------------------------------


def _flops(run: CollectedRun, in_tokens: int, out_tokens: int) -> Any:
    if run.parameter_count <= 0:
        return None
    return m.estimate_flops(
        run.parameter_count,
        in_tokens,
        out_tokens,
        draft_parameter_count=run.draft_parameter_count,
    )


def carbon_estimate(total_j: float | None, settings: MeasurementSettings) -> Any:
    """CO2 of ``total_j`` with the carbon intensity and PUE of ``settings``."""
    return m.estimate_carbon(
        total_j,
        intensity=settings.carbon_intensity_gco2_kwh,
        intensity_source=settings.carbon_intensity_source,
        pue=settings.datacenter_pue,
        pue_source=settings.datacenter_pue_source,
        location=settings.datacenter_location,
    )


def dataset_provenance(config: ExperimentConfig) -> dict[str, Any]:
    """What the prompts were: the synthetic parameters, or the dataset's description."""
    if isinstance(config.dataset, SyntheticDatasetConfig):
        return {"kind": "synthetic", **config.dataset.model_dump()}
    from llenergymeasure.datasets import describe_dataset

    try:
        return describe_dataset(config.dataset)
    except Exception as exc:  # provenance is best-effort; the run already happened
        return {"kind": "unknown", "name": str(config.dataset), "error": str(exc)}


def _request_results(
    records: list[RequestRecord], processes: list[int] | None
) -> list[RequestResult]:
    owners = processes if processes is not None and len(processes) == len(records) else None
    return [
        RequestResult(
            index=r.index,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            latency_s=r.latency_s,
            ttft_s=r.ttft_s,
            batch_index=r.batch_index,
            process_index=owners[i] if owners is not None else 0,
        )
        for i, r in enumerate(records)
    ]


def with_request_energy(
    requests: Sequence[RequestResult], attribution: EnergyAttribution
) -> list[RequestResult]:
    """``requests`` with ``energy_j`` (and its prefill/decode parts) from ``attribution``."""
    by_index = {e.request: e for e in attribution.requests}
    out = []
    for r in requests:
        e = by_index.get(r.index)
        if e is None:
            out.append(r)
            continue
        out.append(
            r.model_copy(
                update={
                    "energy_j": e.energy_j,
                    "prefill_energy_j": e.prefill_energy_j,
                    "decode_energy_j": e.decode_energy_j,
                }
            )
        )
    return out
