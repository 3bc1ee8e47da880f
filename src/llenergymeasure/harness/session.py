"""Runs measured one after another in this process, on an engine kept loaded between them.

``EngineSession`` is the kept-engine machinery of engine reuse (issue 14), shared by the two
places that serve an engine group: the study's engine-group process
(``study.worker.ReusingMeasureWorker``) and a runner container serving a group
(``python -m llenergymeasure.runners.container_entry --serve``). The first offline run opens
the real engine, energy backend and GPU sensor; with ``keep_engine`` a later run whose
``engine_load_key`` is equal reuses the loaded engine (its result says ``engine_reused`` and
``engine_loaded_by``; the orchestrator clears the engine's run state before its window) and
gets a fresh energy backend and sampler. An online run (``mode: online``) never reuses
anything: a kept engine is unloaded first, so that its server has the GPU to itself.

``is_fatal`` says which failures leave the process's engine or device unusable, so that whoever
serves a group ends the process (or container) instead of measuring the next run on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.energy.baseline import BaselineCache
    from llenergymeasure.harness.saving import MeasuredExperiment

__all__ = ["EngineSession", "is_fatal"]


class EngineSession:
    """Measures runs in turn; keeps the engine loaded between runs when asked (see above).

    ``close()`` unloads the kept engine and closes the sensor (the group is done).
    """

    def __init__(self) -> None:
        self._orchestrator: Any = None
        self._sensor: Any = None

    def measure(
        self,
        config: ExperimentConfig,
        *,
        run_id: str | None = None,
        keep_engine: bool = False,
        baseline_cache: BaselineCache | None = None,
        work_dir: str | Path | None = None,
    ) -> MeasuredExperiment:
        """Measure ``config`` as run ``run_id``.

        ``keep_engine`` (taken when the session opens its engine) keeps the engine loaded after
        the run for the next one; ``baseline_cache`` replaces the session's idle-baseline cache
        (a study passes its file-backed one); ``work_dir``: an online run's server log.
        """
        if config.mode == "online":
            return self._measure_online(config, baseline_cache, work_dir)
        # Looked up on the module at call time (tests replace the real components there).
        from llenergymeasure.harness import orchestrator as orch

        if self._orchestrator is None:
            orchestrator = self._open(config, keep_engine)
        else:  # a kept engine: a fresh energy backend and sampler for this run
            orchestrator = self._orchestrator
            orchestrator.energy_backend = orch.energy_backend_for(
                orchestrator.settings, self._sensor
            )
        if baseline_cache is not None:
            orchestrator.baseline_cache = baseline_cache
        measured: MeasuredExperiment = orchestrator.run(config, run_id=run_id)
        return measured

    def _measure_online(
        self,
        config: ExperimentConfig,
        baseline_cache: BaselineCache | None,
        work_dir: str | Path | None,
    ) -> MeasuredExperiment:
        from llenergymeasure.harness.measure import measure

        self.close()
        return measure(config, baseline_cache=baseline_cache, work_dir=work_dir)

    def _open(self, config: ExperimentConfig, keep_engine: bool) -> Any:
        from llenergymeasure.energy.baseline import BaselineCache
        from llenergymeasure.harness import orchestrator as orch

        settings = orch.MeasurementSettings.from_user_config()
        engine, energy, sensor = orch.default_components(config, settings)
        self._sensor = sensor
        self._orchestrator = orch.ExperimentOrchestrator(
            engine=engine,
            energy_backend=energy,
            sensor=sensor,
            settings=settings,
            baseline_cache=BaselineCache(),
            keep_engine_loaded=keep_engine,
        )
        return self._orchestrator

    def close(self) -> None:
        """Unload the kept engine and close the sensor."""
        orchestrator, self._orchestrator = self._orchestrator, None
        sensor, self._sensor = self._sensor, None
        try:
            if orchestrator is not None:
                orchestrator.close()
        finally:
            if sensor is not None:
                sensor.close()


_FATAL_TYPE_NAMES = ("OutOfMemoryError", "CudaError", "AcceleratorError", "CUDAError")
_FATAL_MESSAGES = (
    "cuda error",
    "out of memory",
    "cublas_status",
    "cudnn_status",
    "device-side assert",
    "illegal memory access",
    "nccl error",
)


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the process's engine or device unusable for further runs.

    CUDA errors and out-of-memory errors (by exception type, anywhere in the MRO, or by
    message) and anything that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``).
    """
    if not isinstance(exc, Exception):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(_FATAL_TYPE_NAMES) or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _FATAL_MESSAGES)
