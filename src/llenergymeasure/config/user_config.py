"""Machine-level user configuration and its environment-variable overrides.

File: ``~/.config/llenergymeasure/config.yaml`` (platformdirs), or the file named by
``LLEM_CONFIG``. A missing file means defaults; an invalid file is a ``ConfigError`` naming it.
Precedence: built-in default < user config file < environment variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator

from llenergymeasure.config import bounds as B
from llenergymeasure.config.bounds import bound_of
from llenergymeasure.config.catalogue import engine_names
from llenergymeasure.config.loading import validation_config_error
from llenergymeasure.config.strict import STRICT_CONFIG
from llenergymeasure.config.yaml_reader import read_yaml_file
from llenergymeasure.exceptions import ConfigError

_FORBID = STRICT_CONFIG
# An image reference as docker/podman take it: [host[:port]/]name[:tag][@digest]. It cannot
# start with "-" (it would become a `docker run` option) or hold spaces/control characters.
_IMAGE_RE = r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}"
_RUNNER_RE = re.compile(rf"local|slurm|docker:{_IMAGE_RE}")


class OutputSection(BaseModel):
    model_config = _FORBID
    results_dir: str = Field("./results", description="Directory results are written under.")
    log_file: str | None = Field(
        None,
        description=(
            "File every `llem run` appends its log to (llem's messages from DEBUG up, redacted);"
            " `--log-file` wins. None = no log file."
        ),
    )


EnergyBackendName = Literal["auto", "nvml", "zeus", "codecarbon", "none"]


class MeasurementSection(BaseModel):
    model_config = _FORBID
    energy_backend: EnergyBackendName = Field(
        "auto",
        description=(
            "auto (Zeus if installed and a GPU is present, else NVML if a GPU is present, else "
            "CodeCarbon if installed, else none), nvml, zeus, codecarbon or none."
        ),
    )
    carbon_intensity_gco2_kwh: Annotated[float, B.CARBON_INTENSITY] | None = Field(
        None, description="Grid carbon intensity, gCO2 per kWh. None = CO2 not computed."
    )
    datacenter_pue: Annotated[float, B.PUE] = Field(
        1.0, description="Power usage effectiveness multiplied into CO2."
    )
    datacenter_location: str | None = Field(
        None, description="ISO-3166-1 country code, recorded with the carbon estimate."
    )
    sampling_interval_ms: Annotated[int, B.SAMPLING_INTERVAL_MS] = Field(
        100,
        description="Power/energy sampling interval, milliseconds.",
    )


class ExecutionSection(BaseModel):
    model_config = _FORBID
    config_gap_seconds: Annotated[float, B.GAP_SECONDS] = Field(
        60.0, description="Default idle seconds between a study's runs."
    )
    cycle_gap_seconds: Annotated[float, B.GAP_SECONDS] = Field(
        300.0, description="Default idle seconds between a study's cycles."
    )
    # None: each engine's own default, on only where reuse is proven equivalent on hardware
    # (config/catalogue.py, EngineSpec.reuse_proven)
    reuse_engine: bool | None = Field(
        None,
        description=(
            "Default of a study's execution.reuse_engine: runs with equal engine-load fields share"
            " one loaded engine. None = each engine's default: on where the engine catalogue "
            "records reuse as proven equivalent on hardware (vLLM), off elsewhere (PyTorch, "
            "TensorRT-LLM)."
        ),
    )
    # Bounded work: a study is refused before expansion beyond these (raise them deliberately).
    max_grid_points: Annotated[int, B.GRID_POINTS] = Field(
        10_000,
        description=(
            "Most experiments one study may expand to (sweep points x backends + experiments); "
            "a larger study is refused before it expands."
        ),
    )
    max_cycles: Annotated[int, B.CYCLES] = Field(
        1_000,
        description="Most cycles (execution.n_cycles, --cycles) one study may run.",
    )


class SlurmSection(BaseModel):
    """How the ``slurm`` runner submits jobs (one job per study run)."""

    model_config = _FORBID
    partition: str | None = Field(
        None, description="sbatch --partition. None = the cluster's default."
    )
    account: str | None = Field(None, description="sbatch --account. None = the cluster's default.")
    qos: str | None = Field(None, description="sbatch --qos. None = the cluster's default.")
    time_limit: str | None = Field(
        None,
        description=(
            'sbatch --time (e.g. "02:00:00"); the study\'s experiment_timeout_seconds wins when '
            "set."
        ),
    )
    gpus_per_run: Annotated[int, B.SLURM_GPUS] = Field(
        1, description="GPUs per job (--gres=gpu:N); 0 for CPU-only clusters."
    )
    array_limit: Annotated[int, B.JOBS_AT_ONCE] | None = Field(
        None,
        description="Most jobs of the array at once (--array=0-N%limit). None = no limit.",
    )
    poll_interval_seconds: Annotated[float, B.POLL_SECONDS] = Field(
        10.0, description="Seconds between polls of squeue/sacct."
    )
    extra_args: list[str] = Field(default_factory=list, description="Appended to sbatch's options.")


class UserConfig(BaseModel):
    """Machine facts and defaults; never part of an experiment's identity."""

    model_config = _FORBID

    output: OutputSection = Field(default_factory=OutputSection, description="Where results go.")
    runners: dict[str, str] = Field(
        default_factory=dict, description="Runner per backend: local, slurm or docker:<image>."
    )
    measurement: MeasurementSection = Field(
        default_factory=MeasurementSection,
        description="Energy backend, sampling and carbon settings.",
    )
    execution: ExecutionSection = Field(
        default_factory=ExecutionSection, description="Defaults of a study's execution block."
    )
    slurm: SlurmSection = Field(
        default_factory=SlurmSection, description="How the slurm runner submits jobs."
    )

    @field_validator("runners")
    @classmethod
    def _check_runners(cls, value: dict[str, str]) -> dict[str, str]:
        for backend, runner in value.items():
            if backend not in engine_names():
                raise ValueError(
                    f"runners: unknown backend {backend!r}; valid: {list(engine_names())}"
                )
            if not _RUNNER_RE.fullmatch(runner):
                raise ValueError(
                    f"runners.{backend}: {runner!r} is not a runner; use 'local', "
                    "'docker:<image>' or 'slurm'"
                )
        return value


