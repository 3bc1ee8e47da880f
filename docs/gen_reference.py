"""Write the field reference pages (``docs/reference/*.md``) from the pydantic models, and the
list of ``passthrough_kwargs`` keys each engine accepts into ``docs/guides/engines.md``.

Every field of the configuration and result models, with its type, default and description,
comes from the code: run ``python docs/gen_reference.py`` after changing a model or an engine's
passthrough keys. ``tests/unit/test_field_reference.py`` fails when a field has no description
or when a committed page differs from what this script generates;
``tests/unit/test_passthrough_reference.py`` when the engines guide's list does.
"""

from __future__ import annotations

import enum
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

RANGE_NOTE = (
    "Range: every number has one; `[a, b]` includes both ends, `(a, b]` excludes `a`. A value "
    "outside it is a validation error, reported by `llem run --dry-run` (why each limit is "
    "what it is: [Limits](limits.md))."
)


@dataclass(frozen=True)
class Page:
    """One reference page: the models reachable from ``roots``, documented in order."""

    filename: str
    title: str
    intro: str
    roots: tuple[type[BaseModel], ...]


def pages() -> list[Page]:
    """The reference pages and the root models each documents."""
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.config.online import OnlineConfig
    from llenergymeasure.config.study import ExecutionConfig, StudyConfig
    from llenergymeasure.config.user_config import UserConfig
    from llenergymeasure.results.models import ExperimentResult
    from llenergymeasure.results.study import StudyResult
    from llenergymeasure.study.manifest import StudyManifest

    return [
        Page(
            "experiment-config.md",
            "Experiment configuration",
            "Fields of an experiment YAML (`llem run experiment.yaml`), the `base:` of a study "
            "and each grid point of a sweep. Unknown keys are errors. Engine-section fields "
            "default to `None`, meaning the engine's own default; the result records the "
            "effective value in `effective_parameters`. " + RANGE_NOTE,
            (ExperimentConfig, OnlineConfig),
        ),
        Page(
            "study-config.md",
            "Study configuration",
            "The `execution:` block of a study YAML and the resolved study that `sweep:`, "
            "`experiments:` and `base:` expand to (`llem run study.yaml --dry-run` shows it). "
            + RANGE_NOTE,
            (ExecutionConfig, StudyConfig),
        ),
        Page(
            "user-config.md",
            "User configuration",
            "Machine facts in `~/.config/llenergymeasure/config.yaml` (or `$LLEM_CONFIG`). "
            "Environment variables `LLEM_CARBON_INTENSITY`, `LLEM_DATACENTER_PUE`, "
            "`LLEM_ENERGY_BACKEND` and `LLEM_RUNNER_<BACKEND>` override it; `llem config` "
            "shows every setting and where it came from; the variables get the same ranges as "
            "the file. " + RANGE_NOTE,
            (UserConfig,),
        ),
        Page(
            "experiment-result.md",
            "Experiment result",
            "`result.json` of one run: the full `ExperimentResult`. Energies are joules, "
            "powers watts, durations seconds unless a field says otherwise.",
            (ExperimentResult,),
        ),
        Page(
            "study-result.md",
            "Study result and manifest",
            "`study_summary.json` (`StudyResult`, written at the end of a study) and "
            "`study_manifest.json` (`StudyManifest`, rewritten atomically at every state "
            "change; what `llem run --resume` reads).",
            (StudyResult, StudyManifest),
        ),
    ]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Model classes inside a type annotation (through unions, lists, dicts, Annotated)."""
    if _is_model(annotation):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg)


def walk(
    roots: tuple[type[BaseModel], ...], seen: set[type[BaseModel]] | None = None
) -> list[type[BaseModel]]:
    """Every model reachable from ``roots``, depth first in field order, each once."""
    seen = set() if seen is None else seen
    out: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        out.append(model)
        for info in model.model_fields.values():
            for nested in _nested_models(info.annotation):
                visit(nested)

    for root in roots:
        visit(root)
    return out


def _type_name(annotation: Any, links: dict[type[BaseModel], str] | None = None) -> str:
    """The annotation as text; documented models become links to their section."""
    if annotation is type(None):
        return "None"
    if links and annotation in links:
        return f"[{annotation.__name__}]({links[annotation]}#{annotation.__name__.lower()})"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], links)
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, links) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a, links) for a in args)}]"
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(section defaults)"
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return f'`"{value}"`' if len(value) <= 40 else "(see description)"
    return f"`{value!r}`"


def _range(info: FieldInfo) -> str:
    """The field's bound as an interval (``[0, 86,400] s``), or "" for a field without one."""
    from llenergymeasure.config.bounds import bound_of

    bound = bound_of(info.annotation, info.metadata)
    return bound.interval() if bound is not None else ""


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def missing_descriptions() -> list[str]:
    """``Model.field`` for every documented field without a description."""
    missing: list[str] = []
    seen: set[type[BaseModel]] = set()
    for page in pages():
        for model in walk(page.roots, seen):
            for name, info in model.model_fields.items():
                if not (info.description or "").strip():
                    missing.append(f"{model.__module__}.{model.__name__}.{name}")
    return missing


