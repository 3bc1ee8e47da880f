"""The research-grade result of one experiment.

Every energy figure carries the method that produced it; every timing figure comes from
``time.perf_counter`` around device-synchronised work. JSON is the primary format and
``ExperimentResult.from_json(r.to_json())`` reproduces ``r`` exactly.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.base import DeviceEnergy
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.phase_split.attribution import EnergyAttribution
from llenergymeasure.phase_split.differential import PhaseSplit
from llenergymeasure.results.online import OnlineResult

SCHEMA_VERSION = "1.0"

REPRODUCIBILITY_NOTES = (
    "GPU energy comes from NVML, whose power and energy readings are accurate to about +-5 W "
    "(NVIDIA's documented tolerance); energy totals use the hardware total-energy counter where "
    "the GPU has one (Volta and newer) and integrated 100 ms power polling otherwise, recorded "
    "in energy.method; the polled power is NVML's instantaneous reading where the driver offers "
    "it (energy.poll_power_source), since its default reading is a 1 s average that lags load "
    "changes. Idle baseline power is measured before the model is loaded and "
    "subtracted as baseline_power_w x window duration to give energy_adjusted_j. Results depend "
    "on GPU model, driver, clocks, temperature and co-located load; compare runs from one "
    "machine and one study, repeated over cycles."
)

_FORBID = ConfigDict(extra="forbid", protected_namespaces=())
_M = TypeVar("_M", bound="JsonFileModel")


class JsonFileModel(BaseModel):
    """A result model with JSON file round trips (atomic writes)."""

    def to_json(
        self, path: str | Path | None = None, *, indent: int = 2, base: Path | None = None
    ) -> str:
        """Serialise to JSON, redacted (``llenergymeasure.redaction``); with ``path``, also
        write it through the one write path (atomic, never through a link or over an input;
        ``base``: see ``llenergymeasure.files``)."""
        from llenergymeasure.redaction import redact_json

        text = redact_json(self, indent=indent)
        if path is not None:
            from llenergymeasure.files import write_bytes

            write_bytes(Path(path), (text + "\n").encode("utf-8"), base=base)
        return text

    @classmethod
    def from_json(cls: type[_M], source: str | Path) -> _M:
        """Load from a JSON string or a file path (registered as an input of this process)."""
        if isinstance(source, Path) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            from llenergymeasure.files import register_input

            register_input(source)
            source = Path(source).read_text(encoding="utf-8")
        return cls.model_validate_json(source)


class DistributionStats(BaseModel):
    """Summary of a sample of durations in seconds (computed over every raw sample)."""

    model_config = _FORBID

    n: int = Field(description="Samples.")
    mean: float | None = Field(description="Mean, seconds. None without samples.")
    p50: float | None = Field(description="Median, seconds.")
    p90: float | None = Field(description="90th percentile, seconds.")
    p99: float | None = Field(description="99th percentile, seconds.")
    min: float | None = Field(description="Smallest sample, seconds.")
    max: float | None = Field(description="Largest sample, seconds.")


class FlopsEstimate(BaseModel):
    """Inference FLOPs of the measurement window (warmup excluded)."""

    model_config = _FORBID

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

    model_config = _FORBID

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

    model_config = _FORBID

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

    model_config = _FORBID

    start_s: float = Field(description="Start, seconds from the start of the window.")
    end_s: float = Field(description="End, seconds from the start of the window.")
    mean_power_w: float = Field(description="Mean power in this part, W.")
    fraction_of_window: float = Field(description="Its share of the window's duration (0-1).")


class WarmupResult(BaseModel):
    """What warmup did before the window opened."""

    model_config = _FORBID

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

    model_config = _FORBID

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

    model_config = _FORBID

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


class CpuConditions(BaseModel):
    """The host's CPU side of the measurement window: threads, their settings, load, governor.

    Read when the window opens (the load average again when it closes), so that a CPU run
    records what its figures depend on. ``oversubscribed`` lists why the run got the
    ``host_oversubscribed`` warning (empty: it did not; see the methodology page).
    """

    model_config = _FORBID

    usable_cpus: int | None = Field(
        description="Logical CPUs this process may run on (os.sched_getaffinity)."
    )
    host_cpus: int | None = Field(description="Logical CPUs of the host (os.cpu_count).")
    cgroup_cpu_limit: float | None = Field(
        None,
        description=(
            "CPU quota of the process's cgroup v2 (cpu.max quota / period), in CPUs; None = no "
            "quota or not readable."
        ),
    )
    torch_num_threads: int | None = Field(
        None,
        description=(
            "torch.get_num_threads() at the window's start (intra-op threads); None = torch was "
            "not loaded by this run."
        ),
    )
    torch_num_interop_threads: int | None = Field(
        None,
        description="torch.get_num_interop_threads() at the window's start; None = no torch.",
    )
    thread_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Thread settings in the environment, as set: OMP_*, MKL_*, KMP_*, OPENBLAS_* "
            "variables (absent = not set)."
        ),
    )
    cpu_governor: str = Field(
        "unknown",
        description=(
            "CPU frequency governor of the usable CPUs (cpufreq scaling_governor; several "
            "comma-separated when they differ; unknown where the kernel does not expose it)."
        ),
    )
    load_average_start: list[float] | None = Field(
        None,
        description="Host load average (1, 5, 15 min) when the window opened; None = unknown.",
    )
    load_average_end: list[float] | None = Field(
        None,
        description="Host load average (1, 5, 15 min) when the window closed; None = unknown.",
    )
    oversubscribed: list[str] = Field(
        default_factory=list,
        description="Why the run carries host_oversubscribed (empty: it does not).",
    )


class EnvironmentSnapshot(BaseModel):
    """Machine and software the experiment ran on."""

    model_config = _FORBID

    python_version: str = Field(description="Python version.")
    os: str = Field(description="Operating system and kernel.")
    cpu_model: str | None = Field(description="CPU model name.")
    cpu_count: int | None = Field(description="Logical CPUs.")
    gpus: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each measured GPU: index, UUID, name, memory, power limit, energy counter.",
    )
    driver_version: str | None = Field(None, description="NVIDIA driver version.")
    cuda_version: str | None = Field(None, description="CUDA version.")
    cuda_version_source: str | None = Field(None, description="Where cuda_version was read.")
    persistence_mode: list[bool | None] = Field(
        default_factory=list, description="Persistence mode of each GPU."
    )
    engine: str = Field(description="Engine that ran.")
    engine_version: str | None = Field(description="Version of the engine's library.")
    library_versions: dict[str, str | None] = Field(
        default_factory=dict,
        description="Versions of torch, transformers and other libraries that matter.",
    )
    pip_freeze_sha256: str | None = Field(
        None, description="SHA-256 of the sorted pip freeze (same hash = same packages)."
    )
    llem_version: str = Field(description="llenergymeasure version.")
    hostname: str | None = Field(None, description="Host name.")
    cuda_visible_devices: str | None = Field(
        None, description="CUDA_VISIBLE_DEVICES as the run saw it."
    )
    cpu_conditions: CpuConditions | None = Field(
        None,
        description=(
            "Threads, thread settings, host load and CPU governor around the measurement window; "
            "None = not recorded."
        ),
    )


class ExperimentResult(JsonFileModel):
    """Everything measured in one experiment, with the config that produced it."""

    model_config = _FORBID

    schema_version: str = Field(SCHEMA_VERSION, description="Version of this result schema.")
    llem_version: str = Field(description="llenergymeasure version that measured it.")
    experiment_id: str = Field(description="Unique id of this run.")
    started_at_utc: datetime = Field(description="Start of the run (UTC).")
    finished_at_utc: datetime = Field(description="End of the run (UTC).")
    config: ExperimentConfig = Field(description="The resolved experiment config.")
    measurement_config_hash: str = Field(
        description=(
            "Hash of the fields that define the measurement; equal hashes are comparable runs."
        )
    )
    effective_parameters: dict[str, Any] = Field(
        description=(
            "Values the engine actually used, including those the config left to its defaults."
        )
    )
    dataset: dict[str, Any] = Field(
        description=(
            "Dataset provenance: kind (aienergyscore, jsonl, synthetic, hf) and what identifies "
            "it (path and sha256; hub id and revision; split, column, fingerprint; generator "
            "parameters), rows available; chat_template (template sha256) when one was applied."
        )
    )

    # Headline metrics
    energy_total_j: float | None = Field(description="GPU energy of the window, J.")
    energy_adjusted_j: float | None = Field(
        description="energy_total_j minus idle baseline power x duration, J."
    )
    energy_per_output_token_j: float | None = Field(
        description="energy_total_j / output_tokens, J per token."
    )
    energy_per_output_token_adjusted_j: float | None = Field(
        description="energy_adjusted_j / output_tokens, J per token."
    )
    mean_power_w: float | None = Field(description="energy_total_j / duration_s, W.")
    tokens_per_second: float = Field(description="Output tokens per second of the window.")
    requests_per_second: float = Field(description="Prompts completed per second of the window.")
    input_tokens: int = Field(description="Prompt tokens of the window.")
    output_tokens: int = Field(description="Generated tokens of the window.")
    n_requests: int = Field(description="Prompts in the window.")
    duration_s: float = Field(description="Length of the measurement window, seconds.")
    latency: DistributionStats = Field(description="Per-request latency, seconds.")
    ttft: DistributionStats = Field(description="Time to first token, seconds.")
    itl: DistributionStats = Field(description="Inter-token latency (every gap), seconds.")
    peak_memory_bytes: int | None = Field(
        description="Peak GPU memory the engine allocated during the window, bytes."
    )

    energy: EnergyBreakdown = Field(
        description="Energy breakdown: raw, baseline, adjusted, per device, and the method."
    )
    flops: FlopsEstimate | None = Field(description="Estimated FLOPs of the window.")
    carbon: CarbonEstimate = Field(description="CO2 estimate and its sources.")
    environment: EnvironmentSnapshot = Field(description="Machine and software.")
    warmup: WarmupResult = Field(description="What warmup did.")
    timing: PhaseTimings = Field(description="Wall time of each phase.")
    measurement_warnings: list[str] = Field(
        description="Conditions that weaken the measurement (see the methodology page)."
    )
    measurement_methodology: Literal["total", "steady_state"] = Field(
        "total", description="Which part of the run the headline energy covers (the whole window)."
    )
    steady_state_window: SteadyStateWindow | None = Field(
        None,
        description=(
            "The part of the window where power stayed within +-10 % of its median (informational)."
        ),
    )
    warmup_excluded_samples: int = Field(
        0, description="Power samples taken during warmup (excluded from every figure)."
    )
    timeseries_samples: int = Field(0, description="Samples written to timeseries.parquet.")
    reproducibility_notes: str = Field(
        REPRODUCIBILITY_NOTES,
        description="How the figures were produced and their accuracy limits.",
    )
    requests: list[RequestResult] = Field(
        default_factory=list, description="One entry per measured prompt (raw data)."
    )
    # Where the joules go (issue 16). phase_split: the differential prefill/decode split
    # (measurement.phase_split: true); phase_split_unavailable says why it is missing when it
    # was asked for. energy_attribution: the time-resolved split of the window's GPU energy
    # over engine steps (its per-request figures are in requests[i].energy_j, so its own
    # requests list is left empty); energy_attribution_unavailable: why there is none.
    phase_split: PhaseSplit | None = Field(
        None, description="Differential prefill/decode split (with measurement.phase_split)."
    )
    phase_split_unavailable: str | None = Field(
        None, description="Why the requested phase split is missing."
    )
    energy_attribution: EnergyAttribution | None = Field(
        None,
        description=(
            "Time-resolved split of the window's GPU energy over engine steps (per-request figures"
            " are in requests[i])."
        ),
    )
    energy_attribution_unavailable: str | None = Field(
        None, description="Why there is no time-resolved attribution."
    )
    # data-parallel runs: one summary per process (index, device, device_uuid, n_prompts,
    # output_tokens, duration_s, tokens_per_second, ...); headline statistics are computed
    # over every request of every process, never averaged from these
    process_results: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Data-parallel runs: one summary per process; headline figures are computed over all "
            "requests, never averaged from these."
        ),
    )
    # engine reuse (a study's engine group): whether this run measured on an engine an earlier
    # run loaded, the run id of the run that loaded it (this run's own id when it loaded it;
    # None outside a study), and what clear_run_state() reported before the window
    engine_reused: bool = Field(
        False,
        description="True when the window ran on an engine an earlier run of the study loaded.",
    )
    engine_loaded_by: str | None = Field(
        None,
        description=(
            "Run id of the run that loaded the engine (own id when it loaded it; None outside a "
            "study)."
        ),
    )
    run_state_notes: list[str] = Field(
        default_factory=list,
        description="What clear_run_state() reported before the window (caches reset).",
    )
    # mode: online (a server under a request load): latency, goodput and energy per request;
    # the headline fields above hold the same window's figures (requests = successful ones)
    online: OnlineResult | None = Field(
        None,
        description=(
            "mode: online: load, latency, goodput and energy per request (the headline fields hold"
            " the same window)."
        ),
    )
    output_dir: str | None = Field(None, description="Directory the result was written to.")

    def summary_row(self) -> dict[str, Any]:
        """Flat dict of config columns and headline metrics (one row for tables)."""
        from llenergymeasure.results.io import flatten

        row: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "measurement_config_hash": self.measurement_config_hash,
            "started_at_utc": self.started_at_utc.isoformat(),
        }
        row.update(
            {f"config.{k}": v for k, v in flatten(self.config.model_dump(mode="json")).items()}
        )
        for key in (
            "energy_total_j",
            "energy_adjusted_j",
            "energy_per_output_token_j",
            "energy_per_output_token_adjusted_j",
            "mean_power_w",
            "tokens_per_second",
            "requests_per_second",
            "input_tokens",
            "output_tokens",
            "n_requests",
            "duration_s",
            "peak_memory_bytes",
        ):
            row[key] = getattr(self, key)
        for name in ("latency", "ttft", "itl"):
            stats = getattr(self, name)
            for stat in ("mean", "p50", "p90", "p99"):
                row[f"{name}_{stat}_s"] = getattr(stats, stat)
        row["energy_method"] = self.energy.method
        row["energy_backend"] = self.energy.backend
        row["baseline_power_w"] = self.energy.baseline_power_w
        row["counter_vs_poll_diff_pct"] = self.energy.counter_vs_poll_diff_pct
        row["poll_power_source"] = self.energy.poll_power_source
        row["co2_g"] = self.carbon.co2_g
        row["flops_total"] = self.flops.total_flops if self.flops else None
        row["warnings"] = ",".join(self.measurement_warnings)
        row.update(self.phase_columns())
        if self.online is not None:
            row.update(_online_columns(self.online))
        return row

    def phase_columns(self) -> dict[str, Any]:
        """The flat columns of where the joules go (``phase_split.columns.PHASE_COLUMNS``);
        the same keys for every result, ``None`` where a figure was not measured."""
        from llenergymeasure.phase_split.columns import phase_columns

        attribution = self.energy_attribution
        if attribution is not None and not attribution.requests:
            attribution = attribution.model_copy(update={"requests": _request_energies(self)})
        return phase_columns(self.phase_split, attribution, self.energy.components)

    def to_parquet(self, path: str | Path, *, base: Path | None = None) -> Path:
        """Write the one-row summary table (config columns + metrics) as parquet, through the
        one write path (``llenergymeasure.files``)."""
        from llenergymeasure.results.io import write_rows_parquet

        return write_rows_parquet([self.summary_row()], Path(path), base=base)

    def to_csv(self, path: str | Path, *, base: Path | None = None) -> Path:
        """Write the one-row summary table as CSV, through the one write path."""
        from llenergymeasure.results.io import write_rows_csv

        return write_rows_csv([self.summary_row()], Path(path), base=base)


def _request_energies(result: ExperimentResult) -> list[Any]:
    from llenergymeasure.phase_split.attribution import RequestEnergy

    return [
        RequestEnergy(
            request=r.index,
            energy_j=r.energy_j,
            prefill_energy_j=r.prefill_energy_j or 0.0,
            decode_energy_j=r.decode_energy_j or 0.0,
            prefill_tokens=r.input_tokens,
            decode_tokens=max(r.output_tokens - 1, 0),
        )
        for r in result.requests
        if r.energy_j is not None
    ]


def _online_columns(online: OnlineResult) -> dict[str, Any]:
    """The ``online_*`` summary columns of an online run (absent from offline rows)."""
    m = online.metrics
    row: dict[str, Any] = {
        "online_request_rate": math.inf if online.request_rate == "inf" else online.request_rate,
        "online_achieved_rate_per_s": online.achieved_rate_per_s,
        "online_max_concurrency": online.max_concurrency,
        "online_n_ok": m.n_ok,
        "online_n_failed": m.n_failed,
        "online_goodput_per_s": m.goodput_per_s,
        "online_energy_per_request_j": m.energy_per_request_j,
        "online_energy_per_request_adjusted_j": m.adjusted_energy_per_request_j,
        "online_energy_per_slo_request_j": m.energy_per_slo_request_j,
        "online_client_cpu_s": online.client_cpu_s,
    }
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = getattr(m, name)
        for stat in ("p50", "p99"):
            row[f"online_{name}_{stat}_ms"] = getattr(stats, f"{stat}_ms") if stats else None
    return row


# --- studies -------------------------------------------------------------------------------


class StudySkipped(BaseModel):
    """A grid point that was not run because it is invalid (or a duplicate), with the reason."""

    model_config = _FORBID

    source: str = Field(description='Where the point came from: "sweep" or "experiments[i]".')
    overrides: dict[str, Any] = Field(description="The point's values that differ from base.")
    reason: str = Field(description="Why it was not run.")


class StudyFailedRun(BaseModel):
    """A run (config x cycle) that did not complete, and why."""

    model_config = _FORBID

    run_id: str = Field(description="The run.")
    config_hash: str = Field(description="measurement_config_hash of its config.")
    cycle: int = Field(description="Its cycle (1-based).")
    status: str = Field(description="failed or interrupted.")
    error_type: str = Field(
        description="Exception class (or TimeoutError, WorkerCrashed, a SLURM state)."
    )
    message: str = Field(description="The error message.")


class StudyCounts(BaseModel):
    """How many grid points and runs there were, and what became of them.

    ``generated`` = grid points expanded (valid + skipped); ``experiments`` = valid configs;
    ``runs_planned`` = experiments x cycles; ``ran`` = runs attempted; ``not_run`` = still pending.
    """

    model_config = _FORBID

    generated: int = Field(description="Grid points expanded (valid + skipped).")
    skipped: int = Field(description="Grid points not run.")
    experiments: int = Field(description="Valid configs.")
    runs_planned: int = Field(description="experiments x cycles.")
    ran: int = Field(description="Runs attempted.")
    completed: int = Field(description="Runs that completed.")
    failed: int = Field(description="Runs that failed or were interrupted.")
    not_run: int = Field(description="Runs still pending.")


class StudyProtocol(BaseModel):
    """The measurement protocol a study actually used (execution block + what the runs did)."""

    model_config = _FORBID

    isolation: str = Field(
        "fresh spawned subprocess per run", description="How runs were isolated from each other."
    )
    n_cycles: int = Field(description="Cycles.")
    cycle_order: str = Field(description="Order of the runs within and across cycles.")
    shuffle_seed: int = Field(description="Seed of the shuffled order.")
    config_gap_seconds: float = Field(description="Idle seconds between runs.")
    cycle_gap_seconds: float = Field(description="Idle seconds between cycles.")
    experiment_timeout_seconds: float | None = Field(description="Per-run time limit, seconds.")
    energy_backends: list[str] = Field(
        default_factory=list, description="Energy backends the runs used."
    )
    energy_methods: list[str] = Field(
        default_factory=list, description="Energy methods the runs used."
    )
    baseline_enabled: list[bool] = Field(
        default_factory=list, description="Distinct baseline.enabled values of the runs."
    )
    baseline_runs_measured: int = Field(0, description="Runs that measured their idle baseline.")
    baseline_runs_from_cache: int = Field(0, description="Runs that reused a cached baseline.")
    warmup_runs: list[int] = Field(default_factory=list, description="Distinct warmup run counts.")
    thermal_floor_seconds: list[float] = Field(
        default_factory=list, description="Distinct thermal floors, seconds."
    )


# Headline metrics summarised across the cycles of each config (key -> ExperimentResult field
# or "<distribution>_<stat>_s" for latency statistics).
HEADLINE_METRICS: tuple[str, ...] = (
    "energy_per_output_token_j",
    "energy_per_output_token_adjusted_j",
    "tokens_per_second",
    "energy_total_j",
    "mean_power_w",
    "latency_p50_s",
    "ttft_mean_s",
)


class MetricStatistics(BaseModel):
    """One metric of one config across its cycles: n, mean, sample std, CV and a CI.

    ``n`` counts the runs that reported the metric (energy is None on machines without a GPU
    sensor). ``std``/``cv`` are None when ``n < 2``; ``cv`` is None when the mean is 0. The CI
    needs at least ``StudyStatistics.min_cycles_for_interval`` runs (and scipy); ``ci_note``
    says why it is missing. ``ci_method``: ``"log_t"`` (Student t on the logs: an interval of
    the geometric mean, ``n`` below ``StudyStatistics.t_interval_below_n``) or
    ``"log_bootstrap"`` (seeded BCa bootstrap of the mean log) for positive values;
    ``"t"``/``"bootstrap"`` on the raw scale when a value is <= 0 (summaries written by older
    versions hold raw-scale intervals of the mean even for positive values).
    """

    model_config = _FORBID

    n: int = Field(description="Runs that reported the metric.")
    mean: float | None = Field(description="Mean over the cycles.")
    std: float | None = Field(description="Sample standard deviation (None when n < 2).")
    cv: float | None = Field(description="std / mean (None when n < 2 or mean is 0).")
    geometric_mean: float | None = Field(
        None,
        description="Geometric mean over the cycles (None when a value is <= 0); the centre of a "
        "log-scale interval.",
    )
    ci_low: float | None = Field(description="Lower bound of the confidence interval.")
    ci_high: float | None = Field(description="Upper bound of the confidence interval.")
    ci_method: Literal["t", "bootstrap", "log_t", "log_bootstrap"] | None = Field(
        None,
        description="log_t / log_bootstrap (interval of the geometric mean, from the logs) or "
        "t / bootstrap (of the mean, raw scale, when a value is <= 0).",
    )
    ci_note: str | None = Field(
        None, description="Why there is no interval (fewer than 3 cycles, scipy missing)."
    )


class ConfigStatistics(BaseModel):
    """Statistics of one config (grouped by ``measurement_config_hash``) across cycles."""

    model_config = _FORBID

    config_index: int | None = Field(
        description="Index into the study's experiments (None: not in the manifest)."
    )
    config_hash: str = Field(description="measurement_config_hash the runs are grouped by.")
    label: str = Field(description="What varies between the study's configs, e.g. batch_size=8.")
    varying: dict[str, Any] = Field(
        default_factory=dict, description="The varying fields and this config's values."
    )
    runs_planned: int | None = Field(None, description="Runs planned for this config.")
    runs_completed: int = Field(description="Runs that completed.")
    cycles: list[int] = Field(default_factory=list, description="Cycles that completed.")
    metrics: dict[str, MetricStatistics] = Field(
        default_factory=dict, description="Statistics of each headline metric."
    )


class StudyStatistics(BaseModel):
    """Per-config statistics of the headline metrics (``HEADLINE_METRICS``) and how."""

    model_config = _FORBID

    confidence_level: float = Field(0.95, description="Confidence level of the intervals.")
    min_cycles_for_interval: int = Field(
        3, description="Fewer runs of a config than this get no confidence interval."
    )
    t_interval_below_n: int = Field(
        30, description="A t interval (on the logs) for n below this, the bootstrap otherwise."
    )
    bootstrap_resamples: int = Field(10_000, description="Bootstrap resamples.")
    bootstrap_seed: int = Field(0, description="Bootstrap seed.")
    metrics: list[str] = Field(
        default_factory=lambda: list(HEADLINE_METRICS), description="Metrics summarised."
    )
    configs: list[ConfigStatistics] = Field(
        default_factory=list, description="Statistics of each config."
    )


class StudyResult(JsonFileModel):
    """Outcome of a study (``study_summary.json``): counts, skipped and failed runs, file paths.

    Results are referenced by path (``result_files``, relative to ``study_dir``), not embedded.
    ``results`` holds the completed runs' ``ExperimentResult`` objects in memory (in run order)
    for library callers; it is not serialised.
    """

    model_config = _FORBID

    schema_version: str = Field(SCHEMA_VERSION, description="Version of this schema.")
    llem_version: str = Field(description="llenergymeasure version.")
    study_name: str = Field(description="Study name.")
    study_design_hash: str = Field(description="Hash of the experiments (not of execution).")
    runner: str = Field("local", description="Runner used: local, slurm or docker:<image>.")
    study_dir: str | None = Field(None, description="The study's result directory.")
    started_at_utc: datetime = Field(description="Start (UTC).")
    finished_at_utc: datetime = Field(description="End (UTC).")
    protocol: StudyProtocol = Field(description="The measurement protocol the study used.")
    counts: StudyCounts = Field(description="Grid points and runs, and what became of them.")
    skipped: list[StudySkipped] = Field(
        default_factory=list, description="Grid points not run, with the reason."
    )
    failed: list[StudyFailedRun] = Field(
        default_factory=list, description="Runs that did not complete, and why."
    )
    result_files: list[str] = Field(
        default_factory=list,
        description=(
            "result.json of each completed run, relative to study_dir (absolute for a result "
            "that had to be rescued elsewhere)."
        ),
    )
    rescued: list[str] = Field(
        default_factory=list,
        description=(
            "Completed runs whose result could not be saved in the study directory and was "
            "saved to a rescue folder: '<run_id>: <where and why>' (llem run exits 3)."
        ),
    )
    results_table: str | None = Field(
        None, description="The flat one-row-per-run table (results.parquet), relative to study_dir."
    )
    statistics: StudyStatistics | None = Field(
        None, description="Per-config statistics across cycles."
    )
    results: list[ExperimentResult] = Field(
        default_factory=list,
        exclude=True,
        description=(
            "The completed runs' results in memory, in run order (library callers; not serialised)."
        ),
    )

    @property
    def ok(self) -> bool:
        """True when every planned run completed."""
        return self.counts.completed == self.counts.runs_planned
