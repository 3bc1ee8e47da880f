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
from llenergymeasure.energy.attribution import EnergyAttribution
from llenergymeasure.energy.base import DeviceEnergy
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.energy.phase_split import PhaseSplit
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

    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """Serialise to JSON; with ``path``, also write it atomically."""
        text = self.model_dump_json(indent=indent)
        if path is not None:
            from llenergymeasure.results.io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls: type[_M], source: str | Path) -> _M:
        """Load from a JSON string or a file path."""
        if isinstance(source, Path) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            source = Path(source).read_text(encoding="utf-8")
        return cls.model_validate_json(source)


class DistributionStats(BaseModel):
    """Summary of a sample of durations in seconds (computed over every raw sample)."""

    model_config = _FORBID

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    min: float | None
    max: float | None


class FlopsEstimate(BaseModel):
    """Inference FLOPs of the measurement window (warmup excluded)."""

    model_config = _FORBID

    total_flops: float
    flops_per_output_token: float | None
    parameter_count: int
    method: str  # "2 x params x tokens (input + output)"
    confidence: Literal["high", "medium", "low"]
    notes: list[str] = Field(default_factory=list)


class CarbonEstimate(BaseModel):
    """CO2 = energy (kWh) x carbon intensity x PUE, each with its source."""

    model_config = _FORBID

    energy_kwh: float | None
    co2_g: float | None
    carbon_intensity_gco2_kwh: float | None
    carbon_intensity_source: str
    datacenter_pue: float
    datacenter_pue_source: str
    datacenter_location: str | None
    basis: Literal["energy_total_j"] = "energy_total_j"


class EnergyBreakdown(BaseModel):
    """Energy of the measurement window: raw, baseline, adjusted, per device, and how."""

    model_config = _FORBID

    available: bool
    backend: str
    backend_version: str | None
    method: str
    total_j: float | None
    per_device: list[DeviceEnergy] = Field(default_factory=list)
    counter_energy_j: float | None = None
    poll_energy_j: float | None = None
    counter_vs_poll_diff_pct: float | None = None
    poll_power_source: str | None = None
    baseline: BaselineMeasurement | None = None
    baseline_power_w: float | None = None
    baseline_energy_j: float | None = None
    adjusted_j: float | None = None
    notes: list[str] = Field(default_factory=list)
    # gpu / cpu / dram, each with its method, and total_with_host_j; every figure above is
    # GPU-only (None: not collected, e.g. results written before it existed)
    components: EnergyComponents | None = None


class SteadyStateWindow(BaseModel):
    """Part of the measurement window where power stayed within +-10 % of its median."""

    model_config = _FORBID

    start_s: float  # seconds from the start of the measurement window
    end_s: float
    mean_power_w: float
    fraction_of_window: float


class WarmupResult(BaseModel):
    """What warmup did before the window opened."""

    model_config = _FORBID

    runs: int
    prompts_per_run: int
    duration_s: float
    latencies_s: list[float]
    convergence_detection: bool
    converged: bool | None = None
    final_cv: float | None = None
    thermal_floor_seconds: float
    notes: list[str] = Field(default_factory=list)
    # where the warmup prompts came from (never the measured prompts); None: no warmup ran
    prompt_source: str | None = None


class PhaseTimings(BaseModel):
    """Wall time of each phase, seconds (perf_counter).

    ``compile_s`` (``torch_compile`` only; None otherwise): how much longer the first warmup
    run, where transformers compiles, took than the median later warmup run (the whole first
    run when only one ran). It is part of ``warmup_s``, never of the measurement window.
    ``load_parts``: parts of ``load_s`` that the engine reports itself (vLLM: ``engine_start_s``,
    the ``LLM(...)`` constructor, and ``compile_s`` where vLLM propagates it); empty otherwise.
    """

    model_config = _FORBID

    preflight_s: float = 0.0
    environment_s: float = 0.0
    baseline_s: float = 0.0
    load_s: float = 0.0
    dataset_s: float = 0.0
    warmup_s: float = 0.0
    thermal_floor_s: float = 0.0
    measurement_s: float = 0.0
    phase_split_s: float = 0.0  # the prefill-only window with its warmup and thermal floor
    total_s: float = 0.0
    compile_s: float | None = None
    load_parts: dict[str, float] = Field(default_factory=dict)


