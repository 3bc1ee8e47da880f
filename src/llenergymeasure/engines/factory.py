"""Create the engine for a backend name, with a pre-flight-quality error when it is missing."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from llenergymeasure.config.catalogue import ENGINES, engine_spec
from llenergymeasure.engines.base import InferenceBackend
from llenergymeasure.engines.registry import engine_installed
from llenergymeasure.exceptions import BackendError, EngineNotInstalledError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig


def create_engine(backend: str, config: ExperimentConfig | None = None) -> InferenceBackend:
    """The engine implementation of ``backend``; BackendError with the install command if absent.

    The class comes from the catalogue's ``engine_class`` path, imported only now. With
    ``config`` and ``pytorch.num_processes > 1`` the pytorch engine is the data-parallel
    ``DataParallelEngine`` (one spawned replica per GPU).
    """
    if backend not in ENGINES:
        raise BackendError(
            f"engine '{backend}' is not known to this version of llem",
            hint=f"known engines: {', '.join(ENGINES)}",
        )
    spec = engine_spec(backend)
    if not engine_installed(backend):
        raise EngineNotInstalledError(
            f"engine '{backend}' is not installed", hint=spec.install_hint
        )
    if backend == "pytorch" and config is not None:
        from llenergymeasure.engines.data_parallel import DataParallelEngine, num_processes

        if num_processes(config) > 1:
            return DataParallelEngine()
    return engine_class(backend)()


def engine_class(backend: str) -> type[InferenceBackend]:
    """The engine class the catalogue names for ``backend``, imported now.

    Engine modules import their library lazily, so this works where the engine is not
    installed (online mode builds a server's command line from it).
    """
    spec = engine_spec(backend)
    module_name, _, class_name = spec.engine_class.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise BackendError(
            f"engine '{backend}': cannot import {spec.engine_class}: {e}", hint=spec.install_hint
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, InferenceBackend)):
        raise BackendError(
            f"engine '{backend}': {spec.engine_class} is not an InferenceBackend subclass"
        )
    return cls
