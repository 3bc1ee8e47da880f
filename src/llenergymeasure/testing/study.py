"""Picklable test workers for the study runner (no torch): they run in real spawned children.

``fake_measure_worker`` drives the real orchestrator with ``FakeEngine``, a fake energy backend
and (optionally) a fake GPU sensor, so results, timeseries and the shared baseline cache are
real. ``ScriptedWorker`` makes chosen runs fail, crash, get killed, hang, or run slowly.
``ReusingFakeWorker`` keeps one logging fake engine per process (engine reuse tests).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.base import BatchProgress, LoadInfo, PreparedRun, RawRun
from llenergymeasure.study.worker import RunRequest
from llenergymeasure.testing.engines import FakeEngine

if TYPE_CHECKING:
    from llenergymeasure.harness.saving import MeasuredExperiment


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
    )
    return orchestrator.run(config)  # its log records travel to the study like the real ones


@dataclass(frozen=True)
class ScriptedWorker:
    """A worker whose runs misbehave by position (1-based), else ``fake_measure_worker``.

    ``fail_at``: raise ``ValueError``; ``exit_at``: ``os._exit(3)``; ``kill_at``: SIGKILL itself
    (what the OOM killer does); ``hang_at``: sleep ``hang_s``; ``hang_first_attempt_at``: hang
    only on the first attempt (so a resumed study completes); ``sleep_s``: extra time per run;
    ``start_delay_s``: the spawned process takes this long to start (before its run).
    """

    fail_at: frozenset[int] = field(default_factory=frozenset)
    exit_at: frozenset[int] = field(default_factory=frozenset)
    kill_at: frozenset[int] = field(default_factory=frozenset)
    hang_at: frozenset[int] = field(default_factory=frozenset)
    hang_first_attempt_at: frozenset[int] = field(default_factory=frozenset)
    hang_s: float = 60.0
    sleep_s: float = 0.0
    with_sensor: bool = False
    start_delay_s: float = 0.0  # a slow child start-up (imports): spent while unpickling

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.start_delay_s:  # in the spawned child, before the run begins
            time.sleep(self.start_delay_s)

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


# --- engine reuse ----------------------------------------------------------------------------

_GROUP_SESSION: dict[str, Any] = {}  # this process's kept orchestrator (one group per process)


class LoggingFakeEngine(FakeEngine):
    """A ``FakeEngine`` that appends what happens to it (load, begin_reused_run,
    clear_run_state, each execute with its phase and prompt texts, unload) as JSON lines to
    ``log_path``, with this process's pid."""

    def __init__(self, log_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_path = log_path
        self.run_id: str | None = None

    def _log(self, event: str, **data: Any) -> None:
        line = {"event": event, "pid": os.getpid(), "run_id": self.run_id, **data}
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def load(self, config: ExperimentConfig) -> LoadInfo:
        self._log("load")
        return super().load(config)

    def clear_run_state(self) -> list[str]:
        self._log("clear_run_state")
        return super().clear_run_state()

    def begin_reused_run(self, config: ExperimentConfig) -> list[str]:
        """The optional hook a reused engine gets before each later run's warmup."""
        self._log("begin_reused_run")
        return ["fake: state of the previous run dropped"]

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        self._log("execute", phase=prepared.phase, texts=[p.text for p in prepared.prompts])
        return super().execute(prepared, on_batch=on_batch)

    def unload(self) -> None:
        self._log("unload")
        super().unload()


@dataclass(frozen=True)
class ReusingFakeWorker:
    """Engine-reuse test worker: one kept ``LoggingFakeEngine`` per process, like
    ``ReusingMeasureWorker`` keeps the real engine. Misbehaves by run position (1-based):
    ``fail_at`` raises ``ValueError`` (the process goes on), ``fatal_at`` raises a CUDA
    out-of-memory ``RuntimeError`` (the process ends), ``exit_at`` crashes (``os._exit``),
    ``hang_at`` sleeps ``hang_s``."""

    log_path: str
    fail_at: frozenset[int] = field(default_factory=frozenset)
    fatal_at: frozenset[int] = field(default_factory=frozenset)
    exit_at: frozenset[int] = field(default_factory=frozenset)
    hang_at: frozenset[int] = field(default_factory=frozenset)
    hang_s: float = 60.0

    def __call__(self, request: RunRequest, progress: Callable[[str], None]) -> MeasuredExperiment:
        from llenergymeasure.energy.baseline import BaselineCache
        from llenergymeasure.harness.orchestrator import (
            ExperimentOrchestrator,
            MeasurementSettings,
        )
        from llenergymeasure.testing.energy import FakeEnergyBackend

        position = request.position
        if position in self.exit_at:
            os._exit(3)
        if position in self.hang_at:
            time.sleep(self.hang_s)
        orchestrator = _GROUP_SESSION.get("orchestrator")
        if orchestrator is None:
            engine = LoggingFakeEngine(
                self.log_path,
                output_tokens=request.config.max_new_tokens,
                seconds_per_token=0.0002,
            )
            orchestrator = ExperimentOrchestrator(
                engine=engine,
                energy_backend=FakeEnergyBackend(total_energy_j=10.0 * request.config.n),
                settings=MeasurementSettings(sampling_interval_ms=10),
                baseline_cache=BaselineCache(),
                keep_engine_loaded=request.reuse_engine,
            )
            _GROUP_SESSION["orchestrator"] = orchestrator
            _GROUP_SESSION["engine"] = engine
        _GROUP_SESSION["engine"].run_id = request.run_id
        if position in self.fail_at:
            raise ValueError(f"scripted failure in run {position}")
        if position in self.fatal_at:
            raise RuntimeError("CUDA error: out of memory (scripted)")
        measured: MeasuredExperiment = orchestrator.run(request.config, run_id=request.run_id)
        return measured

    def close(self) -> None:
        orchestrator = _GROUP_SESSION.pop("orchestrator", None)
        _GROUP_SESSION.pop("engine", None)
        if orchestrator is not None:
            orchestrator.close()