class RequestResult(BaseModel):
    """One prompt of the measurement window (raw data for late aggregation).

    ``energy_j`` (with its ``prefill_energy_j`` / ``decode_energy_j`` parts): the request's
    share of the window's GPU energy by the time-resolved attribution
    (``ExperimentResult.energy_attribution`` has the rule's figures); the requests of a run sum
    to ``energy_total_j``. None where the run has no per-token times or no samples.
    """

    model_config = _FORBID

    index: int
    input_tokens: int
    output_tokens: int
    latency_s: float
    ttft_s: float | None
    batch_index: int
    process_index: int = 0
    energy_j: float | None = None
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None


class EnvironmentSnapshot(BaseModel):
    """Machine and software the experiment ran on."""

    model_config = _FORBID

    python_version: str
    os: str
    cpu_model: str | None
    cpu_count: int | None
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    cuda_version_source: str | None = None
    persistence_mode: list[bool | None] = Field(default_factory=list)
    engine: str
    engine_version: str | None
    library_versions: dict[str, str | None] = Field(default_factory=dict)
    pip_freeze_sha256: str | None = None
    llem_version: str
    hostname: str | None = None
    cuda_visible_devices: str | None = None


class ExperimentResult(JsonFileModel):
    """Everything measured in one experiment, with the config that produced it."""

    model_config = _FORBID

    schema_version: str = SCHEMA_VERSION
    llem_version: str
    experiment_id: str
    started_at_utc: datetime
    finished_at_utc: datetime
    config: ExperimentConfig
    measurement_config_hash: str
    effective_parameters: dict[str, Any]
    dataset: dict[str, Any]

    # Headline metrics
    energy_total_j: float | None
    energy_adjusted_j: float | None
    energy_per_output_token_j: float | None
    energy_per_output_token_adjusted_j: float | None
    mean_power_w: float | None
    tokens_per_second: float
    requests_per_second: float
    input_tokens: int
    output_tokens: int
    n_requests: int
    duration_s: float
    latency: DistributionStats
    ttft: DistributionStats
    itl: DistributionStats
    peak_memory_bytes: int | None

    energy: EnergyBreakdown
    flops: FlopsEstimate | None
    carbon: CarbonEstimate
    environment: EnvironmentSnapshot
    warmup: WarmupResult
    timing: PhaseTimings
    measurement_warnings: list[str]
    measurement_methodology: Literal["total", "steady_state"] = "total"
    steady_state_window: SteadyStateWindow | None = None
    warmup_excluded_samples: int = 0
    timeseries_samples: int = 0
    reproducibility_notes: str = REPRODUCIBILITY_NOTES
    requests: list[RequestResult] = Field(default_factory=list)
    # Where the joules go (issue 16). phase_split: the differential prefill/decode split
    # (measurement.phase_split: true); phase_split_unavailable says why it is missing when it
    # was asked for. energy_attribution: the time-resolved split of the window's GPU energy
    # over engine steps (its per-request figures are in requests[i].energy_j, so its own
    # requests list is left empty); energy_attribution_unavailable: why there is none.
    phase_split: PhaseSplit | None = None
    phase_split_unavailable: str | None = None
    energy_attribution: EnergyAttribution | None = None
    energy_attribution_unavailable: str | None = None
    # data-parallel runs: one summary per process (index, device, device_uuid, n_prompts,
    # output_tokens, duration_s, tokens_per_second, ...); headline statistics are computed
    # over every request of every process, never averaged from these
    process_results: list[dict[str, Any]] = Field(default_factory=list)
    # engine reuse (a study's engine group): whether this run measured on an engine an earlier
    # run loaded, the run id of the run that loaded it (this run's own id when it loaded it;
    # None outside a study), and what clear_run_state() reported before the window
    engine_reused: bool = False
    engine_loaded_by: str | None = None
    run_state_notes: list[str] = Field(default_factory=list)
    # mode: online (a server under a request load): latency, goodput and energy per request;
    # the headline fields above hold the same window's figures (requests = successful ones)
    online: OnlineResult | None = None
    output_dir: str | None = None

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
        """The flat columns of where the joules go (``results.phase_columns.PHASE_COLUMNS``);
        the same keys for every result, ``None`` where a figure was not measured."""
        from llenergymeasure.results.phase_columns import phase_columns

        attribution = self.energy_attribution
        if attribution is not None and not attribution.requests:
            attribution = attribution.model_copy(update={"requests": _request_energies(self)})
        return phase_columns(self.phase_split, attribution, self.energy.components)

    def to_parquet(self, path: str | Path) -> Path:
        """Write the one-row summary table (config columns + metrics) as parquet, atomically."""
        from llenergymeasure.results.io import write_rows_parquet

        return write_rows_parquet([self.summary_row()], Path(path))

    def to_csv(self, path: str | Path) -> Path:
        """Write the one-row summary table as CSV, atomically."""
        from llenergymeasure.results.io import write_rows_csv

        return write_rows_csv([self.summary_row()], Path(path))


