"""Where an engine runs: in this environment (``local``), in Docker containers or as SLURM jobs.

``resolve_runner(backend)`` reads ``runners.<backend>`` (env ``LLEM_RUNNER_<BACKEND>`` > user
config > ``local``); ``DockerRunner`` runs one experiment in an ephemeral container;
``DockerEngineGroup`` runs an engine group's experiments in one container that keeps the
engine loaded (``execution.reuse_engine``); ``runners.slurm`` submits runs as SLURM job arrays
and reads their states (``study.slurm_executor`` drives a study through it).
``study_runner_kind`` says whether a study runs on SLURM; ``check_runner_isolation`` refuses
studies that would put vLLM and TensorRT-LLM in one environment. Importing this package imports
no engine.
"""

from __future__ import annotations

from llenergymeasure.runners.docker import (
    CONTAINER_DIR,
    DEFAULT_SHM_SIZE,
    PASSTHROUGH_ENV,
    DockerRunner,
    DockerRunResult,
)
from llenergymeasure.runners.docker_group import DockerEngineGroup
from llenergymeasure.runners.resolve import (
    RunnerSpec,
    check_runner_isolation,
    resolve_runner,
    study_runner_kind,
)

__all__ = [
    "CONTAINER_DIR",
    "DEFAULT_SHM_SIZE",
    "PASSTHROUGH_ENV",
    "DockerEngineGroup",
    "DockerRunResult",
    "DockerRunner",
    "RunnerSpec",
    "check_runner_isolation",
    "resolve_runner",
    "study_runner_kind",
]
