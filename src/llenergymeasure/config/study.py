"""Study configuration and grid expansion.

A study YAML holds fixed experiment fields, a ``sweep:`` grid and/or an explicit
``experiments:`` list, and an ``execution:`` block. Expansion resolves it into a list of
valid ``ExperimentConfig`` objects plus the grid points that were skipped, each with its reason.
Precedence: built-in defaults < ``base:`` file < inline fields < sweep < experiments entry.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from llenergymeasure.config import bounds as B
from llenergymeasure.config.catalogue import ENGINES, engine_names
from llenergymeasure.config.hashing import measurement_config_hash, study_design_hash
from llenergymeasure.config.loading import (
    KeyPath,
    apply_overrides,
    deep_merge,
    describe_validation_error,
    is_study_mapping,
    key_lines,
    read_yaml_mapping,
    suggest_key,
    validation_config_error,
)
from llenergymeasure.config.models import USER_INPUT, ExperimentConfig
from llenergymeasure.config.strict import STRICT_CONFIG
from llenergymeasure.exceptions import ConfigError

STUDY_KEYS = ("name", "base", "sweep", "experiments", "execution")


class ExecutionConfig(BaseModel):
    """How a study runs; excluded from the study design hash."""

    model_config = STRICT_CONFIG

    n_cycles: Annotated[int, B.CYCLES] = Field(
        1,
        description="Times every config is run (the CLI uses 3 when the YAML does not set it).",
    )
    cycle_order: Literal["sequential", "interleaved", "shuffled"] = Field(
        "sequential",
        description=(
            "sequential (each config's cycles together), interleaved (all configs per cycle) or "
            "shuffled (seeded order per cycle)."
        ),
    )
    config_gap_seconds: Annotated[float, B.GAP_SECONDS] | None = Field(
        None, description="Idle seconds between runs. None = the user config's value."
    )
    cycle_gap_seconds: Annotated[float, B.GAP_SECONDS] | None = Field(
        None, description="Idle seconds between cycles. None = the user config's value."
    )
    shuffle_seed: Annotated[int, B.SEED] = Field(
        42, description="Seed of the shuffled cycle order."
    )
    experiment_timeout_seconds: Annotated[float, B.RUN_TIMEOUT_SECONDS] | None = Field(
        None,
        description="Seconds after which a run is stopped and recorded as failed. None = no limit.",
    )
    # "per_gpu": independent runs at once, one per visible GPU (see study.parallel)
    parallel: Literal["none", "per_gpu"] = Field(
        "none",
        description=(
            "none, or per_gpu: independent runs at once, one per visible GPU (throughput of a "
            "study, not careful comparisons)."
        ),
    )
    # runs whose engine-load fields are equal share one loaded engine (one long-lived worker
    # process per engine group); None -> user config execution.reuse_engine, and where that is
    # None too, each engine's default (study.planning.resolve_engine_reuse)
    reuse_engine: bool | None = Field(
        None,
        description=(
            "True: runs with equal engine-load fields share one loaded engine (one process per "
            "engine group); False: a fresh process per run. None = the user config's "
            "execution.reuse_engine, else each engine's default: on where reuse is proven "
            "equivalent on hardware (vLLM), off elsewhere (PyTorch, TensorRT-LLM); a study "
            "mixing engines gets each engine's own default."
        ),
    )


class SkippedExperiment(BaseModel):
    """A grid point that failed validation: what it was and why it was skipped."""

    model_config = STRICT_CONFIG

    source: str = Field(description='Where the point came from: "sweep" or "experiments[i]".')
    overrides: dict[str, Any] = Field(description="The point's values that differ from base.")
    reason: str = Field(description="Why it was skipped (the validation error, or a duplicate).")


class StudyConfig(BaseModel):
    """A resolved study: valid experiments, skipped points and how to execute them."""

    model_config = STRICT_CONFIG

    name: str = Field(description="Study name (the result directory's prefix).")
    experiments: list[ExperimentConfig] = Field(
        description="The valid experiments the study runs, in design order."
    )
    skipped: list[SkippedExperiment] = Field(
        default_factory=list, description="Grid points that were not run, with the reason."
    )
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="How the study runs."
    )
    study_design_hash: str = Field(
        description="Hash of the experiments (not of execution): equal designs have equal hashes."
    )
    source_path: str | None = Field(None, description="The study YAML it came from, if any.")

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> StudyConfig:
        """Load and expand a study YAML (see ``load_study``)."""
        return load_study(path, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> StudyConfig:
        """Expand a study mapping (same grammar as the YAML)."""
        return expand_study(data, **kwargs)

    @classmethod
    def of_one(cls, config: ExperimentConfig, *, name: str | None = None) -> StudyConfig:
        """A study of a single experiment (how ``run_experiment`` goes through the runner)."""
        return cls(
            name=name or _default_name(),
            experiments=[config],
            study_design_hash=study_design_hash([config]),
        )


def _default_name() -> str:
    return f"study_{datetime.now().strftime('%Y-%m-%dT%H-%M-%S')}"


def dotted_to_nested(path: str, value: Any) -> dict[str, Any]:
    """``"decoder.temperature", 0.7`` -> ``{"decoder": {"temperature": 0.7}}``."""
    parts = path.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _check_key_path(path: str, *, where: str) -> None:
    """Fail fast (not skip) when a sweep/override key names no config field (a ``dataset.``
    key may name a field of any dataset mapping: synthetic or HF)."""
    from llenergymeasure.config.loading import submodels

    models: list[type[BaseModel]] = [ExperimentConfig]
    walked: list[str] = []
    for part in path.split("."):
        if not models:
            raise ConfigError(f"{where}: '{'.'.join(walked)}' has no sub-fields (key {path!r})")
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:
            valid = sorted({f for m in models for f in m.model_fields})
            guess = suggest_key(part, valid)
            scope = ".".join(walked) or "the experiment config"
            msg = f"{where}: unknown key {path!r} ('{part}' is not a field of {scope})"
            raise ConfigError(msg, hint=f"did you mean '{guess}'?" if guess else None)
        walked.append(part)
        models = submodels(owner.model_fields[part].annotation)


def _drop_other_sections(data: dict[str, Any], backend: str) -> dict[str, Any]:
    own = ENGINES[backend].config_section if backend in ENGINES else None
    sections = {spec.config_section for spec in ENGINES.values() if spec.config_section}
    return {k: v for k, v in data.items() if k not in sections or k == own}


def _as_values(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        return [values]  # a scalar sweeps over one value
    if not values:
        raise ConfigError(
            f"sweep: key {key!r} has an empty list", hint="give at least one value or remove it"
        )
    return values


def check_study_bounds(grid_points: int, n_cycles: int, *, where: str = "study") -> None:
    """``ConfigError`` when a study is larger than the user config's limits
    (``execution.max_grid_points``, ``execution.max_cycles``); checked before anything is
    expanded, planned or created, so a huge sweep fails fast instead of exhausting memory."""
    from llenergymeasure.config.user_config import setting

    max_points = int(setting("execution.max_grid_points"))
    max_cycles = int(setting("execution.max_cycles"))
    if grid_points > max_points:
        raise ConfigError(
            f"{where}: the sweep expands to {grid_points:,} experiments, more than the limit of "
            f"{max_points:,}",
            hint="sweep fewer values, or raise execution.max_grid_points in the user config "
            "(llem config shows where it is)",
        )
    if n_cycles > max_cycles:
        raise ConfigError(
            f"{where}: n_cycles={n_cycles:,} is more than the limit of {max_cycles:,}",
            hint="use fewer cycles, or raise execution.max_cycles in the user config",
        )


#: A grid point to validate: where it came from, what it sets (shown when skipped), the merged
#: experiment mapping.
Candidate = tuple[str, dict[str, Any], dict[str, Any]]


def expand_study(
    data: dict[str, Any],
    *,
    source: str | Path | None = None,
    base_dir: Path | None = None,
    lines: dict[KeyPath, int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Resolve a study mapping into valid experiments and skipped points.

    ``overrides`` (nested mapping, e.g. from CLI flags) is applied last to every point.
    """
    where = str(source) if source else "study"
    _check_top_level_keys(data, where, lines)

    name = data.get("name") or _default_name()
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string, got {name!r}")

    try:
        execution = ExecutionConfig.model_validate(data.get("execution") or {})
    except ValidationError as exc:
        raise validation_config_error(
            exc, source=source, model=ExecutionConfig, lines=lines, prefix=("execution",)
        ) from None

    fixed: dict[str, Any] = {}
    if data.get("base") is not None:
        fixed = _load_base(data["base"], base_dir=base_dir, where=where)
    inline = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    fixed = deep_merge(fixed, inline)

    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}: sweep: must be a mapping of key -> list of values")
    experiments = data.get("experiments") or []
    if not isinstance(experiments, list):
        raise ConfigError(f"{where}: experiments: must be a list of mappings")

    universal, scoped = _sweep_dimensions(sweep, where)
    backends = _resolve_backends(fixed.get("backend"), scoped, experiments, where=where)
    for b in scoped:
        if b not in backends:
            raise ConfigError(
                f"{where}: sweep has {b}.* keys but backend {b!r} is not in backend: {backends}",
                hint=f"add {b} to backend:, or remove the {b}.* sweep keys",
            )
    fixed.pop("backend", None)

    grid_points = len(experiments)
    if sweep or not experiments:
        for backend in backends:
            grid_points += math.prod(
                len(v) for v in {**universal, **scoped.get(backend, {})}.values()
            )
    check_study_bounds(grid_points, execution.n_cycles, where=where)

    candidates: list[Candidate] = []
    if sweep or not experiments:
        candidates += _sweep_candidates(fixed, backends, universal, scoped)
    candidates += _experiment_candidates(experiments, fixed, backends, where)
    valid, skipped = _validate_candidates(candidates, overrides)
    if not valid:
        reasons = "\n".join(f"  - {s.source} {s.overrides}: {s.reason}" for s in skipped[:10])
        more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        raise ConfigError(
            f"{where}: every experiment of the study is invalid ({len(skipped)} skipped):\n"
            f"{reasons}{more}"
        )

    return StudyConfig(
        name=name,
        experiments=valid,
        skipped=skipped,
        execution=execution,
        study_design_hash=study_design_hash(valid),
        source_path=str(source) if source else None,
    )


