"""The outcome of a study (``study_summary.json``) and its statistics across cycles."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from llenergymeasure.results.base import FORBID, SCHEMA_VERSION, JsonFileModel
from llenergymeasure.results.models import ExperimentResult


class StudySkipped(BaseModel):
    """A grid point that was not run because it is invalid (or a duplicate), with the reason."""

    model_config = FORBID

    source: str = Field(description='Where the point came from: "sweep" or "experiments[i]".')
    overrides: dict[str, Any] = Field(description="The point's values that differ from base.")
    reason: str = Field(description="Why it was not run.")


class StudyFailedRun(BaseModel):
    """A run (config x cycle) that did not complete, and why."""

    model_config = FORBID

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

    model_config = FORBID

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

    model_config = FORBID

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

    model_config = FORBID

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

    model_config = FORBID

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

    model_config = FORBID

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

    model_config = FORBID

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