def render() -> dict[str, str]:
    """Page filename -> Markdown text, generated from the models."""
    out: dict[str, str] = {}
    seen: set[type[BaseModel]] = set()
    documented = [(page, walk(page.roots, seen)) for page in pages()]
    for page, models in documented:
        links = {
            m: ("" if other is page else other.filename) for other, ms in documented for m in ms
        }
        lines = [
            f"# {page.title}",
            "",
            "<!-- Generated by docs/gen_reference.py from the pydantic models; do not edit. -->",
            "",
            page.intro,
            "",
        ]
        for model in models:
            doc = " ".join((model.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")
            lines += [f"## {model.__name__}", "", f"`{model.__module__}.{model.__name__}`", ""]
            if doc:
                lines += [doc, ""]
            ranged = any(_range(info) for info in model.model_fields.values())
            if ranged:
                lines += [
                    "| Field | Type | Default | Range | Description |",
                    "| --- | --- | --- | --- | --- |",
                ]
            else:
                lines += ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
            for name, info in model.model_fields.items():
                limits = f" | {_cell(_range(info))}" if ranged else ""
                lines.append(
                    f"| `{name}` | {_cell(_type_name(info.annotation, links))} "
                    f"| {_cell(_default(info))}{limits}"
                    f" | {_cell(info.description or '')} |"
                )
            lines.append("")
        if page.filename == "study-config.md":
            lines += render_reuse_defaults()
        out[page.filename] = "\n".join(lines)
    out["limits.md"] = render_limits()
    return out


def render_reuse_defaults() -> list[str]:
    """Each engine's default of ``execution.reuse_engine``, and why, from the engine catalogue."""
    from llenergymeasure.config.catalogue import ENGINES

    lines = [
        "## Engine reuse by default",
        "",
        "With `execution.reuse_engine` unset here and in the user config, each engine gets its "
        "own default from the engine catalogue (`llenergymeasure.config.catalogue`, "
        "`EngineSpec.reuse_proven`): on only where sharing one loaded engine across a study's "
        "runs was shown on hardware to measure the same as a fresh process per run; a study "
        "mixing engines gets each engine's own default. `llem run study.yaml --dry-run` shows "
        "the decision for each engine of the study and why; `--reuse-engine` / "
        "`--no-reuse-engine` (or a value in the study or the user config) set it for every "
        "engine.",
        "",
        "| Engine | Reuse by default | Why |",
        "| --- | --- | --- |",
    ]
    for spec in ENGINES.values():
        state = "on" if spec.reuse_proven else "off"
        lines.append(f"| `{spec.name}` | {state} | {_cell(spec.reuse_evidence)} |")
    lines.append("")
    return lines


def render_limits() -> str:
    """``limits.md``: every bound of ``config.bounds``, why, and the fields that use it."""
    from llenergymeasure.config import bounds

    users: dict[int, list[str]] = {}
    seen: set[type[BaseModel]] = set()
    for page in pages()[:3]:  # the config pages
        for model in walk(page.roots, seen):
            for name, info in model.model_fields.items():
                bound = bounds.bound_of(info.annotation, info.metadata)
                if bound is not None:
                    users.setdefault(id(bound), []).append(f"`{model.__name__}.{name}`")
    lines = [
        "# Limits",
        "",
        "<!-- Generated by docs/gen_reference.py from llenergymeasure.config.bounds; "
        "do not edit. -->",
        "",
        "Every number llem reads has a lower and an upper bound, kept in one table "
        "(`llenergymeasure.config.bounds`) that the config fields reference. Validation "
        "enforces them, so `llem run --dry-run` rejects a value out of range (exit code 2, "
        "naming the file, the field, the range and the reason) before anything runs; the "
        "environment variables `LLEM_CARBON_INTENSITY` and `LLEM_DATACENTER_PUE` and the "
        "numeric flags (`-n`, `--batch-size`, `--cycles`) get the bounds of the fields they "
        "set. The ceilings are generous but finite: no value makes llem wait for years, "
        "allocate without limit or fail after the model has loaded.",
        "",
        "## Numbers",
        "",
        "| Bound | Range | Why | Fields |",
        "| --- | --- | --- | --- |",
    ]
    for name in bounds.__all__:
        bound = getattr(bounds, name)
        if isinstance(bound, bounds.Bound):
            fields = ", ".join(users.get(id(bound), [])) or "(not a field)"
            lines.append(
                f"| `{name}` | {_cell(bound.interval())} | {_cell(bound.why)} | {fields} |"
            )
    lines += [
        "",
        "An online run also refuses a load whose arrival schedule, `(n - 1) / request_rate`, "
        f"would last more than {bounds.MAX_LOAD_SECONDS // 86_400} days.",
        "",
        "## Files",
        "",
        "| What | Limit |",
        "| --- | --- |",
        "| A config YAML (experiment, study, `base:`, user config) | a regular file (not a FIFO,"
        f" device or directory) of at most {bounds.CONFIG_FILE_MAX_BYTES // 1024:,} KiB, checked"
        " before and while reading |",
        "| Keys of a config YAML | each key once per mapping, at any depth (the error names the"
        " key and both lines) |",
        f"| Nesting of a config YAML | at most {bounds.YAML_MAX_DEPTH} levels |",
        f"| Values of a config YAML, aliases expanded | at most {bounds.YAML_MAX_NODES:,} |",
        "| A JSONL dataset | a regular file, UTF-8, one JSON object per line; lines of at most "
        f"{bounds.DATASET_LINE_MAX_BYTES // (1 << 20)} MiB; read once, in pre-flight, before the"
        " model loads, and only as far as the run needs |",
        "",
        "Numbers in YAML follow YAML 1.2: `1e-9` and `1e3` are numbers (PyYAML alone reads them "
        "as strings).",
        "",
    ]
    return "\n".join(lines)


ENGINES_GUIDE = Path(__file__).resolve().parent / "guides" / "engines.md"
PASSTHROUGH_BEGIN = (
    "<!-- passthrough-keys: generated by docs/gen_reference.py from each engine's "
    "passthrough_keys(); edit the engines, not this list -->"
)
PASSTHROUGH_END = "<!-- /passthrough-keys -->"
#: Lines of the generated list that name the installed library's own keys start with this.
OPEN_KEYS_PREFIX = "  With "


def _keys(keys: Any) -> str:
    return ", ".join(f"`{k}`" for k in sorted(keys))


def render_passthrough() -> str:
    """The accepted ``passthrough_kwargs`` keys of every engine in the catalogue, as Markdown
    (the block between ``PASSTHROUGH_BEGIN`` and ``PASSTHROUGH_END`` in the engines guide)."""
    from llenergymeasure.config.catalogue import engine_names
    from llenergymeasure.engines.factory import engine_class

    lines = [PASSTHROUGH_BEGIN, ""]
    for name in engine_names():
        keys = engine_class(name).passthrough_keys()
        lines.append(f"**`backend: {name}`**")
        lines.append("")
        if keys is None:
            lines += ["- not described by the engine", ""]
            continue
        for key, what in sorted(keys.own.items()):
            lines.append(f"- `{key}` (llem itself): {what}")
        for destination, route in keys.routes:
            lines.append(f"- to {destination}: {_keys(route)}")
        other = "any other key" if keys.own or keys.routes or keys.refused else "any key"
        if keys.open_route is not None:
            lines.append(f"- {other} goes to {keys.open_route}")
            if keys.open_keys is not None:
                label, open_keys = keys.open_keys()
                lines.append(f"{OPEN_KEYS_PREFIX}{label} these are: {_keys(open_keys)}")
        else:
            lines.append(f"- {other}: a pre-flight error")
        if keys.refused:
            refused = ", ".join(f"`{k}` ({why})" for k, why in sorted(keys.refused.items()))
            lines.append(f"- refused (a pre-flight error): {refused}")
        lines.append("")
    lines.append(PASSTHROUGH_END)
    return "\n".join(lines)


def passthrough_block(text: str) -> str:
    """The generated passthrough block of a guide's ``text`` (markers included)."""
    start = text.index(PASSTHROUGH_BEGIN)
    end = text.index(PASSTHROUGH_END, start) + len(PASSTHROUGH_END)
    return text[start:end]


def main() -> int:
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    for filename, text in render().items():
        (REFERENCE_DIR / filename).write_text(text, encoding="utf-8")
    guide = ENGINES_GUIDE.read_text(encoding="utf-8")
    guide = guide.replace(passthrough_block(guide), render_passthrough())
    ENGINES_GUIDE.write_text(guide, encoding="utf-8")
    missing = missing_descriptions()
    for name in missing:
        print(f"no description: {name}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