def _check_top_level_keys(
    data: dict[str, Any], where: str, lines: dict[KeyPath, int] | None
) -> None:
    """``ConfigError`` for a top-level key that is neither a study key nor an experiment field."""
    unknown = [k for k in data if k not in STUDY_KEYS and k not in ExperimentConfig.model_fields]
    for key in unknown:
        guess = suggest_key(key, [*STUDY_KEYS, *ExperimentConfig.model_fields])
        line = (lines or {}).get((key,))
        at = f" (line {line})" if line else ""
        raise ConfigError(
            f"{where}: unknown key '{key}' at the top level{at}",
            hint=f"did you mean '{guess}'?" if guess else "see examples/study.yaml",
        )


def _sweep_dimensions(
    sweep: dict[str, Any], where: str
) -> tuple[dict[str, list[Any]], dict[str, dict[str, list[Any]]]]:
    """The sweep's keys and values: those of every backend, and ``<engine>.*`` keys by engine."""
    universal: dict[str, list[Any]] = {}
    scoped: dict[str, dict[str, list[Any]]] = {}
    for key, values in sweep.items():
        key = str(key)
        head, _, rest = key.partition(".")
        if head in engine_names() and rest:
            _check_key_path(key, where=f"{where}: sweep")
            scoped.setdefault(head, {})[key] = _as_values(key, values)
        else:
            if key == "backend":
                raise ConfigError(
                    f"{where}: sweep over backend is written as a top-level list",
                    hint="backend: [pytorch, vllm]",
                )
            _check_key_path(key, where=f"{where}: sweep")
            universal[key] = _as_values(key, values)
    return universal, scoped


