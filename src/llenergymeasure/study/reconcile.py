"""The results of a study's earlier sessions, read back before it goes on (``--resume``).

A completed run's result is checked against its manifest entry; a run that was running when
llem was killed keeps the result it had already saved; anything that does not belong is set
aside (renamed, never deleted) and its run runs again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import RunEntry, StudyManifest

__all__ = ["load_completed"]

#: Where the study's notes go: ``note(message, level)``.
Note = Callable[[str, int], None]


def load_completed(
    study_dir: Path, manifest: StudyManifest, results: dict[str, ExperimentResult], note: Note
) -> None:
    """Read the results of runs completed earlier and check each against its manifest
    entry: a missing one runs again; an unreadable one, or one measured with another
    config (its hash differs from the entry's), is set aside (its run folder renamed,
    never deleted) and runs again."""
    for entry in manifest.runs:
        if (
            entry.status in ("running", "interrupted")
            and entry.run_id not in results
            and not entry.slurm_jobs  # SLURM runs are reconciled from their jobs' states
        ):
            _adopt_finished(study_dir, entry, results, note)
        if entry.status != "completed" or entry.run_id in results:
            continue
        path = study_dir / (entry.result_path or "")  # absolute when rescued
        problem: str | None = None
        try:
            result = ExperimentResult.from_json(path)
        except (OSError, ValueError, ValidationError) as exc:
            problem = "is missing" if isinstance(exc, FileNotFoundError) else "is unreadable"
        else:
            if result.measurement_config_hash != entry.config_hash:
                problem = (
                    f"was measured with config hash {result.measurement_config_hash}, but "
                    f"its manifest entry is config {entry.config_hash}"
                )
            else:
                results[entry.run_id] = result
                continue
        moved = _set_aside(study_dir, entry, path) if path.exists() else None
        note(
            f"{entry.run_id}: result file {path} {problem}"
            + (f"; kept as {moved}" if moved else "")
            + "; the run will run again",
            logging.WARNING,
        )
        entry.status = "pending"
        entry.result_path = None
        entry.rescued = None


def _adopt_finished(
    study_dir: Path, entry: RunEntry, results: dict[str, ExperimentResult], note: Note
) -> None:
    """A run that was running when llem was killed may have saved its result just before:
    that finished measurement (written atomically, measured with the entry's config) is
    kept and recorded as completed instead of being measured again; any other file left in
    its folder is set aside so the new attempt can save there."""
    path = study_dir / entry.run_id / "result.json"
    if not path.is_file():
        return
    try:
        result = ExperimentResult.from_json(path)
    except (OSError, ValueError, ValidationError):
        result = None
    if result is not None and result.measurement_config_hash == entry.config_hash:
        results[entry.run_id] = result
        entry.status = "completed"
        entry.error = None
        entry.result_path = os.path.relpath(path, study_dir)
        entry.rescued = None
        note(
            f"{entry.run_id}: kept the result its interrupted attempt had already saved ({path})",
            logging.INFO,
        )
        return
    moved = _set_aside(study_dir, entry, path)
    note(
        f"{entry.run_id}: {path} is not a result of this run's config"
        + (f"; kept as {moved}" if moved else "")
        + "; the run will run again",
        logging.WARNING,
    )


def _set_aside(study_dir: Path, entry: RunEntry, path: Path) -> Path | None:
    """Rename the run's folder (or the result file, outside it) out of the way."""
    run_dir = study_dir / entry.run_id
    target = run_dir if path.parent == run_dir else path
    for i in range(1, 1000):
        aside = target.with_name(f"{target.name}.set-aside-{i}")
        if aside.exists() or aside.is_symlink():
            continue
        try:
            target.rename(aside)
        except OSError:
            return None
        return aside
    return None
