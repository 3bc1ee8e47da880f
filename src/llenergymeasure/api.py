"""The public library API: ``run_experiment``, ``run_study``, ``resume_study`` and ``measure``
(the energy of any block of code, ``harness.measure_code``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.harness.block_measurement import Measurement
from llenergymeasure.harness.measure_code import measure
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import StudyResult

if TYPE_CHECKING:
    from llenergymeasure.config.study import StudyConfig

__all__ = ["Measurement", "measure", "resume_study", "run_experiment", "run_study"]


def _build_config(
    config: str | Path | ExperimentConfig | None, kwargs: dict[str, Any]
) -> ExperimentConfig:
    from llenergymeasure.config.loading import build_experiment_config

    if config is None and not kwargs:
        raise ConfigError("run_experiment() needs a config or keyword arguments (model=...)")
    return build_experiment_config(config, kwargs, overrides_label="run_experiment()")


def run_experiment(
    config: str | Path | ExperimentConfig | None = None, **kwargs: Any
) -> ExperimentResult:
    """Measure one experiment and return its result; writes nothing to disk.

    ``config`` is a YAML path or an ``ExperimentConfig``; keyword arguments build or override
    fields (``run_experiment(model="builtin:tiny", dataset="synthetic", n=20)``).
    Save with ``result.to_json(path)``.
    """
    from llenergymeasure.harness.measure import measure

    return measure(_build_config(config, kwargs)).result


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def run_study(
    study: str | Path | StudyConfig,
    *,
    output_dir: str | Path | None = _UNSET,
    quiet: bool = False,
) -> StudyResult:
    """Run a study (grid x cycles), each run in a fresh subprocess; returns its ``StudyResult``.

    ``study`` is a study YAML path or a ``StudyConfig``. Results go to
    ``<output_dir>/<study-name>_<timestamp>/`` (manifest, per-run ``result.json`` +
    ``timeseries.parquet``, ``study_summary.json``, ``results.parquet``); ``output_dir``
    defaults to the user config ``output.results_dir``. ``output_dir=None`` keeps nothing on
    disk: files pass through a private temporary directory that is removed before returning,
    and the results are available only as ``StudyResult.results``. A study whose runs failed
    still returns normally; check ``result.failed`` / ``result.ok``. ``quiet``: no progress bar
    (the study's messages are log records of ``llenergymeasure.study``, shown only where the
    program configures logging).
    """
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.study.runner import run_study_config

    config = study if isinstance(study, StudyConfig) else StudyConfig.from_yaml(study)
    if output_dir is _UNSET:
        from llenergymeasure.config.user_config import setting

        output_dir = setting("output.results_dir")
    root = Path(output_dir) if output_dir is not None else None
    return run_study_config(config, output_dir=root, quiet=quiet)


def resume_study(
    study_dir: str | Path, *, study: str | Path | StudyConfig | None = None, quiet: bool = False
) -> StudyResult:
    """Continue an interrupted or partly failed study in its directory.

    The manifest holds the resolved configs, so the YAML is not needed. When ``study`` is
    given (or the manifest's source YAML still exists) and it expands to a different design
    hash, ``ConfigError`` is raised instead of mixing two designs in one directory.
    """
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.study.runner import resume_study_dir

    config = (
        study if isinstance(study, StudyConfig) or study is None else StudyConfig.from_yaml(study)
    )
    return resume_study_dir(study_dir, study=config, quiet=quiet)