def valid_image_reference(image: str) -> bool:
    """Whether ``image`` is a container image reference (no leading dash, no whitespace)."""
    return bool(re.fullmatch(_IMAGE_RE, image))


def valid_runner(value: str) -> bool:
    """``local``, ``docker:<image>`` (a valid image reference) or ``slurm``."""
    return bool(_RUNNER_RE.fullmatch(value))


def user_config_path() -> Path:
    """The user config file in effect: ``$LLEM_CONFIG`` or the platform config dir."""
    env = os.environ.get("LLEM_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("llenergymeasure")) / "config.yaml"


def _read_user_config(path: Path | None) -> tuple[Path, dict[str, Any], UserConfig]:
    """The user config file's path, its raw mapping and the validated config, read once.

    A missing file (or an empty one) means defaults; ``LLEM_CONFIG`` naming a missing file is
    an error. The file goes through the same reader as every config YAML (a regular file of
    bounded size, no duplicate keys).
    """
    p = path or user_config_path()
    if not p.exists() and not p.is_symlink():
        if path is None and os.environ.get("LLEM_CONFIG"):
            raise ConfigError(f"LLEM_CONFIG points to a file that does not exist: {p}")
        return p, {}, UserConfig()
    document = read_yaml_file(p)
    if document.data is None:  # an empty file (or only comments)
        return p, {}, UserConfig()
    if not isinstance(document.data, dict):
        raise ConfigError(
            f"{p}: top level must be a mapping of keys to values, got "
            f"{type(document.data).__name__}"
        )
    try:
        return p, document.data, UserConfig.model_validate(document.data)
    except ValidationError as exc:
        raise validation_config_error(
            exc, source=p, model=UserConfig, lines=document.lines
        ) from None


def load_user_config(path: Path | None = None) -> UserConfig:
    """Read the user config file (defaults when it does not exist)."""
    return _read_user_config(path)[2]


class Setting(BaseModel):
    """An effective setting and where its value came from."""

    value: Any
    source: str  # "default", "user config (<path>)" or "env LLEM_..."


_ENV_ENERGY_BACKEND = "LLEM_ENERGY_BACKEND"

_ENV_FLOATS = {
    "measurement.carbon_intensity_gco2_kwh": "LLEM_CARBON_INTENSITY",
    "measurement.datacenter_pue": "LLEM_DATACENTER_PUE",
}


def effective_settings(path: Path | None = None) -> dict[str, Setting]:
    """Every user-level setting with its effective value and source (env > file > default).

    Environment overrides: ``LLEM_CARBON_INTENSITY``, ``LLEM_DATACENTER_PUE``,
    ``LLEM_ENERGY_BACKEND``, ``LLEM_RUNNER_<BACKEND>`` and ``LLEM_NO_PROMPT``. This is the only
    place that reads them, so ``llem config`` shows what a run will use.
    """
    p, raw, config = _read_user_config(path)
    out: dict[str, Setting] = {}
    file_src = f"user config ({p})"
    for section in ("output", "measurement", "execution"):
        model = getattr(config, section)
        for field in type(model).model_fields:
            key = f"{section}.{field}"
            set_in_file = isinstance(raw.get(section), dict) and field in raw[section]
            out[key] = Setting(
                value=getattr(model, field), source=file_src if set_in_file else "default"
            )
    for key, env in _ENV_FLOATS.items():
        text = os.environ.get(env)
        if text:
            out[key] = Setting(value=_env_number(env, text, key, config), source=f"env {env}")
    choice = os.environ.get(_ENV_ENERGY_BACKEND)
    if choice:
        valid = get_args(EnergyBackendName)
        if choice not in valid:
            raise ConfigError(
                f"environment variable {_ENV_ENERGY_BACKEND}={choice!r} is not an energy backend",
                hint=f"use one of: {', '.join(valid)}",
            )
        out["measurement.energy_backend"] = Setting(
            value=choice, source=f"env {_ENV_ENERGY_BACKEND}"
        )
    for backend in engine_names():
        env = f"LLEM_RUNNER_{backend.upper()}"
        if os.environ.get(env):
            runner = os.environ[env]
            if not _RUNNER_RE.fullmatch(runner):
                raise ConfigError(
                    f"environment variable {env}={runner!r} is not a runner",
                    hint="use 'local', 'docker:<image>' or 'slurm'",
                )
            out[f"runners.{backend}"] = Setting(value=runner, source=f"env {env}")
        elif backend in config.runners:
            out[f"runners.{backend}"] = Setting(value=config.runners[backend], source=file_src)
        else:
            out[f"runners.{backend}"] = Setting(value="local", source="default")
    no_prompt = os.environ.get("LLEM_NO_PROMPT", "")
    out["no_prompt"] = Setting(
        value=no_prompt.lower() in ("1", "true", "yes"),
        source="env LLEM_NO_PROMPT" if no_prompt else "default",
    )
    return out


def _env_number(env: str, text: str, key: str, config: UserConfig) -> float:
    """The number in environment variable ``env``, validated by the field ``key`` it overrides
    (the same bounds as in the file)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(
            f"environment variable {env}={text!r} is not a number", hint=f"unset {env} or fix it"
        ) from None
    section, field = key.split(".")
    current = getattr(config, section)
    try:
        validated = type(current).model_validate({**current.model_dump(), field: value})
    except ValidationError as exc:
        info = type(current).model_fields[field]
        bound = bound_of(info.annotation, info.metadata)
        allowed = f"; allowed {bound.explain()}" if bound is not None else ""
        problem = exc.errors(include_url=False)[0]["msg"]
        raise ConfigError(
            f"environment variable {env}={text!r} is out of range for {key}: {problem}{allowed}",
            hint=f"unset {env} or give a value in range",
        ) from None
    return float(getattr(validated, field))


def setting(key: str, path: Path | None = None) -> Any:
    """The effective value of one setting, e.g. ``setting("measurement.datacenter_pue")``."""
    return effective_settings(path)[key].value
