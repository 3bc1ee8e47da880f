"""Where an engine runs: in this environment (``local``) or in Docker containers.

``resolve_runner(backend)`` reads ``runners.<backend>`` (env ``LLEM_RUNNER_<BACKEND>`` > user
config > ``local``); ``DockerRunner`` runs one experiment in an ephemeral container;
``DockerEngineGroup`` runs an engine group's experiments in one container that keeps the
engine loaded (``execution.reuse_engine``);
``check_runner_isolation`` refuses studies that would put vLLM and TensorRT-LLM in one
environment. Importing this package imports no engine.
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
]
