"""The public library API: ``run_experiment`` and ``run_study``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.results.models import ExperimentResult


def _build_config(
    config: str | Path | ExperimentConfig | None, kwargs: dict[str, Any]
) -> ExperimentConfig:
    from llenergymeasure.config.loading import (
        apply_default_backend,
        is_study_mapping,
        key_lines,
        read_yaml_mapping,
        validate_experiment_dict,
    )
    from llenergymeasure.config.study import deep_merge

    if isinstance(config, ExperimentConfig):
        if not kwargs:
            return config
        data = deep_merge(config.model_dump(exclude_unset=True), kwargs)
        return validate_experiment_dict(data, source="run_experiment()")
    if config is None:
        if not kwargs:
            raise ConfigError("run_experiment() needs a config or keyword arguments (model=...)")
        return validate_experiment_dict(apply_default_backend(kwargs), source="run_experiment()")
    data, text = read_yaml_mapping(config)
    if is_study_mapping(data):
        raise ConfigError(f"{config} is a study; use llem.run_study()")
    return validate_experiment_dict(
        apply_default_backend(deep_merge(data, kwargs)), source=config, lines=key_lines(text)
    )


def measure(config: ExperimentConfig, *, progress: Any = None) -> Any:
    """Run one experiment in this process with the real components; returns a MeasuredExperiment."""
    from llenergymeasure.harness.orchestrator import (
        ExperimentOrchestrator,
        MeasurementSettings,
        default_components,
    )

    settings = MeasurementSettings.from_user_config()
    engine, energy, sensor = default_components(config, settings)
    orchestrator = ExperimentOrchestrator(
        engine=engine,
        energy_backend=energy,
        sensor=sensor,
        settings=settings,
        progress=progress or (lambda _msg: None),
    )
    try:
        return orchestrator.run(config)
    finally:
        if sensor is not None:
            sensor.close()


def run_experiment(
    config: str | Path | ExperimentConfig | None = None, **kwargs: Any
) -> ExperimentResult:
    """Measure one experiment and return its result; writes nothing to disk.

    ``config`` is a YAML path or an ``ExperimentConfig``; keyword arguments build or override
    fields (``run_experiment(model="builtin:tiny", dataset="synthetic", n=20)``).
    Save with ``result.to_json(path)``.
    """
    return measure(_build_config(config, kwargs)).result


def run_study(study: Any, *, output_dir: Any = None) -> Any:
    """Run a study (grid x cycles) with per-experiment isolation. Not available yet."""
    from llenergymeasure.exceptions import StudyError

    raise StudyError(
        "run_study is not available yet: the study runner has not landed",
        hint="run experiments one at a time with run_experiment()",
    )
