"""``--set key.path=value``: any experiment field from the command line.

Each value is read by the project's YAML reader (``config.yaml_reader.parse_yaml``), as if it
stood after ``key:`` in a config file: ``--set n=20`` is the integer 20,
``--set decoder.temperature=0.7`` a float, ``--set pytorch.torch_compile=true`` a boolean,
``--set 'dataset={hf: ./prompts, column: text}'`` a mapping and ``--set lora=null`` clears a
section. A field whose type is text gets the text as written (``--set model=1234`` is the string
"1234"). The key path is checked against the schema first, with the same "did you mean" as an
unknown key in a YAML file; values are then validated with the rest of the config, exactly as
YAML. A key path given twice is an error, as a key written twice in a YAML mapping is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from llenergymeasure.config.loading import (
    deep_merge,
    field_homes,
    submodels,
    unknown_key_message,
)
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.yaml_reader import parse_yaml
from llenergymeasure.exceptions import ConfigError

__all__ = ["SetOverrides", "parse_set_options"]

_FIELDS_HINT = "every field and its type: docs/reference/experiment-config.md"
_HINT = "write --set key.path=value, e.g. --set pytorch.batch_size=8 (llem run --help)"


@dataclass(frozen=True)
class SetOverrides:
    """The ``--set`` options: a nested mapping to merge over the config, and the dotted keys."""

    values: dict[str, Any]
    keys: tuple[str, ...]


def parse_set_options(items: Sequence[str]) -> SetOverrides:
    """Parse ``--set`` options into a nested mapping (``ConfigError`` naming the option)."""
    values: dict[str, Any] = {}
    keys: list[str] = []
    for item in items:
        key, value = _parse_one(item)
        if key in keys:
            raise ConfigError(
                f"--set {key} is given twice",
                hint="each key may be set once (as in a YAML mapping); keep one of them",
            )
        keys.append(key)
        nested: dict[str, Any] = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        values = deep_merge(values, nested)
    return SetOverrides(values=values, keys=tuple(keys))


def _parse_one(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key.path=value", hint=_HINT)
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: empty part in the key path {key!r}", hint=_HINT)
    parts = [p.strip() for p in parts]
    key = ".".join(parts)
    annotation = _annotation_at(parts, item)
    try:
        value = parse_yaml(text, source=f"--set {key}").data
    except ConfigError as exc:
        raise ConfigError(
            f"--set {key}: the value {text!r} is not valid YAML ({exc.message})",
            hint="values are YAML as after 'key:' in a config file; quote them for the shell, "
            "e.g. --set 'dataset={hf: org/name, split: test}'",
        ) from None
    if _wants_text(annotation, value):
        value = text.strip()
    return key, value


_FREE = object()  # below a free-form mapping (passthrough_kwargs): any key, YAML types


def _annotation_at(parts: list[str], item: str) -> Any:
    """The type annotation of the field at ``parts`` (``ConfigError`` for an unknown key)."""
    models: list[type[BaseModel]] = [ExperimentConfig]
    annotation: Any = None
    walked: list[str] = []
    for part in parts:
        if annotation is _FREE:
            continue
        if not models:
            raise ConfigError(
                f"--set {item}: '{'.'.join(walked)}' has no sub-fields",
                hint=f"set {'.'.join(walked)}=value itself",
            )
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:
            valid = sorted({f for m in models for f in m.model_fields})
            where = ".".join(walked)
            raise ConfigError(
                f"--set {item}: " + unknown_key_message(part, where, valid, field_homes()),
                hint=_FIELDS_HINT,
            )
        annotation = owner.model_fields[part].annotation
        walked.append(part)
        models = submodels(annotation)
        if not models and _is_mapping(annotation):
            annotation = _FREE
    return annotation


def _is_mapping(annotation: Any) -> bool:
    if get_origin(annotation) is dict or annotation is dict:
        return True
    return any(_is_mapping(arg) for arg in get_args(annotation))


def _scalar_types(annotation: Any) -> set[type]:
    """The plain types a field accepts (``str``, ``int``, ...; literals by their values' types)."""
    if annotation is None or annotation is _FREE:
        return set()
    if isinstance(annotation, type):
        return {annotation}
    if get_origin(annotation) is Literal:
        return {type(v) for v in get_args(annotation)}
    found: set[type] = set()
    for arg in get_args(annotation):
        found |= _scalar_types(arg)
    return found


def _wants_text(annotation: Any, value: Any) -> bool:
    """A number or boolean given to a field that takes text but not that type: keep the text
    (``--set model=1234`` names a model "1234")."""
    if value is None or isinstance(value, (str, dict, list)):
        return False
    accepted = _scalar_types(annotation)
    if str not in accepted:
        return False
    if isinstance(value, bool):
        return bool not in accepted
    if isinstance(value, int):
        return not accepted & {int, float}
    if isinstance(value, float):
        return float not in accepted
    return False