def _request_energies(result: ExperimentResult) -> list[Any]:
    from llenergymeasure.energy.attribution import RequestEnergy

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

    source: str  # "sweep" or "experiments[3]"
    overrides: dict[str, Any]
    reason: str


class StudyFailedRun(BaseModel):
    """A run (config x cycle) that did not complete, and why."""

    model_config = _FORBID

    run_id: str
    config_hash: str
    cycle: int
    status: str  # "failed" or "interrupted"
    error_type: str
    message: str


class StudyCounts(BaseModel):
    """How many grid points and runs there were, and what became of them.

    ``generated`` = grid points expanded (valid + skipped); ``experiments`` = valid configs;
    ``runs_planned`` = experiments x cycles; ``ran`` = runs attempted; ``not_run`` = still pending.
    """

    model_config = _FORBID

    generated: int
    skipped: int
    experiments: int
    runs_planned: int
    ran: int
    completed: int
    failed: int
    not_run: int


class StudyProtocol(BaseModel):
    """The measurement protocol a study actually used (execution block + what the runs did)."""

    model_config = _FORBID

    isolation: str = "fresh spawned subprocess per run"
    n_cycles: int
    cycle_order: str
    shuffle_seed: int
    config_gap_seconds: float
    cycle_gap_seconds: float
    experiment_timeout_seconds: float | None
    energy_backends: list[str] = Field(default_factory=list)
    energy_methods: list[str] = Field(default_factory=list)
    baseline_enabled: list[bool] = Field(default_factory=list)
    baseline_runs_measured: int = 0
    baseline_runs_from_cache: int = 0
    warmup_runs: list[int] = Field(default_factory=list)
    thermal_floor_seconds: list[float] = Field(default_factory=list)


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
    sensor). ``std``/``cv``/CI are None when ``n < 2``; ``cv`` is None when the mean is 0.
    ``ci_method``: ``"t"`` (Student t interval, ``n`` below ``StudyStatistics.t_interval_below_n``)
    or ``"bootstrap"`` (seeded percentile bootstrap of the mean).
    """

    model_config = _FORBID

    n: int
    mean: float | None
    std: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: Literal["t", "bootstrap"] | None = None


class ConfigStatistics(BaseModel):
    """Statistics of one config (grouped by ``measurement_config_hash``) across cycles."""

    model_config = _FORBID

    config_index: int | None  # index into the study's experiments (None: not in the manifest)
    config_hash: str
    label: str  # what varies between the study's configs, e.g. "batch_size=8, torch_compile=True"
    varying: dict[str, Any] = Field(default_factory=dict)
    runs_planned: int | None = None
    runs_completed: int
    cycles: list[int] = Field(default_factory=list)
    metrics: dict[str, MetricStatistics] = Field(default_factory=dict)


class StudyStatistics(BaseModel):
    """Per-config statistics of the headline metrics (``HEADLINE_METRICS``) and how."""

    model_config = _FORBID

    confidence_level: float = 0.95
    t_interval_below_n: int = 30  # t interval for n below this, seeded bootstrap otherwise
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    metrics: list[str] = Field(default_factory=lambda: list(HEADLINE_METRICS))
    configs: list[ConfigStatistics] = Field(default_factory=list)


class StudyResult(JsonFileModel):
    """Outcome of a study (``study_summary.json``): counts, skipped and failed runs, file paths.

    Results are referenced by path (``result_files``, relative to ``study_dir``), not embedded.
    ``results`` holds the completed runs' ``ExperimentResult`` objects in memory (in run order)
    for library callers; it is not serialised.
    """

    model_config = _FORBID

    schema_version: str = SCHEMA_VERSION
    llem_version: str
    study_name: str
    study_design_hash: str
    runner: str = "local"
    study_dir: str | None = None
    started_at_utc: datetime
    finished_at_utc: datetime
    protocol: StudyProtocol
    counts: StudyCounts
    skipped: list[StudySkipped] = Field(default_factory=list)
    failed: list[StudyFailedRun] = Field(default_factory=list)
    result_files: list[str] = Field(default_factory=list)
    results_table: str | None = None  # "results.parquet", relative to study_dir
    statistics: StudyStatistics | None = None  # per-config statistics across cycles
    results: list[ExperimentResult] = Field(default_factory=list, exclude=True)

    @property
    def ok(self) -> bool:
        """True when every planned run completed."""
        return self.counts.completed == self.counts.runs_planned
