"""YAML loading and human-readable validation errors.

Files are read by ``config.yaml_reader`` (safe YAML, bounded regular files, no duplicate
keys). Every problem becomes a ``ConfigError`` that names the file,
the key path, its line where known, and — for unknown keys — the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from llenergymeasure.config.bounds import Bound, bound_of
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.models import (
    USER_INPUT,
    ExperimentConfig,
    HFDatasetConfig,
    SyntheticDatasetConfig,
)
from llenergymeasure.config.yaml_reader import ConfigLoader, node_lines, read_yaml_file
from llenergymeasure.config.yaml_reader import KeyPath as KeyPath  # the study module uses it
from llenergymeasure.exceptions import ConfigError


def read_yaml_mapping(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a config YAML file that must hold a mapping. Returns (data, text).

    Goes through ``config.yaml_reader``: a regular file of bounded size, no duplicate keys,
    ``1e-9`` read as a number; every problem is a ``ConfigError`` naming the file.
    """
    p = Path(path)
    document = read_yaml_file(p)
    data = document.data
    from llenergymeasure.files import register_input

    register_input(p)  # no write of this command may replace it
    if data is None:
        raise ConfigError(f"config file is empty: {p}", hint="see examples/experiment.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data, document.text


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    try:
        root = yaml.compose(text, Loader=ConfigLoader)
    except yaml.YAMLError:
        return {}
    return node_lines(root) if root is not None else {}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    if get_origin(annotation) is not None:
        return None
    return None


def submodels(annotation: Any) -> list[type[BaseModel]]:
    """Every model in ``annotation`` (each branch of a union), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(m for m in submodels(arg) if m not in found)
    return found


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model at ``loc`` (a raw pydantic location: union tags pick the dataset branch)."""
    current: type[BaseModel] | None = model
    previous: Any = None
    for part in loc:
        if current is None:
            return None
        if previous == "dataset" and part in _DATASET_BRANCHES:
            current, previous = _DATASET_BRANCHES[part], part
            continue
        field = current.model_fields.get(str(part))
        previous = part
        if field is None:
            continue  # other union tags and list indices
        current = _submodel(field.annotation)
    return current


def _bound_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Bound | None:
    """The ``Bound`` of the field at ``loc`` (through sections, lists and union tags)."""
    current: type[BaseModel] | None = model
    found: Bound | None = None
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            continue
        info = current.model_fields[part]
        found = bound_of(info.annotation, info.metadata)
        current = _submodel(info.annotation)
    return found


#: pydantic error types of a number outside its interval.
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _all_field_homes(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """field name -> dotted paths where it is valid (to say `batch_size` lives in pytorch:)."""
    homes: dict[str, list[str]] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        homes.setdefault(name, []).append(path)
        for sub in submodels(field.annotation):
            if sub is model:
                continue
            for k, v in _all_field_homes(sub, f"{path}.").items():
                homes.setdefault(k, [])
                homes[k].extend(p for p in v if p not in homes[k])
    return homes


def suggest_key(bad: str, valid: list[str]) -> str | None:
    """Closest valid key to a misspelt one, or None."""
    matches = difflib.get_close_matches(bad, valid, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    lowered = {v.lower(): v for v in valid}
    return lowered.get(bad.lower().replace("-", "_"))


_UNION_TAGS = {"name", "synthetic", "hf"}
#: The mapping branches of ``dataset`` by their union tag.
_DATASET_BRANCHES: dict[str, type[BaseModel]] = {
    "synthetic": SyntheticDatasetConfig,
    "hf": HFDatasetConfig,
}


#: How pydantic names the branch of a union in an error's location ("constrained-int", "str").
_BRANCH_PREFIXES = ("function-", "constrained-", "literal[", "list[", "dict[")
_BRANCH_NAMES = {"int", "float", "str", "bool", "none"}


def _is_branch(part: Any) -> bool:
    return isinstance(part, str) and (part in _BRANCH_NAMES or part.startswith(_BRANCH_PREFIXES))


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for i, part in enumerate(loc):
        if part in _UNION_TAGS and i > 0 and loc[i - 1] == "dataset":
            continue
        if _is_branch(part):
            continue
        out.append(part)
    return tuple(out)


def _relevant_errors(exc: ValidationError) -> list[Any]:
    """The errors to show: where a value failed every branch of a union (``int | str``) and one
    branch failed on a bound, only that branch's error (not "should be a valid string")."""
    errors = exc.errors(include_url=False)
    bounded = {
        _clean_loc(tuple(e["loc"]))
        for e in errors
        if e["type"] in _BOUND_ERRORS and any(_is_branch(p) for p in e["loc"])
    }
    return [
        e
        for e in errors
        if e["type"] in _BOUND_ERRORS or _clean_loc(tuple(e["loc"])) not in bounded
    ]


def unknown_key_message(
    bad: str,
    where: str,
    valid: list[str],
    homes: Mapping[str, list[str]],
    *,
    at: str = "",
) -> str:
    """ "unknown key 'x' in section (line n): did you mean 'y'?" (or where ``x`` belongs, or the
    valid keys); ``homes`` maps each field name to the dotted paths where it is valid."""
    msg = f"unknown key '{bad}' " + (f"in {where}" if where else "at the top level") + at
    guess = suggest_key(bad, valid)
    if guess and bad in homes:  # top-level n_warmup: close to 'warmup', valid elsewhere
        msg += f": did you mean '{guess}'? ('{bad}' belongs under {' or '.join(homes[bad])})"
    elif guess:
        msg += f": did you mean '{guess}'?"
    elif bad in homes:
        msg += f": '{bad}' belongs under {' or '.join(homes[bad])}"
    elif valid:
        msg += f". Valid keys: {', '.join(valid)}"
    return msg


def field_homes(model: type[BaseModel] = ExperimentConfig) -> dict[str, list[str]]:
    """Field name -> the dotted paths where it is valid in ``model``."""
    return _all_field_homes(model)


def describe_validation_error(
    exc: ValidationError,
    model: type[BaseModel] = ExperimentConfig,
    *,
    lines: dict[KeyPath, int] | None = None,
    prefix: KeyPath = (),
) -> list[str]:
    """One readable line per pydantic error, naming the key path, line and a hint."""
    messages: list[str] = []
    lines = lines or {}
    homes = _all_field_homes(model)
    for err in _relevant_errors(exc):
        loc = _clean_loc(tuple(err["loc"]))
        full = (*prefix, *loc)
        dotted = ".".join(str(p) for p in full)
        line = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in full))
        at = f" (line {line})" if line else ""
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, tuple(err["loc"])[:-1])
            valid = sorted(parent.model_fields) if parent is not None else []
            where = ".".join(str(p) for p in (*prefix, *loc[:-1]))
            bad = str(loc[-1]) if loc else "?"
            messages.append(unknown_key_message(bad, where, valid, homes, at=at))
            continue
        text = str(err["msg"])
        for lead in ("Value error, ", "Assertion failed, "):
            if text.startswith(lead):
                text = text[len(lead) :]
        got = ""
        if err["type"] not in ("value_error", "missing") and "input" in err:
            value = err["input"]
            if not isinstance(value, (dict, list)):
                got = f" (got {value!r})"
        if err["type"] == "missing":
            text = "required field is missing"
        if err["type"] in _BOUND_ERRORS:
            bound = _bound_at(model, loc)
            if bound is not None:
                got += f"; allowed {bound.explain()}"
        if err["type"] == "literal_error" and isinstance(err.get("input"), str):
            options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            guess = suggest_key(err["input"], options)
            if guess:
                got = f" (got {err['input']!r}; did you mean '{guess}'?)"
                messages.append(f"{dotted}{at}: {text}{got}" if full else f"{text}{got}")
                continue
        messages.append(f"{dotted}{at}: {text}{got}" if full else f"{text}{got}")
    return messages


