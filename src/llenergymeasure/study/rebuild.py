"""Rebuilding a study's manifest from the results in its directory (``--rebuild-manifest``).

A manifest that is damaged (truncated by a full disk, edited, from another llem) stops
``--resume``. The results it pointed to are still there, one ``<run_id>/result.json`` per
completed run, each holding its resolved config and config hash, so the study can be put back
together:

- **with the study file** (``llem run --resume DIR study.yaml --rebuild-manifest``): the plan is
  the study's own (every config x cycle, in run order), and each planned run whose folder
  holds a result of the same config hash is completed; the rest run when the study resumes;
- **without it**: the study is the results found, one completed run each (configs in the order
  of their run folders, the cycle read from the ``_c<k>`` suffix); nothing is left to run, but
  the summary, the table and ``llem report`` work again.

The damaged manifest is kept beside as ``study_manifest.json.damaged-<n>``; results whose hash
does not match their config, and folders set aside earlier, are left where they are and named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from llenergymeasure._version import __version__
from llenergymeasure.config.hashing import measurement_config_hash, study_design_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import ExecutionConfig, StudyConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import (
    MANIFEST_NAME,
    RunEntry,
    StudyManifest,
    manifest_path,
    utc_now,
    write_manifest,
)

__all__ = ["RebuiltManifest", "rebuild_manifest"]

_RUN_DIR = re.compile(r"(?P<position>\d+)_.+_c(?P<cycle>\d+)")


@dataclass
class RebuiltManifest:
    """The rebuilt manifest and what the rebuild found."""

    manifest: StudyManifest
    completed: int
    kept_damaged_as: Path | None
    skipped: list[str] = field(default_factory=list)  # result folders not used, with why


def _found_results(study_dir: Path) -> tuple[dict[str, ExperimentResult], list[str]]:
    found: dict[str, ExperimentResult] = {}
    skipped: list[str] = []
    for child in sorted(study_dir.iterdir()):
        if child.is_symlink() or not child.is_dir() or not _RUN_DIR.fullmatch(child.name):
            continue
        path = child / "result.json"
        if not path.is_file():
            continue
        try:
            result = ExperimentResult.from_json(path)
        except (OSError, ValueError) as exc:
            skipped.append(f"{child.name}: unreadable result ({type(exc).__name__})")
            continue
        if measurement_config_hash(result.config) != result.measurement_config_hash:
            skipped.append(f"{child.name}: its config does not match its config hash")
            continue
        found[child.name] = result
    return found, skipped


def _run_position(name: str) -> tuple[int, str]:
    match = _RUN_DIR.fullmatch(name)
    return (int(match.group("position")) if match else 0, name)


def _keep_damaged(study_dir: Path) -> Path | None:
    path = manifest_path(study_dir)
    if not path.exists():
        return None
    for i in range(1, 1000):
        aside = path.with_name(f"{MANIFEST_NAME}.damaged-{i}")
        if not aside.exists():
            path.rename(aside)
            return aside
    raise ConfigError(f"too many damaged manifests kept in {study_dir}")


def rebuild_manifest(study_dir: Path, study: StudyConfig | None = None) -> RebuiltManifest:
    """Write a new manifest for ``study_dir`` from its results (and ``study``, when given)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ConfigError(f"--rebuild-manifest: {study_dir} is not a directory")
    found, skipped = _found_results(study_dir)
    now = utc_now()
    if study is not None:
        manifest = _manifest_from_study(study, found, skipped, now)
    else:
        manifest = _manifest_from_results(study_dir, found, now)
    kept = _keep_damaged(study_dir)
    write_manifest(manifest, manifest_path(study_dir))
    completed = sum(1 for r in manifest.runs if r.status == "completed")
    return RebuiltManifest(manifest, completed, kept, skipped)


def _manifest_from_study(
    study: StudyConfig, found: dict[str, ExperimentResult], skipped: list[str], now: datetime
) -> StudyManifest:
    """The study's whole plan, its runs completed where ``found`` holds their result (taken out
    of ``found``; results that do not fit go to ``skipped``)."""
    from llenergymeasure.study.planning import plan_runs, reuse_map

    reuse = reuse_map(study)
    runs = plan_runs(study, reuse=reuse)
    for entry in runs:
        result = found.pop(entry.run_id, None)
        if result is None:
            continue
        if result.measurement_config_hash != entry.config_hash:
            skipped.append(f"{entry.run_id}: measured another config than the study plans")
            continue
        entry.status, entry.attempts = "completed", 1
        entry.result_path = f"{entry.run_id}/result.json"
    skipped += [f"{name}: not a run of this study" for name in found]
    return StudyManifest(
        llem_version=__version__,
        study_name=study.name,
        study_design_hash=study.study_design_hash,
        source_path=str(Path(study.source_path).resolve()) if study.source_path else None,
        created_at=now,
        updated_at=now,
        execution=study.execution,
        engine_reuse=reuse,
        experiments=study.experiments,
        skipped=study.skipped,
        runs=runs,
    )


def _manifest_from_results(
    study_dir: Path, found: dict[str, ExperimentResult], now: datetime
) -> StudyManifest:
    """Without the study file: one config per distinct result config, every run completed."""
    if not found:
        raise ConfigError(
            f"--rebuild-manifest: no readable result in {study_dir} to rebuild from",
            hint="pass the study file as well to rebuild the whole plan: "
            f"llem run --resume {study_dir} study.yaml --rebuild-manifest",
        )
    experiments: list[ExperimentConfig] = []
    index: dict[str, int] = {}
    runs = []
    ordered = sorted(found.items(), key=lambda item: _run_position(item[0]))
    for position, (name, result) in enumerate(ordered, 1):
        h = result.measurement_config_hash
        if h not in index:
            index[h] = len(experiments)
            experiments.append(result.config)
        match = _RUN_DIR.fullmatch(name)
        runs.append(
            RunEntry(
                run_id=name,
                position=position,
                config_index=index[h],
                config_hash=h,
                cycle=int(match.group("cycle")) if match else 1,
                status="completed",
                attempts=1,
                result_path=f"{name}/result.json",
            )
        )
    return StudyManifest(
        llem_version=__version__,
        study_name=study_dir.name,
        study_design_hash=study_design_hash(experiments),
        created_at=now,
        updated_at=now,
        execution=ExecutionConfig(
            n_cycles=max(r.cycle for r in runs),
            config_gap_seconds=0.0,
            cycle_gap_seconds=0.0,
            reuse_engine=False,
        ),
        experiments=experiments,
        runs=runs,
    )
