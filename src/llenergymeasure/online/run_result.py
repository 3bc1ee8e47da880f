"""What one online run measured (``OnlineRunResult``), and the error when every request failed.

``OnlineRunResult`` keeps every request record with how the run was set up; ``summary()`` is what
an ``ExperimentResult`` keeps of it (``results.online.OnlineResult``), and its other methods give
the ``ExperimentResult`` fields that only an online run has the figures for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.exceptions import ExperimentError
from llenergymeasure.online.load import LoadRun
from llenergymeasure.online.metrics import OnlineMetrics
from llenergymeasure.results.models import RequestResult, WarmupResult
from llenergymeasure.results.online import OnlineResult

__all__ = ["OnlineRunFailed", "OnlineRunResult"]


class OnlineRunResult(BaseModel):
    """Everything one online run measured, with how it was set up.

    ``load`` holds every request record (warmup ones separately); ``energy`` is the backend's
    measurement over the window (``None`` without a backend); ``server_command`` and
    ``server_log`` are set when llem started the server.
    """

    model_config = {"extra": "forbid"}

    endpoint: str
    request_model: str
    api: Literal["chat", "completions"]
    arrival: str
    burstiness: float | None
    request_rate: float | Literal["inf"]
    max_concurrency: int | None
    max_tokens: int
    ignore_eos_sent: bool
    continuous_usage_sent: bool = False
    server_command: list[str] | None = None
    server_log: str | None = None
    server_ready_s: float | None = None
    baseline: BaselineMeasurement | None = None
    energy: EnergyMeasurement | None = None
    metrics: OnlineMetrics
    load: LoadRun
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> OnlineResult:
        """What an ``ExperimentResult`` keeps of this run (every request record stays here)."""
        return OnlineResult(
            endpoint=self.endpoint,
            request_model=self.request_model,
            api=self.api,
            arrival=self.arrival,
            burstiness=self.burstiness,
            request_rate=self.request_rate,
            max_concurrency=self.max_concurrency,
            max_tokens=self.max_tokens,
            ignore_eos_sent=self.ignore_eos_sent,
            continuous_usage_sent=self.continuous_usage_sent,
            achieved_rate_per_s=self.load.achieved_rate_per_s,
            scheduled_rate_per_s=self.load.scheduled_rate_per_s,
            client_cpu_s=self.load.client_cpu_s,
            max_schedule_lag_s=self.load.max_schedule_lag_s,
            n_warmup_requests=len(self.load.warmup_records),
            server_command=self.server_command,
            server_log=Path(self.server_log).name if self.server_log else None,
            server_ready_s=self.server_ready_s,
            metrics=self.metrics,
            warnings=list(self.warnings),
        )

    def effective_parameters(self) -> dict[str, Any]:
        """How the run was set up: ``ExperimentResult.effective_parameters`` of an online run."""
        return {
            "mode": "online",
            "endpoint": self.endpoint,
            "request_model": self.request_model,
            "api": self.api,
            "server_command": self.server_command,
            "ignore_eos_sent": self.ignore_eos_sent,
            "continuous_usage_sent": self.continuous_usage_sent,
        }

    def warning_codes(self) -> list[str]:
        """Online mode's own ``ExperimentResult.measurement_warnings`` codes for this run."""
        codes = []
        if self.metrics.n_failed:
            codes.append("online_requests_failed")
        if self.load.schedule_warnings():
            codes.append("online_client_behind_schedule")
        if self.metrics.n_ok_without_token_chunks:
            codes.append("online_token_chunks_missing")  # TTFT/ITL leave those requests out
        return codes

    def warmup_result(self) -> WarmupResult:
        """The warmup requests, sent one at a time before the load, as a ``WarmupResult``."""
        warm = self.load.warmup_records
        return WarmupResult(
            runs=len(warm),
            prompts_per_run=1,
            duration_s=sum(r.e2e_s for r in warm),
            latencies_s=[r.e2e_s for r in warm],
            convergence_detection=False,
            thermal_floor_seconds=0.0,
            notes=["online: warmup requests sent one at a time before the load"],
            prompt_source="llem's warmup prompts" if warm else None,
        )

    def request_results(self) -> list[RequestResult]:
        """The successful measured requests, as ``ExperimentResult.requests``."""
        return [
            RequestResult(
                index=r.index,
                input_tokens=r.prompt_tokens_usage or 0,
                output_tokens=r.output_tokens,
                latency_s=r.e2e_s,
                ttft_s=r.ttft_s,
                batch_index=0,
            )
            for r in self.load.records
            if r.ok
        ]


class OnlineRunFailed(ExperimentError):
    """Every measured request failed; ``result`` keeps what was recorded."""

    def __init__(self, message: str, result: OnlineRunResult, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result