def validation_config_error(
    exc: ValidationError,
    *,
    source: str | Path | None,
    model: type[BaseModel] = ExperimentConfig,
    lines: dict[KeyPath, int] | None = None,
    prefix: KeyPath = (),
) -> ConfigError:
    """Turn a pydantic ValidationError into a ConfigError listing every problem."""
    problems = describe_validation_error(exc, model, lines=lines, prefix=prefix)
    where = f"{source}: " if source else ""
    hint = None
    if any(e["type"] in _BOUND_ERRORS for e in exc.errors(include_url=False)):
        hint = (
            "set a value inside the allowed range (why each limit is what it is: "
            "docs/reference/limits.md)"
        )
    if len(problems) == 1:
        return ConfigError(f"{where}{problems[0]}", hint=hint)
    body = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"{where}{len(problems)} problems in the config:\n{body}", hint=hint)


def validate_experiment_dict(
    data: dict[str, Any],
    *,
    source: str | Path | None = None,
    lines: dict[KeyPath, int] | None = None,
) -> ExperimentConfig:
    """Validate a plain mapping as an ExperimentConfig, raising ConfigError on problems."""
    try:
        return ExperimentConfig.model_validate(data, context=USER_INPUT)
    except ValidationError as exc:
        raise validation_config_error(exc, source=source, lines=lines) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins; inputs are not mutated.

    A ``dataset`` mapping of the other kind (HF over synthetic, or the reverse) replaces the
    base's instead of mixing into it: their fields are disjoint, so a mix is never valid.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and not (key == "dataset" and _other_dataset_kind(out[key], value))
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dataset_mapping_kind(value: dict[str, Any]) -> str | None:
    if any(k in HFDatasetConfig.model_fields for k in value):
        return "hf"
    if any(k in SyntheticDatasetConfig.model_fields for k in value):
        return "synthetic"
    return None


