"""Online mode against a real server: `transformers serve` with builtin:tiny on CPU (slow).

Needs transformers' ``serving`` extra (fastapi, uvicorn, openai) where the server runs; skipped
when it is missing. ``SERVE_EXTRA_PYTHONPATH`` may name a folder that holds the extra for
the server process only (so the test environment itself stays as it is).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.online.run import run_online
from llenergymeasure.online.server import ManagedServer

pytestmark = pytest.mark.slow


def _server_env() -> dict[str, str]:
    extra = os.environ.get("SERVE_EXTRA_PYTHONPATH")
    return {"PYTHONPATH": extra} if extra else {}


def _serve_available() -> bool:
    probe = "from transformers.utils import is_serve_available as a; raise SystemExit(not a())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, **_server_env()},
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def serve_available() -> None:
    if not _serve_available():
        pytest.skip("transformers serve is not available (pip install 'transformers[serving]')")


def factory(argv: list[str], **kw: Any) -> ManagedServer:
    env = {**kw.pop("env", {}), **_server_env()}
    return ManagedServer(argv, env=env, grace_s=10.0, poll_s=0.2, **kw)


PROMPTS = [f"Tell me about the number {i}." for i in range(8)]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_request_rate_sweep_against_transformers_serve(
    serve_available: None, tiny_model_dir: Path, tmp_path: Path, api: str
):
    results = []
    for rate in (4, "inf"):
        config = ExperimentConfig(
            model="builtin:tiny",
            backend="pytorch",
            precision="fp32",
            n=8,
            max_new_tokens=6,
            mode="online",
            online={
                "api": api,
                "request_rate": rate,
                "max_concurrency": 4,
                "n_warmup_requests": 1,
                "request_timeout_s": 120,
                "server": {"startup_timeout_s": 180, "extra_args": ["--device", "cpu"]},
                "slo": {"e2e_ms": 60_000},
            },
        )
        out = tmp_path / f"{api}-{rate}"
        result = run_online(
            config,
            PROMPTS,
            output_dir=out,
            model_source=str(tiny_model_dir),
            server_factory=factory,
        )
        results.append(result)
        m = result.metrics
        assert m.n_ok == 8, result.load.records
        assert m.ttft is not None and m.e2e is not None and m.tpot is not None
        assert m.output_tokens == 8 * 6  # the server's usage; random weights seldom stop early
        assert m.goodput_per_s is not None and m.goodput_per_s > 0
        assert (out / "server.log").exists()
        assert result.server_command is not None and "serve" in result.server_command
    paced, burst = results
    # the paced run spreads its sends over about (n - 1) / rate seconds; inf sends as many
    # at once as the concurrency cap lets through
    sends = [r.send_time_s for r in paced.load.records]
    assert max(sends) - min(sends) > 0.5
    first_four = sorted(r.send_time_s for r in burst.load.records)[:4]
    assert first_four[-1] - first_four[0] < 0.2
