"""Create the engine for a backend name, with a pre-flight-quality error when it is missing."""

from __future__ import annotations

from llenergymeasure.config.ssot import ENGINE_EXTRAS
from llenergymeasure.engines.base import InferenceBackend
from llenergymeasure.engines.registry import engine_installed
from llenergymeasure.exceptions import BackendError


def create_engine(backend: str) -> InferenceBackend:
    """The engine implementation of ``backend``; BackendError with the install command if absent."""
    if not engine_installed(backend):
        raise BackendError(f"engine '{backend}' is not installed", hint=ENGINE_EXTRAS.get(backend))
    if backend == "pytorch":
        from llenergymeasure.engines.pytorch import PyTorchBackend

        return PyTorchBackend()
    raise BackendError(
        f"engine '{backend}' is not implemented in this version of llem yet",
        hint="use backend: pytorch",
    )
