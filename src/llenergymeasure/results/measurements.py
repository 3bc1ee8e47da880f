"""The parts of an experiment result that describe what was measured: energy, timings,
FLOPs, carbon, warmup and each request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llenergymeasure.energy.base import DeviceEnergy
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.results.base import FORBID


class DistributionStats(BaseModel):
    """Summary of a sample of durations in seconds (computed over every raw sample)."""

    model_config = FORBID

    n: int = Field(description="Samples.")
    mean: float | None = Field(description="Mean, seconds. None without samples.")
    p50: float | None = Field(description="Median, seconds.")
    p90: float | None = Field(description="90th percentile, seconds.")
    p99: float | None = Field(description="99th percentile, seconds.")
    min: float | None = Field(description="Smallest sample, seconds.")
    max: float | None = Field(description="Largest sample, seconds.")


class FlopsEstimate(BaseModel):
    """Inference FLOPs of the measurement window (warmup excluded)."""

    model_config = FORBID

    total_flops: float = Field(description="Estimated FLOPs of the window.")
    flops_per_output_token: float | None = Field(description="total_flops / output tokens.")
    parameter_count: int = Field(description="Model parameters counted.")
    method: str = Field(description="The formula used (e.g. 2 x params x tokens).")
    confidence: Literal["high", "medium", "low"] = Field(
        description="How far the formula can be trusted for this model."
    )
    notes: list[str] = Field(default_factory=list, description="Caveats of the estimate.")


class CarbonEstimate(BaseModel):
    """CO2 = energy (kWh) x carbon intensity x PUE, each with its source."""

    model_config = FORBID

    energy_kwh: float | None = Field(description="energy_total_j in kWh.")
    co2_g: float | None = Field(
        description="Estimated emissions, grams CO2. None without a carbon intensity."
    )
    carbon_intensity_gco2_kwh: float | None = Field(
        description="Grid carbon intensity used, gCO2/kWh."
    )
    carbon_intensity_source: str = Field(
        description="Where the intensity came from (user config, environment, unset)."
    )
    datacenter_pue: float = Field(description="PUE multiplied in.")
    datacenter_pue_source: str = Field(description="Where the PUE came from.")
    datacenter_location: str | None = Field(description="ISO-3166-1 code from the user config.")
    basis: Literal["energy_total_j"] = Field(
        "energy_total_j", description="Energy figure the estimate is computed from."
    )


class EnergyBreakdown(BaseModel):
    """Energy of the measurement window: raw, baseline, adjusted, per device, and how."""

    model_config = FORBID

    available: bool = Field(description="Whether energy was measured.")
    backend: str = Field(description="Energy backend used (nvml, zeus, codecarbon, none).")
    backend_version: str | None = Field(description="Version of the backend's library.")
    method: str = Field(
        description=(
            "How total_j was obtained (nvml_counter, nvml_power_integration, zeus, codecarbon, "
            "unavailable)."
        )
    )
    total_j: float | None = Field(
        description="GPU energy of the window, J, summed over the measured devices."
    )
    per_device: list[DeviceEnergy] = Field(
        default_factory=list, description="Energy of each measured device."
    )
    counter_energy_j: float | None = Field(
        None, description="Total-energy counter difference, J (devices that have the counter)."
    )
    poll_energy_j: float | None = Field(None, description="Integral of the polled power, J.")
    counter_vs_poll_diff_pct: float | None = Field(
        None,
        description="(poll - counter) / counter x 100, over devices with both: the cross-check.",
    )
    poll_power_source: str | None = Field(None, description="Which NVML power reading was polled.")
    baseline: BaselineMeasurement | None = Field(
        None, description="The idle baseline used (measured or cached)."
    )
    baseline_power_w: float | None = Field(None, description="Idle power subtracted, W.")
    baseline_energy_j: float | None = Field(
        None, description="baseline_power_w x window duration, J."
    )
    adjusted_j: float | None = Field(
        None, description="total_j - baseline_energy_j, J: energy attributable to the workload."
    )
    not_measured_reason: str | None = Field(
        None,
        description=(
            "Why total_j is None (no GPU energy backend, or the backend saw no GPU); None when "
            "energy was measured."
        ),
    )
    notes: list[str] = Field(default_factory=list, description="Caveats from the energy backend.")
    # gpu / cpu / dram, each with its method, and total_with_host_j; every figure above is
    # GPU-only (None: not collected, e.g. results written before it existed)
    components: EnergyComponents | None = Field(
        None,
        description=(
            "GPU, CPU and DRAM energy, each with its method, and the total with the host; None = "
            "not collected."
        ),
    )


class SteadyStateWindow(BaseModel):
    """Part of the measurement window where power stayed within +-10 % of its median."""

    model_config = FORBID

    start_s: float = Field(description="Start, seconds from the start of the window.")
    end_s: float = Field(description="End, seconds from the start of the window.")
    mean_power_w: float = Field(description="Mean power in this part, W.")
    fraction_of_window: float = Field(description="Its share of the window's duration (0-1).")


class WarmupResult(BaseModel):
    """What warmup did before the window opened."""

    model_config = FORBID

    runs: int = Field(description="Warmup runs made.")
    prompts_per_run: int = Field(description="Prompts in each warmup run.")
    duration_s: float = Field(description="Seconds of warmup.")
    latencies_s: list[float] = Field(description="Wall time of each warmup run, seconds.")
    convergence_detection: bool = Field(
        description="Whether warmup stopped on latency convergence."
    )
    converged: bool | None = Field(
        None, description="Whether the latencies converged (convergence_detection only)."
    )
    final_cv: float | None = Field(None, description="CV of the last three warmup latencies.")
    thermal_floor_seconds: float = Field(description="Thermal floor waited after warmup, seconds.")
    notes: list[str] = Field(
        default_factory=list,
        description="What warmup changed (e.g. one run forced for torch_compile).",
    )
    # where the warmup prompts came from (never the measured prompts); None: no warmup ran
    prompt_source: str | None = Field(
        None,
        description=(
            "Where the warmup prompts came from (never the measured prompts); None = no warmup ran."
        ),
    )


class PhaseTimings(BaseModel):
    """Wall time of each phase, seconds (perf_counter).

    ``compile_s`` (``torch_compile`` only; None otherwise): how much longer the first warmup
    run, where transformers compiles, took than the median later warmup run (the whole first
    run when only one ran). It is part of ``warmup_s``, never of the measurement window.
    ``load_parts``: parts of ``load_s`` that the engine reports itself (vLLM: ``engine_start_s``,
    the ``LLM(...)`` constructor, and ``compile_s`` where vLLM propagates it); empty otherwise.
    """

    model_config = FORBID

    preflight_s: float = Field(0.0, description="Pre-flight checks, seconds.")
    environment_s: float = Field(0.0, description="Environment snapshot, seconds.")
    baseline_s: float = Field(0.0, description="Idle baseline (0 when cached), seconds.")
    load_s: float = Field(0.0, description="Engine/model load, seconds (0 for a reused engine).")
    dataset_s: float = Field(0.0, description="Loading and tokenising prompts, seconds.")
    warmup_s: float = Field(0.0, description="Warmup, seconds.")
    thermal_floor_s: float = Field(0.0, description="Thermal floor wait, seconds.")
    measurement_s: float = Field(0.0, description="The measurement window, seconds.")
    phase_split_s: float = Field(
        0.0,
        description=(
            "The prefill-only window with its warmup and thermal floor, seconds (0 without "
            "measurement.phase_split)."
        ),
    )
    total_s: float = Field(0.0, description="The whole run, seconds.")
    compile_s: float | None = Field(
        None,
        description=(
            "torch_compile only: first warmup run's excess over the median later one, seconds "
            "(part of warmup_s)."
        ),
    )
    load_parts: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Parts of load_s the engine reports itself (vLLM: engine_start_s, compile_s), seconds."
        ),
    )


class RequestResult(BaseModel):
    """One prompt of the measurement window (raw data for late aggregation).

    ``energy_j`` (with its ``prefill_energy_j`` / ``decode_energy_j`` parts): the request's
    share of the window's GPU energy by the time-resolved attribution
    (``ExperimentResult.energy_attribution`` has the rule's figures); the requests of a run sum
    to ``energy_total_j``. None where the run has no per-token times or no samples.
    """

    model_config = FORBID

    index: int = Field(description="Prompt index in the dataset order.")
    input_tokens: int = Field(description="Prompt tokens.")
    output_tokens: int = Field(description="Generated tokens.")
    latency_s: float = Field(
        description="Wall time from its batch's start to its last token, seconds."
    )
    ttft_s: float | None = Field(
        description="Time to first token, seconds (None where the engine does not report it)."
    )
    batch_index: int = Field(description="Batch it ran in.")
    process_index: int = Field(0, description="Data-parallel process that ran it.")
    energy_j: float | None = Field(
        None,
        description=(
            "Energy attributed to this request by the time-resolved rule, J (None without "
            "attribution)."
        ),
    )
    prefill_energy_j: float | None = Field(None, description="Its prefill share, J.")
    decode_energy_j: float | None = Field(None, description="Its decode share, J.")