def _sweep_candidates(
    fixed: dict[str, Any],
    backends: list[str],
    universal: dict[str, list[Any]],
    scoped: dict[str, dict[str, list[Any]]],
) -> list[Candidate]:
    """Every point of the sweep's grid, for each backend."""
    candidates: list[Candidate] = []
    for backend in backends:
        dims = {**universal, **scoped.get(backend, {})}
        keys = list(dims)
        for combo in itertools.product(*(dims[k] for k in keys)):
            point = dict(zip(keys, combo, strict=True))
            merged = deep_merge(_drop_other_sections(fixed, backend), {"backend": backend})
            for k, v in point.items():
                merged = deep_merge(merged, dotted_to_nested(k, v))
            candidates.append(("sweep", {"backend": backend, **point}, merged))
    return candidates


def _experiment_candidates(
    experiments: list[Any], fixed: dict[str, Any], backends: list[str], where: str
) -> list[Candidate]:
    """The entries of ``experiments:``, each merged over the study's fixed values."""
    candidates: list[Candidate] = []
    for i, entry in enumerate(experiments):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: experiments[{i}] must be a mapping, got {entry!r}")
        entry_backend = entry.get("backend")
        if entry_backend is None:
            if len(backends) != 1:
                raise ConfigError(
                    f"{where}: experiments[{i}] does not set backend and the study has "
                    f"several ({backends})",
                    hint="add backend: to this entry",
                )
            entry_backend = backends[0]
        merged = deep_merge(
            _drop_other_sections(fixed, str(entry_backend)), {"backend": entry_backend}
        )
        merged = deep_merge(merged, entry)
        candidates.append((f"experiments[{i}]", entry, merged))
    return candidates


