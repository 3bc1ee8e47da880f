"""llenergymeasure: measure the energy and efficiency of LLM inference.

Public API::

    import llenergymeasure as llem
    result = llem.run_experiment(model="builtin:tiny", dataset="synthetic", n=20)

Heavy modules (torch, engines) load lazily; importing this package stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llenergymeasure._version import __version__

if TYPE_CHECKING:
    from llenergymeasure.api import run_experiment, run_study
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.results.models import ExperimentResult

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "StudyConfig",
    "StudyResult",
    "__version__",
    "run_experiment",
    "run_study",
]

_LAZY = {
    "run_experiment": ("llenergymeasure.api", "run_experiment"),
    "run_study": ("llenergymeasure.api", "run_study"),
    "ExperimentConfig": ("llenergymeasure.config.models", "ExperimentConfig"),
    "StudyConfig": ("llenergymeasure.config.study", "StudyConfig"),
    "ExperimentResult": ("llenergymeasure.results.models", "ExperimentResult"),
    "StudyResult": ("llenergymeasure.results.models", "StudyResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llenergymeasure' has no attribute {name!r}")
