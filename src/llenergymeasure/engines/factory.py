"""Create the engine for a backend name, with a pre-flight-quality error when it is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llenergymeasure.config.ssot import ENGINE_EXTRAS
from llenergymeasure.engines.base import InferenceBackend
from llenergymeasure.engines.registry import engine_installed
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig


def create_engine(backend: str, config: ExperimentConfig | None = None) -> InferenceBackend:
    """The engine implementation of ``backend``; BackendError with the install command if absent.

    With ``config`` and ``pytorch.num_processes > 1`` the pytorch engine is the data-parallel
    ``DataParallelEngine`` (one spawned replica per GPU).
    """
    if not engine_installed(backend):
        raise BackendError(f"engine '{backend}' is not installed", hint=ENGINE_EXTRAS.get(backend))
    if backend == "pytorch":
        if config is not None:
            from llenergymeasure.engines.data_parallel import DataParallelEngine, num_processes

            if num_processes(config) > 1:
                return DataParallelEngine()
        from llenergymeasure.engines.pytorch import PyTorchBackend

        return PyTorchBackend()
    if backend == "vllm":
        from llenergymeasure.engines.vllm import VLLMBackend

        return VLLMBackend()
    if backend == "tensorrt":
        from llenergymeasure.engines.tensorrt import TensorRTBackend

        return TensorRTBackend()
    raise BackendError(
        f"engine '{backend}' is not implemented in this version of llem yet",
        hint="use backend: pytorch",
    )
