"""Which field a study swept, and its configs as lines along it (the data of the sweep figure).

A study's manifest keeps its expanded configs, not the ``sweep:`` block, so the swept field is
read from what varies between the configs (``ConfigStatistics.varying``):

- every varying field is a candidate x axis; the other fields split the configs into lines,
  except a field that follows from x and the remaining line fields (e.g. ``n`` set per batch
  size to keep the windows long), which is left out of the lines (fields with more levels are
  tried first) and, where x alone fixes it, shown under the x ticks;
- the x axis is the candidate whose lines fill the grid (every line has a point at every x
  level: what a sweep produces), then a numeric field, fewer lines, more levels, and the field
  that comes later in the config (engine and load sections come after the workload's ``n`` and
  ``dataset``, which studies often set per point);
- ``x_field`` names the axis instead.

Numeric levels are sorted (``"inf"``, an unlimited request rate, last); other levels keep their
first-seen order, unset (None) last. Where an on/off or mode setting that is not drawn as lines
changes along a line, its points are separate set-ups rather than a sweep: ``connected`` is then
False and the figure does not join them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import ConfigStatistics, MetricStatistics
from llenergymeasure.results.study_statistics import metric_value

__all__ = ["SweepLayout", "SweepLine", "SweepPoint", "short_name", "sweep_layout"]


@dataclass(frozen=True)
class SweepPoint:
    """One config on its line: x level, statistics per metric and each cycle's value."""

    config_number: int
    level: Any
    stats: Mapping[str, MetricStatistics]
    cycles: Mapping[str, list[float]]


@dataclass(frozen=True)
class SweepLine:
    """The configs that share the line fields' values, ordered along x."""

    label: str
    points: list[SweepPoint]


@dataclass(frozen=True)
class SweepLayout:
    """The swept field, its levels in order, and one line per level of the other fields."""

    x_field: str
    levels: list[Any]
    numeric: bool
    line_fields: list[str]
    lines: list[SweepLine]
    tick_notes: dict[str, list[str]] = field(default_factory=dict)  # level text -> "n=8", ...
    follows: list[str] = field(default_factory=list)  # fields left out of the lines
    connected: bool = True  # False: a line's points differ in a setting other than x

    @property
    def x_name(self) -> str:
        """The axis label: the field's last component."""
        return short_name(self.x_field)


def short_name(key: str) -> str:
    """``pytorch.batch_size`` -> ``batch_size``."""
    return key.rsplit(".", 1)[-1]


