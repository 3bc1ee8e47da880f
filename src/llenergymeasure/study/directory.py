"""The study directory's safety: it must stay the directory the study started in, and when it
cannot be written the study's state is rescued elsewhere so that ``--resume`` can go on."""

from __future__ import annotations

import os
from pathlib import Path

from llenergymeasure.exceptions import MeasurementsRescued, StudyError, UnsafeWriteError
from llenergymeasure.os_errors import failure_reason
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import RunError, StudyManifest, manifest_path, write_manifest

__all__ = ["directory_identity", "rescue_study"]


def directory_identity(directory: Path) -> tuple[int, int] | None:
    """(device, inode) of ``directory``; None when it is gone."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def rescue_study(
    study_dir: Path,
    manifest: StudyManifest,
    results: dict[str, ExperimentResult],
    reason: str,
    *,
    persist: bool = True,
) -> MeasurementsRescued | StudyError:
    """Save the manifest and every finished result into a rescue folder (a study
    directory that ``--resume`` continues); the error that stops the study."""
    from llenergymeasure.files import write_json
    from llenergymeasure.rescue import rescue_folder

    completed = [e for e in manifest.runs if e.status == "completed" and e.run_id in results]
    if not persist and not completed:
        return StudyError(f"{reason} while the study ran")
    manifest = manifest.model_copy(deep=True)
    for entry in manifest.runs:
        if entry.status == "running":
            entry.status = "interrupted"
            entry.error = RunError(type="StudyStopped", message=reason)

    def fill(folder: Path) -> None:
        for entry in manifest.runs:
            if entry.status == "completed" and entry.run_id in results:
                path = folder / entry.run_id / "result.json"
                write_json(path, results[entry.run_id], base=folder)
                entry.result_path = os.path.relpath(path, folder)
                entry.rescued = None
            elif entry.status == "completed":
                entry.status = "pending"
                entry.result_path = None
        write_manifest(manifest, manifest_path(folder))

    try:
        folder = rescue_folder(study_dir.name, fill)
    except (OSError, UnsafeWriteError) as exc:
        return StudyError(
            f"{reason}; the study stopped, and its state could not be saved anywhere "
            f"({failure_reason(exc)})",
            hint="free space or fix permissions, then rerun the study",
        )
    return MeasurementsRescued(
        f"{reason}; the study stopped. Its manifest and the {len(completed)} finished "
        f"result(s) were saved to {folder}",
        hint=f"continue the study there: llem run --resume {folder}",
    )