def _validate_candidates(
    candidates: list[Candidate], overrides: dict[str, Any] | None
) -> tuple[list[ExperimentConfig], list[SkippedExperiment]]:
    """The valid, distinct experiments, and the points skipped (invalid or duplicates)."""
    valid: list[ExperimentConfig] = []
    skipped: list[SkippedExperiment] = []
    seen: dict[str, str] = {}
    for origin, shown, merged in candidates:
        if overrides:
            merged = apply_overrides(merged, _overrides_for(overrides, str(merged.get("backend"))))
        try:
            config = ExperimentConfig.model_validate(merged, context=USER_INPUT)
        except ValidationError as exc:
            reason = "; ".join(describe_validation_error(exc))
            skipped.append(SkippedExperiment(source=origin, overrides=shown, reason=reason))
            continue
        h = measurement_config_hash(config)
        if h in seen:
            skipped.append(
                SkippedExperiment(
                    source=origin, overrides=shown, reason=f"duplicate of {seen[h]} ({h})"
                )
            )
            continue
        seen[h] = origin
        valid.append(config)
    return valid, skipped


def _overrides_for(overrides: dict[str, Any], backend: str) -> dict[str, Any]:
    """CLI overrides minus other engines' sections (``--batch-size`` sets every engine's
    concurrency field; each point keeps its own engine's)."""
    return _drop_other_sections(overrides, backend)


def _resolve_backends(
    value: Any,
    scoped: dict[str, dict[str, list[Any]]],
    experiments: list[Any],
    *,
    where: str,
) -> list[str]:
    if value is None:
        if len(scoped) == 1:
            return list(scoped)
        if len(scoped) > 1:
            raise ConfigError(
                f"{where}: backend: is not set and the sweep has keys for several backends "
                f"({', '.join(sorted(scoped))}), so it is ambiguous",
                hint=f"set backend: [{', '.join(sorted(scoped))}]",
            )
        if experiments and all(isinstance(e, dict) and "backend" in e for e in experiments):
            return sorted({str(e["backend"]) for e in experiments}, key=_backend_order)
        from llenergymeasure.config.installed import default_backend

        return [default_backend()]
    backends = value if isinstance(value, list) else [value]
    if not backends:
        raise ConfigError(f"{where}: backend: is an empty list")
    for b in backends:
        if b not in engine_names():
            guess = suggest_key(str(b), list(engine_names()))
            raise ConfigError(
                f"{where}: unknown backend {b!r}; valid: {', '.join(engine_names())}",
                hint=f"did you mean '{guess}'?" if guess else None,
            )
    if len(set(backends)) != len(backends):
        raise ConfigError(f"{where}: backend: lists a backend twice: {backends}")
    return [str(b) for b in backends]


def _backend_order(b: str) -> int:
    return engine_names().index(b) if b in engine_names() else len(engine_names())


def _load_base(base: Any, *, base_dir: Path | None, where: str) -> dict[str, Any]:
    if not isinstance(base, str):
        raise ConfigError(f"{where}: base: must be a path to an experiment YAML")
    path = Path(base)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ConfigError(
            f"{where}: base: file not found: {path}",
            hint="base: is resolved relative to the study file",
        )
    data, _ = read_yaml_mapping(path)
    if is_study_mapping(data):
        raise ConfigError(f"{where}: base: {path} is itself a study; it must be one experiment")
    return data


def load_study(path: str | Path, *, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Load a study YAML file and expand it."""
    data, text = read_yaml_mapping(path)
    p = Path(path)
    return expand_study(
        data, source=p, base_dir=p.parent, lines=key_lines(text), overrides=overrides
    )
