"""Reading what a report is made of: one experiment directory or a (possibly unfinished) study.

An experiment directory holds ``result.json`` (+ ``timeseries.parquet``). A study directory
holds ``study_manifest.json`` and/or ``study_summary.json`` and one sub-directory per run; a
run's result is read from its manifest ``result_path``, ``<run_id>/result.json`` or a flattened
``<run_id>.json`` beside the manifest. Runs without a result (failed, pending, still running)
are listed with their state and error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import StudyResult, StudyStatistics

if TYPE_CHECKING:
    from llenergymeasure.study.manifest import StudyManifest

RESULT_NAME = "result.json"
TIMESERIES_NAME = "timeseries.parquet"
MANIFEST_NAME = "study_manifest.json"
SUMMARY_NAME = "study_summary.json"

_HINT = (
    "give a directory llem wrote: an experiment directory (result.json) or a study directory "
    "(study_manifest.json / study_summary.json)"
)


@dataclass
class Timeseries:
    """Columns of a ``timeseries.parquet`` sidecar (one row per sample per device)."""

    t_s: list[float]
    device_index: list[int]
    phase: list[str]
    power_w: list[float | None]
    temperature_c: list[float | None]
    sm_clock_mhz: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t_s)


@dataclass
class RunRecord:
    """One run of a study (or the single experiment): its state and, if done, its result."""

    run_id: str
    config_index: int | None
    config_hash: str
    cycle: int
    status: str
    result: ExperimentResult | None = None
    result_path: Path | None = None
    timeseries: Timeseries | None = None
    error: str | None = None


@dataclass
class ExperimentSource:
    """A single experiment directory."""

    directory: Path
    run: RunRecord

    @property
    def result(self) -> ExperimentResult:
        """The experiment's result (always present)."""
        assert self.run.result is not None
        return self.run.result


@dataclass
class StudySource:
    """A study directory: its name, design, runs in order, and per-config statistics."""

    directory: Path
    name: str
    design_hash: str | None
    summary: StudyResult | None
    configs: list[tuple[str, ExperimentConfig]]
    runs: list[RunRecord]
    statistics: StudyStatistics
    finished: bool
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> list[RunRecord]:
        """Runs that have a result."""
        return [r for r in self.runs if r.result is not None]


def load_source(path: str | Path) -> ExperimentSource | StudySource:
    """Detect and read an experiment or study directory; ``ConfigError`` if it is neither."""
    directory = Path(path)
    if not directory.exists():
        raise ConfigError(f"llem report: {directory} does not exist", hint=_HINT)
    if directory.is_file():
        if directory.name in (RESULT_NAME, MANIFEST_NAME, SUMMARY_NAME):
            directory = directory.parent
        else:
            raise ConfigError(f"llem report: {directory} is a file, not a directory", hint=_HINT)
    if (directory / MANIFEST_NAME).is_file() or (directory / SUMMARY_NAME).is_file():
        return _load_study(directory)
    if (directory / RESULT_NAME).is_file():
        result = _read_result(directory / RESULT_NAME)
        run = RunRecord(
            run_id=directory.name,
            config_index=0,
            config_hash=result.measurement_config_hash,
            cycle=1,
            status="completed",
            result=result,
            result_path=directory / RESULT_NAME,
            timeseries=read_timeseries(directory / TIMESERIES_NAME),
        )
        return ExperimentSource(directory=directory, run=run)
    raise ConfigError(
        f"llem report: {directory} is not an experiment or study directory "
        f"(no {RESULT_NAME}, {MANIFEST_NAME} or {SUMMARY_NAME} in it)",
        hint=_HINT,
    )