def _names(keys: Sequence[str]) -> dict[str, str]:
    """Short names, or the dotted key where two keys share their last component."""
    last = [short_name(k) for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def level_text(value: Any) -> str:
    """A level as shown on the axis and in labels."""
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value == "inf"


def numeric_value(value: Any) -> float:
    """A numeric level as a float (``"inf"`` -> ``math.inf``)."""
    return math.inf if value == "inf" else float(value)


def _ordered_levels(values: Sequence[Any]) -> tuple[list[Any], bool]:
    distinct: list[Any] = []
    for v in values:
        if not any(v == d and type(v) is type(d) for d in distinct):
            distinct.append(v)
    if all(_is_number(v) for v in distinct):
        return sorted(distinct, key=numeric_value), True
    return [v for v in distinct if v is not None] + [v for v in distinct if v is None], False


def _key(values: Mapping[str, Any], fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(repr(values.get(f)) for f in fields)


def _determined(rows: Sequence[Mapping[str, Any]], target: str, by: Sequence[str]) -> bool:
    """Whether ``target``'s value is the same wherever ``by``'s values are."""
    seen: dict[tuple[str, ...], str] = {}
    for row in rows:
        key = _key(row, by)
        value = repr(row.get(target))
        if seen.setdefault(key, value) != value:
            return False
    return True


def _line_fields(
    rows: Sequence[Mapping[str, Any]], x: str, keys: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The fields that split the configs into lines, and those that follow from the rest."""
    levels = {k: len({repr(r.get(k)) for r in rows}) for k in keys}
    others = [k for k in keys if k != x]
    follows: list[str] = []
    for k in sorted(others, key=lambda k: -levels[k]):
        rest = [o for o in others if o != k and o not in follows]
        if _determined(rows, k, [x, *rest]):
            follows.append(k)
    return [k for k in others if k not in follows], [k for k in others if k in follows]


def _score(
    rows: Sequence[Mapping[str, Any]], x: str, lines: Sequence[str], order: int
) -> tuple[Any, ...]:
    levels, numeric = _ordered_levels([r.get(x) for r in rows])
    groups = {_key(r, lines) for r in rows}
    cells = {(_key(r, lines), repr(r.get(x))) for r in rows}
    fill = len(cells) / (len(groups) * len(levels))
    return (fill, numeric, -len(groups), len(levels), order)


def sweep_layout(
    configs: Sequence[ConfigStatistics],
    runs: Mapping[str, Sequence[ExperimentResult]],
    metrics: Sequence[str],
    *,
    x_field: str | None = None,
) -> SweepLayout | None:
    """The configs as lines along the swept field; None when nothing varies or no line has two
    points (``x_field`` given: ``ConfigError`` if it does not vary between the configs).

    ``runs`` maps a config hash to its completed runs (their values are the cycle dots).
    """
    rows = [c.varying for c in configs]
    keys = list(dict.fromkeys(k for c in configs for k in c.varying))
    if x_field is not None and x_field not in keys:
        import difflib

        close = difflib.get_close_matches(x_field, keys, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"llem report: {x_field!r} does not vary between the study's configs",
            hint=hint + "fields that vary: " + (", ".join(keys) or "none (one config)"),
        )
    if not keys:
        return None
    candidates = [x_field] if x_field is not None else keys
    best: tuple[tuple[Any, ...], str, list[str], list[str]] | None = None
    for order, x in enumerate(candidates):
        lines, follows = _line_fields(rows, x, keys)
        score = _score(rows, x, lines, order)
        if best is None or score > best[0]:
            best = (score, x, lines, follows)
    assert best is not None
    _, x, line_fields, follows = best
    layout = _build(configs, runs, metrics, x, line_fields, follows)
    if x_field is None and max(len(line.points) for line in layout.lines) < 2:
        return None
    return layout


def _build(
    configs: Sequence[ConfigStatistics],
    runs: Mapping[str, Sequence[ExperimentResult]],
    metrics: Sequence[str],
    x: str,
    line_fields: list[str],
    follows: list[str],
) -> SweepLayout:
    levels, numeric = _ordered_levels([c.varying.get(x) for c in configs])
    position = {repr(v): i for i, v in enumerate(levels)}
    grouped: dict[tuple[str, ...], list[SweepPoint]] = {}
    labels: dict[tuple[str, ...], str] = {}
    for number, c in enumerate(configs, 1):
        key = _key(c.varying, line_fields)
        labels[key] = ", ".join(
            f"{short_name(f)}={level_text(c.varying.get(f))}" for f in line_fields
        )
        cycles = {m: _cycle_values(runs.get(c.config_hash, ()), m) for m in metrics}
        grouped.setdefault(key, []).append(
            SweepPoint(number, c.varying.get(x), {m: c.metrics[m] for m in metrics}, cycles)
        )
    lines = [
        SweepLine(labels[k], sorted(pts, key=lambda p: position[repr(p.level)]))
        for k, pts in grouped.items()
    ]
    rows = [c.varying for c in configs]
    fixed_by_x = [f for f in follows if _determined(rows, f, [x])]
    names = _names(fixed_by_x)
    notes: dict[str, list[str]] = {}
    for c in configs:
        text = level_text(c.varying.get(x))
        notes[text] = [f"{names[f]}={level_text(c.varying.get(f))}" for f in fixed_by_x]
    return SweepLayout(
        x_field=x,
        levels=levels,
        numeric=numeric,
        line_fields=line_fields,
        lines=lines,
        tick_notes=notes,
        follows=[f for f in follows if f not in fixed_by_x],
        connected=not any(_switches(rows, f, line_fields) for f in follows),
    )


def _switches(rows: Sequence[Mapping[str, Any]], name: str, line_fields: Sequence[str]) -> bool:
    """Whether a non-numeric setting (on/off, a mode) changes along one line: its points are
    then different set-ups, not a sweep, and are not joined."""
    lines: dict[tuple[str, ...], set[str]] = {}
    for row in rows:
        value = row.get(name)
        if not _is_number(value):
            lines.setdefault(_key(row, line_fields), set()).add(repr(value))
    return any(len(values) > 1 for values in lines.values())


def _cycle_values(results: Sequence[ExperimentResult], metric: str) -> list[float]:
    return [v for v in (metric_value(r, metric) for r in results) if v is not None]
