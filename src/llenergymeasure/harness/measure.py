"""Measure one experiment in this process with the real engine, energy backend and sensor.

``mode: online`` experiments go to ``harness.online.measure_online`` (a server under a request
load); offline ones through the ``ExperimentOrchestrator``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.harness.orchestrator import (
    ExperimentOrchestrator,
    MeasuredExperiment,
    MeasurementSettings,
    default_components,
)

__all__ = ["measure"]

logger = logging.getLogger(__name__)


def measure(
    config: ExperimentConfig,
    *,
    baseline_cache: BaselineCache | None = None,
    work_dir: str | Path | None = None,
) -> MeasuredExperiment:
    """Run one experiment with the components of this machine; returns its measurement.

    Phase messages are log records of the ``llenergymeasure`` loggers (``llenergymeasure.logs``).

    ``baseline_cache`` replaces the per-process idle-baseline cache; the study runner passes one
    backed by a file so that its runs share one baseline. The NVML sensor is closed afterwards.
    ``work_dir`` (online runs): where the server log is written while the run goes (it stays
    there if the run fails); without it a temporary folder is used and nothing is left behind.
    """
    if config.mode == "online":
        from llenergymeasure.harness.online import measure_online

        return measure_online(config, baseline_cache=baseline_cache, work_dir=work_dir)
    settings = MeasurementSettings.from_user_config()
    engine, energy, sensor = default_components(config, settings)
    logger.debug(
        "engine %s, energy backend %s, GPU sensor %s",
        type(engine).__name__,
        energy.name,
        type(sensor).__name__ if sensor is not None else None,
    )
    orchestrator = ExperimentOrchestrator(
        engine=engine,
        energy_backend=energy,
        sensor=sensor,
        settings=settings,
        baseline_cache=baseline_cache,
    )
    try:
        return orchestrator.run(config)
    finally:
        if sensor is not None:
            sensor.close()
