"""A small measured online run against the fake OpenAI server, for the report and table tests."""

from __future__ import annotations

from pathlib import Path

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.online.run import run_online
from llenergymeasure.online.run_result import OnlineRunResult
from llenergymeasure.testing.energy import FakeEnergyBackend, idle_baseline


def five_request_run(endpoint: str, rate: float | str, output_dir: Path) -> OnlineRunResult:
    """5 requests of 4 tokens at ``rate`` to ``endpoint``, metered as 100 J over 1 s against a
    50 W idle baseline: 20 J per request, 5 J per output token at every rate."""
    config = ExperimentConfig(
        model="m",
        backend="vllm",
        n=5,
        max_new_tokens=4,
        mode="online",
        online={
            "endpoint": endpoint,
            "request_rate": rate,
            "n_warmup_requests": 0,
            "slo": {"e2e_ms": 5000},
        },
    )
    return run_online(
        config,
        [f"p{i}" for i in range(5)],
        output_dir=output_dir,
        energy=FakeEnergyBackend(100.0, duration_s=1.0),
        measure_baseline=idle_baseline,
    )
