"""llenergymeasure: measure the energy and efficiency of LLM inference.

Public API::

    import llenergymeasure as llem
    result = llem.run_experiment(model="builtin:tiny", dataset="synthetic", n=20)
    result.to_json("result.json")

    study = llem.run_study("study.yaml")              # a grid x cycles, one process per run
    study = llem.resume_study("results/my-study_...")  # continue an interrupted study

    with llem.measure() as m:                          # the energy of any block of code
        outputs = model.generate(**inputs)
    print(m.energy_j, m.duration_s, m.per_token(n_new_tokens))

Functions:
    run_experiment(config=None, **fields) -> ExperimentResult
        Measure one experiment in this process; writes nothing to disk.
    run_study(study, *, output_dir=..., quiet=False) -> StudyResult
        Run a study YAML or StudyConfig under a results directory.
    resume_study(study_dir, *, study=None, quiet=False) -> StudyResult
        Continue a study in its directory (the manifest holds the configs).
    measure(gpus=None, baseline=None) -> block (``with``) or decorator (``@``)
        Measure your own code through the same energy window as runs; figures in Measurement.

Types:
    ExperimentConfig, StudyConfig       what to measure (pydantic models; from_yaml)
    ExperimentResult, StudyResult       what was measured (to_json / from_json)
    Measurement                         what a measure() block measured

Heavy modules (torch, engines) load lazily on first use; importing this package stays fast.

Logging: modules log to the ``llenergymeasure`` logger tree and the package adds only a
``NullHandler``, so nothing is printed but progress bars until the application configures
logging, e.g. ``logging.basicConfig(level=logging.INFO)`` for the phase messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llenergymeasure._version import __version__

# A library configures no logging: its records go nowhere until the application sets up
# handlers (the ``llem`` command does; see ``llenergymeasure.logs``).
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from llenergymeasure.api import Measurement, measure, resume_study, run_experiment, run_study
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.results.models import ExperimentResult
    from llenergymeasure.results.study import StudyResult

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "Measurement",
    "StudyConfig",
    "StudyResult",
    "__version__",
    "measure",
    "resume_study",
    "run_experiment",
    "run_study",
]

_LAZY = {
    "run_experiment": ("llenergymeasure.api", "run_experiment"),
    "run_study": ("llenergymeasure.api", "run_study"),
    "resume_study": ("llenergymeasure.api", "resume_study"),
    "measure": ("llenergymeasure.api", "measure"),
    "Measurement": ("llenergymeasure.api", "Measurement"),
    "ExperimentConfig": ("llenergymeasure.config.models", "ExperimentConfig"),
    "StudyConfig": ("llenergymeasure.config.study", "StudyConfig"),
    "ExperimentResult": ("llenergymeasure.results.models", "ExperimentResult"),
    "StudyResult": ("llenergymeasure.results.study", "StudyResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llenergymeasure' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Lists the lazy API too, so dir() and help(llenergymeasure) show it.
    return sorted(set(globals()) | set(_LAZY))
