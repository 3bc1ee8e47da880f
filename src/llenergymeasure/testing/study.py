"""Picklable test workers for the study runner (no torch): they run in real spawned children.

``fake_measure_worker`` drives the real orchestrator with ``FakeEngine``, a fake energy backend
and (optionally) a fake GPU sensor, so results, timeseries and the shared baseline cache are
real. ``ScriptedWorker`` makes chosen runs fail, crash, get killed, hang, or run slowly.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llenergymeasure.study.worker import RunRequest

if TYPE_CHECKING:
    from llenergymeasure.harness.orchestrator import MeasuredExperiment


def fake_measure_worker(
    request: RunRequest, progress: Callable[[str], None], *, with_sensor: bool = False
) -> MeasuredExperiment:
    """Measure ``request.config`` with a fake engine (tokens = ``max_new_tokens``)."""
    from llenergymeasure.energy.baseline import BaselineCache
    from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
    from llenergymeasure.testing.energy import FakeEnergyBackend, FakeGpuSensor
    from llenergymeasure.testing.engines import FakeEngine

    config = request.config
    cache = (
        BaselineCache(path=request.baseline_cache_path)
        if request.baseline_cache_path is not None
        else BaselineCache()
    )
    orchestrator = ExperimentOrchestrator(
        engine=FakeEngine(output_tokens=config.max_new_tokens, seconds_per_token=0.0002),
        energy_backend=FakeEnergyBackend(total_energy_j=10.0 * config.n),
        sensor=FakeGpuSensor() if with_sensor else None,
        settings=MeasurementSettings(sampling_interval_ms=10),
        baseline_cache=cache,
        progress=progress,
    )
    return orchestrator.run(config)


@dataclass(frozen=True)
class ScriptedWorker:
    """A worker whose runs misbehave by position (1-based), else ``fake_measure_worker``.

    ``fail_at``: raise ``ValueError``; ``exit_at``: ``os._exit(3)``; ``kill_at``: SIGKILL itself
    (what the OOM killer does); ``hang_at``: sleep ``hang_s``; ``hang_first_attempt_at``: hang
    only on the first attempt (so a resumed study completes); ``sleep_s``: extra time per run.
    """

    fail_at: frozenset[int] = field(default_factory=frozenset)
    exit_at: frozenset[int] = field(default_factory=frozenset)
    kill_at: frozenset[int] = field(default_factory=frozenset)
    hang_at: frozenset[int] = field(default_factory=frozenset)
    hang_first_attempt_at: frozenset[int] = field(default_factory=frozenset)
    hang_s: float = 60.0
    sleep_s: float = 0.0
    with_sensor: bool = False

    def __call__(self, request: RunRequest, progress: Callable[[str], None]) -> MeasuredExperiment:
        position = request.position
        if position in self.fail_at:
            raise ValueError(f"scripted failure in run {position}")
        if position in self.exit_at:
            os._exit(3)
        if position in self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if position in self.hang_at or (
            position in self.hang_first_attempt_at and request.attempt == 1
        ):
            progress("hanging")
            time.sleep(self.hang_s)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return fake_measure_worker(request, progress, with_sensor=self.with_sensor)
