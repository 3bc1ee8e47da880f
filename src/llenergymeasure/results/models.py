"""The research-grade result of one experiment.

Every energy figure carries the method that produced it; every timing figure comes from
``time.perf_counter`` around device-synchronised work. JSON is the primary format and
``ExperimentResult.from_json(r.to_json())`` reproduces ``r`` exactly.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.phase_split.attribution import EnergyAttribution
from llenergymeasure.phase_split.differential import PhaseSplit
from llenergymeasure.results.base import FORBID, SCHEMA_VERSION, JsonFileModel
from llenergymeasure.results.environment import EnvironmentSnapshot
from llenergymeasure.results.measurements import (
    CarbonEstimate,
    DistributionStats,
    EnergyBreakdown,
    FlopsEstimate,
    PhaseTimings,
    RequestResult,
    SteadyStateWindow,
    WarmupResult,
)
from llenergymeasure.results.online import OnlineResult

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


class ExperimentResult(JsonFileModel):
    """Everything measured in one experiment, with the config that produced it."""

    model_config = FORBID

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