def _other_dataset_kind(base: dict[str, Any], override: dict[str, Any]) -> bool:
    kinds = (_dataset_mapping_kind(base), _dataset_mapping_kind(override))
    return None not in kinds and kinds[0] != kinds[1]


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``overrides`` deep-merged over it, the overrides winning for the pairs of
    fields that are one quantity in a synthetic dataset:

    - ``n`` over a smaller ``dataset.n`` raises it to ``n`` (and ``dataset.n`` over a larger
      ``n`` lowers ``n``);
    - ``max_new_tokens`` sets ``dataset.output_len`` (and ``dataset.output_len`` sets
      ``max_new_tokens``).

    Without this, ``-n 50`` over a YAML's ``dataset: {n: 20}`` would be refused as a
    disagreement that the command line was meant to settle.
    """
    merged = deep_merge(dict(data), dict(overrides))
    dataset = merged.get("dataset")
    if not isinstance(dataset, dict) or "hf" in dataset:
        return merged
    given = overrides.get("dataset")
    given = given if isinstance(given, Mapping) else {}
    if "n" in overrides and "n" not in given and _smaller(dataset.get("n"), overrides["n"]):
        dataset["n"] = overrides["n"]
    if "n" in given and "n" not in overrides and _smaller(given["n"], merged.get("n")):
        merged["n"] = given["n"]
    if "max_new_tokens" in overrides and "output_len" not in given and "output_len" in dataset:
        dataset["output_len"] = overrides["max_new_tokens"]
    if "output_len" in given and "max_new_tokens" not in overrides and "max_new_tokens" in merged:
        merged["max_new_tokens"] = given["output_len"]
    return merged


def _smaller(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b))
    return numbers and a < b


def apply_default_backend(data: dict[str, Any]) -> dict[str, Any]:
    """Fill ``backend`` when omitted: the one installed engine, else pytorch."""
    if "backend" in data:
        return data
    from llenergymeasure.config.installed import default_backend

    return {**data, "backend": default_backend()}


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment mapping with ``overrides`` applied; the backend filled in when absent.

    Overrides win key by key (nested sections merge). When they switch the backend, the YAML's
    sections of the other engines are dropped (they would be invalid for the new backend),
    except sections the overrides set themselves.
    """
    merged = apply_overrides(dict(data), overrides)
    backend = overrides.get("backend")
    if backend is not None and backend != data.get("backend"):
        own = ENGINES[backend].config_section if backend in ENGINES else None
        for spec in ENGINES.values():
            section = spec.config_section
            if section is not None and section != own and section not in overrides:
                merged.pop(section, None)
    return apply_default_backend(merged)


def build_experiment_config(
    source: str | Path | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_label: str = "overrides",
    document: tuple[dict[str, Any], str] | None = None,
) -> ExperimentConfig:
    """The one way to build an ``ExperimentConfig`` from a YAML file and/or overrides.

    ``source`` is a YAML path, an existing config, or None (the overrides are the whole config).
    ``overrides`` is a nested mapping (``{"pytorch": {"batch_size": 4}}``) merged over the source
    by ``merge_overrides``. Errors name the YAML file with its line numbers (lines of keys the
    overrides replaced are not reported), or ``overrides_label`` when there is no file. A study
    YAML raises ``ConfigError``. ``document`` is the (data, text) of ``source`` when the caller
    has read it already (the file is then not read again).
    """
    extra = dict(overrides or {})
    if isinstance(source, ExperimentConfig):
        if not extra:
            return source
        data = source.model_dump(exclude_unset=True)
        data.setdefault("backend", source.backend)
        if source.passthrough_kwargs is not None:
            data["passthrough_kwargs"] = source.passthrough_kwargs  # dumps redact credentials
        return validate_experiment_dict(merge_overrides(data, extra), source=overrides_label)
    if source is None:
        return validate_experiment_dict(merge_overrides({}, extra), source=overrides_label)
    data, text = document if document is not None else read_yaml_mapping(source)
    if is_study_mapping(data):
        raise ConfigError(
            f"{source} is a study (it has sweep:, experiments: or a list of backends), "
            "not a single experiment",
            hint="load it with StudyConfig.from_yaml / llem.run_study",
        )
    lines = {k: v for k, v in key_lines(text).items() if not _overridden(k, extra)}
    return validate_experiment_dict(merge_overrides(data, extra), source=source, lines=lines)


def _overridden(path: KeyPath, overrides: Mapping[str, Any]) -> bool:
    """True when ``overrides`` sets the key at ``path`` (so its YAML line is not the source)."""
    node: Any = overrides
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Load one experiment YAML file into an ExperimentConfig."""
    return build_experiment_config(path)


def is_study_mapping(data: dict[str, Any]) -> bool:
    """A file is a study if it has sweep:, experiments:, or a list of backends."""
    return "sweep" in data or "experiments" in data or isinstance(data.get("backend"), list)
