"""Reading the two sides of a comparison: result files, experiment and study directories, lists.

Each side is one or more paths (a command-line argument may hold several, comma-separated):

- a ``result.json`` (or any llem result JSON), or the experiment directory holding it;
- a study directory (``study_manifest.json`` / ``study_summary.json``): its completed runs;
- any other directory: every study and experiment found inside it (up to ``SEARCH_DEPTH``
  levels down), e.g. the ``-o`` folder of several ``llem run`` invocations.

Each run keeps the state of its measurement window read from its ``timeseries.parquet``
(SM clock, temperature), for the environment diff.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.report.loader import (
    MANIFEST_NAME,
    RESULT_NAME,
    SUMMARY_NAME,
    TIMESERIES_NAME,
    StudySource,
    Timeseries,
    load_source,
    read_timeseries,
)
from llenergymeasure.results.models import ExperimentResult

SEARCH_DEPTH = 4
_HINT = (
    "give result.json files, experiment or study directories (or folders holding them); "
    "several per side as a comma-separated list"
)


@dataclass(frozen=True)
class WindowState:
    """What the GPU did during a run's measurement window (from its timeseries)."""

    sm_clock_mhz: float | None  # mean SM clock over the window's samples
    temperature_start_c: float | None  # first sample of the window (mean over devices)
    temperature_max_c: float | None


@dataclass
class Run:
    """One measured run of a side: its result, where it came from, its window state."""

    result: ExperimentResult
    path: Path
    window: WindowState | None = None


@dataclass
class Side:
    """One side (A or B) of a comparison: the paths given and the runs found in them."""

    name: str
    paths: list[Path]
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def split_specs(specs: Iterable[str | Path]) -> list[Path]:
    """Paths from arguments that may hold comma-separated lists (empty parts dropped)."""
    out: list[Path] = []
    for spec in specs:
        if isinstance(spec, Path):
            out.append(spec)
            continue
        out.extend(Path(part.strip()) for part in spec.split(",") if part.strip())
    return out


def window_state(ts: Timeseries | None) -> WindowState | None:
    """SM clock and temperatures of the samples in the measurement window (None without any)."""
    if ts is None or len(ts) == 0:
        return None
    rows = sorted(
        (t, clock, temp)
        for t, phase, clock, temp in zip(
            ts.t_s,
            ts.phase,
            ts.sm_clock_mhz or [None] * len(ts),
            ts.temperature_c,
            strict=True,
        )
        if phase == "measurement"
    )
    if not rows:
        return None
    clocks = [float(c) for _, c, _ in rows if c is not None]
    temps = [(t, float(c)) for t, _, c in rows if c is not None]
    start: float | None = None
    if temps:
        first_t = temps[0][0]
        start = statistics.fmean(c for t, c in temps if t == first_t)
    return WindowState(
        sm_clock_mhz=statistics.fmean(clocks) if clocks else None,
        temperature_start_c=start,
        temperature_max_c=max(c for _, c in temps) if temps else None,
    )


def _read_result(path: Path, side: str) -> ExperimentResult:
    try:
        return ExperimentResult.from_json(path)
    except (OSError, ValueError, ValidationError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"llem compare: {side}: {path} is not a valid llem result ({first})"
        ) from None


def _experiment_run(path: Path, side: str) -> Run:
    result = _read_result(path, side)
    ts = read_timeseries(path.parent / TIMESERIES_NAME) if path.name == RESULT_NAME else None
    return Run(result=result, path=path, window=window_state(ts))


def _study_runs(directory: Path, notes: list[str]) -> list[Run]:
    source = load_source(directory)
    assert isinstance(source, StudySource)
    notes.extend(f"{directory}: {note}" for note in source.notes)
    missing = [r for r in source.runs if r.result is None]
    if missing:
        notes.append(f"{directory}: {len(missing)} run(s) without a result left out")
    return [
        Run(result=r.result, path=r.result_path or directory, window=window_state(r.timeseries))
        for r in source.runs
        if r.result is not None
    ]


def _is_study(directory: Path) -> bool:
    return (directory / MANIFEST_NAME).is_file() or (directory / SUMMARY_NAME).is_file()


def _search(directory: Path, depth: int) -> tuple[list[Path], list[Path]]:
    """Study directories and experiment ``result.json`` files inside ``directory``."""
    studies: list[Path] = []
    results: list[Path] = []
    if depth < 0:
        return studies, results
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return studies, results
    for child in children:
        if _is_study(child):
            studies.append(child)
        elif (child / RESULT_NAME).is_file():
            results.append(child / RESULT_NAME)
        else:
            more_studies, more_results = _search(child, depth - 1)
            studies += more_studies
            results += more_results
    return studies, results


def _load_path(path: Path, side: str, notes: list[str]) -> list[Run]:
    if not path.exists():
        raise ConfigError(f"llem compare: {side}: {path} does not exist", hint=_HINT)
    if path.is_file():
        if path.name in (MANIFEST_NAME, SUMMARY_NAME):
            return _study_runs(path.parent, notes)
        return [_experiment_run(path, side)]
    if _is_study(path):
        return _study_runs(path, notes)
    if (path / RESULT_NAME).is_file():
        return [_experiment_run(path / RESULT_NAME, side)]
    studies, results = _search(path, SEARCH_DEPTH)
    runs: list[Run] = []
    for study in studies:
        runs += _study_runs(study, notes)
    runs += [_experiment_run(r, side) for r in results]
    if not runs:
        raise ConfigError(
            f"llem compare: {side}: no llem results in {path} (no {RESULT_NAME}, "
            f"{MANIFEST_NAME} or {SUMMARY_NAME} in it or below it)",
            hint=_HINT,
        )
    return runs


def load_side(specs: Sequence[str | Path], name: str) -> Side:
    """Every run under the paths ``specs`` (each may be a comma-separated list).

    A run found twice (the same ``experiment_id``) counts once. ``ConfigError`` when a path
    does not exist, a file is not a result, or nothing was found.
    """
    paths = split_specs(specs)
    if not paths:
        raise ConfigError(f"llem compare: {name}: no path given", hint=_HINT)
    side = Side(name=name, paths=paths)
    seen: set[str] = set()
    for path in paths:
        for run in _load_path(path, name, side.notes):
            if run.result.experiment_id in seen:
                continue
            seen.add(run.result.experiment_id)
            side.runs.append(run)
    if not side.runs:
        raise ConfigError(
            f"llem compare: {name}: no completed run in {', '.join(str(p) for p in paths)}",
            hint="a study whose runs all failed or are still pending has nothing to compare",
        )
    return side