def _read_result(path: Path) -> ExperimentResult:
    try:
        return ExperimentResult.from_json(path)
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(
            f"llem report: {path} is not a valid llem result ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_timeseries(path: Path) -> Timeseries | None:
    """Read the power/temperature columns of a timeseries sidecar; None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        import pyarrow.parquet as pq

        from llenergymeasure.files import register_input

        register_input(path)
        table = pq.read_table(path)
        names = set(table.column_names)

        def column(name: str, default: Any = None) -> list[Any]:
            if name in names:
                return list(table.column(name).to_pylist())
            return [default] * table.num_rows

        return Timeseries(
            t_s=[float(v) for v in column("t_s", 0.0)],
            device_index=[int(v or 0) for v in column("device_index", 0)],
            phase=[str(v or "") for v in column("phase", "")],
            power_w=column("power_w"),
            temperature_c=column("temperature_c"),
            sm_clock_mhz=column("sm_clock_mhz"),
        )
    except Exception:  # a damaged sidecar must not stop the report
        return None


def _find_result(directory: Path, run_id: str, result_path: str | None) -> Path | None:
    candidates = []
    if result_path:
        candidates.append(directory / result_path)
    candidates += [directory / run_id / RESULT_NAME, directory / f"{run_id}.json"]
    return next((c for c in candidates if c.is_file()), None)


def _load_study(directory: Path) -> StudySource:
    from llenergymeasure.results.study_statistics import study_statistics

    notes: list[str] = []
    summary, manifest = _read_study_files(directory, notes)
    configs: list[tuple[str, ExperimentConfig]] = []
    planned: dict[str, int] | None = None
    if manifest is not None:
        configs, runs = _runs_from_manifest(directory, manifest, notes)
        name, design = manifest.study_name, manifest.study_design_hash
        finished = bool(manifest.sessions) and manifest.sessions[-1].outcome == "finished"
        planned = dict(Counter(e.config_hash for e in manifest.runs))
    else:
        assert summary is not None
        runs = _runs_from_summary(directory, summary, notes)
        name, design, finished = summary.study_name, summary.study_design_hash, True
    done = [(r.cycle, r.result) for r in runs if r.result is not None]
    statistics = study_statistics(configs, done, planned=planned)
    if not finished:
        notes.append("the study has not finished: this report covers the runs completed so far")
    return StudySource(
        directory=directory,
        name=name,
        design_hash=design,
        summary=summary,
        configs=configs,
        runs=runs,
        statistics=statistics,
        finished=finished,
        notes=notes,
    )


def _read_study_files(
    directory: Path, notes: list[str]
) -> tuple[StudyResult | None, StudyManifest | None]:
    """The study's summary and manifest (each None when missing or unreadable, with a note);
    ``ConfigError`` when neither can be read."""
    from llenergymeasure.study.manifest import StudyManifest

    summary: StudyResult | None = None
    if (directory / SUMMARY_NAME).is_file():
        try:
            summary = StudyResult.from_json(directory / SUMMARY_NAME)
        except (OSError, ValueError, ValidationError) as exc:
            notes.append(f"{SUMMARY_NAME} could not be read ({_first_line(exc)})")
    manifest: StudyManifest | None = None
    if (directory / MANIFEST_NAME).is_file():
        try:
            from llenergymeasure.files import register_input

            register_input(directory / MANIFEST_NAME)
            manifest = StudyManifest.model_validate_json(
                (directory / MANIFEST_NAME).read_text(encoding="utf-8")
            )
        except (OSError, ValueError, ValidationError) as exc:
            notes.append(f"{MANIFEST_NAME} could not be read ({_first_line(exc)})")
    if manifest is None and summary is None:
        raise ConfigError(
            f"llem report: {directory} has no readable {MANIFEST_NAME} or {SUMMARY_NAME}",
            hint=_HINT,
        )
    return summary, manifest


def _runs_from_manifest(
    directory: Path, manifest: StudyManifest, notes: list[str]
) -> tuple[list[tuple[str, ExperimentConfig]], list[RunRecord]]:
    """The study's configs (with their hashes) and every planned run, in position order."""
    from llenergymeasure.config.hashing import measurement_config_hash

    hashes: dict[int, str] = {}
    for entry in manifest.runs:
        hashes.setdefault(entry.config_index, entry.config_hash)
    configs = [
        (hashes.get(i) or measurement_config_hash(c), c) for i, c in enumerate(manifest.experiments)
    ]
    runs: list[RunRecord] = []
    for entry in sorted(manifest.runs, key=lambda r: r.position):
        run = RunRecord(
            run_id=entry.run_id,
            config_index=entry.config_index,
            config_hash=entry.config_hash,
            cycle=entry.cycle,
            status=entry.status,
            error=f"{entry.error.type}: {entry.error.message}" if entry.error else None,
        )
        if entry.status == "completed":
            _attach_result(directory, run, entry.result_path, notes)
        runs.append(run)
    return configs, runs


def _runs_from_summary(directory: Path, summary: StudyResult, notes: list[str]) -> list[RunRecord]:
    """Without a manifest: the completed runs the summary lists, then its failed runs."""
    runs: list[RunRecord] = []
    for rel in summary.result_files:
        run_id = Path(rel).parent.name or Path(rel).stem
        run = RunRecord(
            run_id=run_id, config_index=None, config_hash="?", cycle=1, status="completed"
        )
        _attach_result(directory, run, rel, notes)
        if run.result is not None:
            run.config_hash = run.result.measurement_config_hash
            run.cycle = 1 + sum(1 for r in runs if r.config_hash == run.config_hash)
        runs.append(run)
    for f in summary.failed:
        runs.append(
            RunRecord(
                run_id=f.run_id,
                config_index=None,
                config_hash=f.config_hash,
                cycle=f.cycle,
                status=f.status,
                error=f"{f.error_type}: {f.message}",
            )
        )
    return runs


def _attach_result(
    directory: Path, run: RunRecord, result_path: str | None, notes: list[str]
) -> None:
    path = _find_result(directory, run.run_id, result_path)
    if path is None:
        run.status = "missing"
        run.error = "marked completed but its result file is missing"
        return
    try:
        run.result = ExperimentResult.from_json(path)
    except (OSError, ValueError, ValidationError) as exc:
        run.status = "unreadable"
        run.error = f"result file {path.name} could not be read ({_first_line(exc)})"
        notes.append(f"{run.run_id}: {run.error}")
        return
    run.result_path = path
    run.timeseries = (
        read_timeseries(path.parent / TIMESERIES_NAME) if path.name == RESULT_NAME else None
    )
