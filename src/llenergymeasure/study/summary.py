"""End of a study: the ``StudyResult``, ``results.parquet`` and the table printed on stdout."""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from llenergymeasure._version import __version__
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.study import (
    StudyCounts,
    StudyFailedRun,
    StudyProtocol,
    StudyResult,
    StudySkipped,
    StudyStatistics,
)
from llenergymeasure.results.study_statistics import varying_fields
from llenergymeasure.study.manifest import StudyManifest
from llenergymeasure.text_table import render_table

SUMMARY_NAME = "study_summary.json"
RESULTS_TABLE_NAME = "results.parquet"


def build_study_result(
    manifest: StudyManifest,
    results: dict[str, ExperimentResult],
    *,
    study_dir: Path | None,
    gaps: tuple[float, float],
    finished_at: datetime,
) -> StudyResult:
    """Summarise the manifest; ``results`` maps run_id -> result of each completed run."""
    runs = sorted(manifest.runs, key=lambda r: r.position)
    completed = [r for r in runs if r.status == "completed" and r.run_id in results]
    not_done = [r for r in runs if r.status in ("failed", "interrupted")]
    ordered = [results[r.run_id] for r in completed]
    execution = manifest.execution
    baselines = [x.energy.baseline for x in ordered if x.energy.baseline is not None]
    protocol = StudyProtocol(
        n_cycles=execution.n_cycles,
        cycle_order=execution.cycle_order,
        shuffle_seed=execution.shuffle_seed,
        config_gap_seconds=gaps[0],
        cycle_gap_seconds=gaps[1],
        experiment_timeout_seconds=execution.experiment_timeout_seconds,
        energy_backends=sorted({x.energy.backend for x in ordered}),
        energy_methods=sorted({x.energy.method for x in ordered}),
        baseline_enabled=sorted({c.baseline.enabled for c in manifest.experiments}),
        baseline_runs_measured=sum(1 for b in baselines if not b.from_cache),
        baseline_runs_from_cache=sum(1 for b in baselines if b.from_cache),
        warmup_runs=sorted({x.warmup.runs for x in ordered}),
        thermal_floor_seconds=sorted(
            {c.warmup.thermal_floor_seconds for c in manifest.experiments}
        ),
    )
    counts = StudyCounts(
        generated=len(manifest.experiments) + len(manifest.skipped),
        skipped=len(manifest.skipped),
        experiments=len(manifest.experiments),
        runs_planned=len(runs),
        ran=sum(1 for r in runs if r.attempts > 0),
        completed=len(completed),
        failed=len(not_done),
        not_run=sum(1 for r in runs if r.status == "pending"),
    )
    started = manifest.sessions[0].started_at if manifest.sessions else manifest.created_at
    statistics = manifest_statistics(manifest, results)
    return StudyResult(
        llem_version=__version__,
        study_name=manifest.study_name,
        study_design_hash=manifest.study_design_hash,
        runner=manifest.runner or "local",
        study_dir=str(study_dir) if study_dir is not None else None,
        started_at_utc=started,
        finished_at_utc=finished_at,
        protocol=protocol,
        counts=counts,
        skipped=[
            StudySkipped(source=s.source, overrides=s.overrides, reason=s.reason)
            for s in manifest.skipped
        ],
        failed=[
            StudyFailedRun(
                run_id=r.run_id,
                config_hash=r.config_hash,
                cycle=r.cycle,
                status=r.status,
                error_type=r.error.type if r.error else "unknown",
                message=r.error.message if r.error else "",
            )
            for r in not_done
        ],
        result_files=[r.result_path for r in completed if r.result_path] if study_dir else [],
        rescued=[f"{r.run_id}: {r.rescued}" for r in completed if r.rescued],
        results_table=RESULTS_TABLE_NAME if study_dir is not None and completed else None,
        statistics=statistics,
        results=ordered,
    )


def manifest_statistics(
    manifest: StudyManifest, results: dict[str, ExperimentResult]
) -> StudyStatistics:
    """Per-config statistics (n, mean, std, CV, 95 % CI) of the completed runs across cycles."""
    from collections import Counter

    from llenergymeasure.config.hashing import measurement_config_hash
    from llenergymeasure.results.study_statistics import study_statistics

    hashes: dict[int, str] = {}
    for run in manifest.runs:
        hashes.setdefault(run.config_index, run.config_hash)
    configs = [
        (hashes.get(i) or measurement_config_hash(c), c) for i, c in enumerate(manifest.experiments)
    ]
    completed = [
        (run.cycle, results[run.run_id])
        for run in sorted(manifest.runs, key=lambda r: r.position)
        if run.status == "completed" and run.run_id in results
    ]
    planned = Counter(run.config_hash for run in manifest.runs)
    return study_statistics(configs, completed, planned=planned)


def result_rows(
    manifest: StudyManifest, results: dict[str, ExperimentResult]
) -> list[dict[str, Any]]:
    """One flat row per completed run, in run order: run_id, position, cycle + summary_row()."""
    rows: list[dict[str, Any]] = []
    for run in sorted(manifest.runs, key=lambda r: r.position):
        if run.status == "completed" and run.run_id in results:
            row: dict[str, Any] = {
                "run_id": run.run_id,
                "position": run.position,
                "cycle": run.cycle,
            }
            row.update(results[run.run_id].summary_row())
            rows.append(row)
    return rows


def write_study_outputs(
    study_dir: Path,
    result: StudyResult,
    manifest: StudyManifest,
    results: dict[str, ExperimentResult],
) -> None:
    """Write ``study_summary.json`` and (when any run completed) ``results.parquet``."""
    from llenergymeasure.results.io import write_rows_parquet

    rows = result_rows(manifest, results)
    if rows:
        write_rows_parquet(rows, study_dir / RESULTS_TABLE_NAME, base=study_dir)
    result.to_json(study_dir / SUMMARY_NAME, base=study_dir)


# --- the table printed by ``llem run study.yaml`` ------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def format_study_summary(result: StudyResult, manifest: StudyManifest) -> str:
    """Per config: runs completed, mean J/token, mean tok/s; then failed runs and paths."""
    from llenergymeasure.results.io import flatten

    c = result.counts
    lines = [
        f"llem study  {result.study_name}  (design {result.study_design_hash})",
        f"  runs      {c.completed}/{c.runs_planned} completed, {c.failed} failed"
        + (f", {c.not_run} not run" if c.not_run else "")
        + f"; {c.experiments} config(s) x {result.protocol.n_cycles} cycle(s)"
        + (f"; {c.skipped} grid points skipped" if c.skipped else ""),
    ]
    varying = varying_fields(manifest.experiments, exclude=("backend", "precision"))
    by_hash: dict[str, list[ExperimentResult]] = {}
    for r in result.results:
        by_hash.setdefault(r.measurement_config_hash, []).append(r)
    rows: list[list[str]] = []
    for i, config in enumerate(manifest.experiments, 1):
        h = next((r.config_hash for r in manifest.runs if r.config_index == i - 1), "?" * 16)
        planned = sum(1 for r in manifest.runs if r.config_index == i - 1)
        done = by_hash.get(h, [])
        jpt = _mean([r.energy_per_output_token_j for r in done])
        tps = _mean([r.tokens_per_second for r in done])
        flat = flatten(config.model_dump(mode="json"))
        rows.append(
            [
                str(i),
                h,
                config.backend,
                config.precision,
                f"{len(done)}/{planned}",
                "n/a" if jpt is None else f"{jpt:.4g}",
                "n/a" if tps is None else f"{tps:.1f}",
                " ".join(f"{k}={flat.get(k)}" for k in varying),
            ]
        )
    lines += [
        "",
        render_table(
            ["#", "config", "backend", "prec", "runs", "J/token", "tok/s", "varies"],
            rows,
            justify=["right", "left", "left", "left", "right", "right", "right", "left"],
        ),
    ]
    if all(r.energy_per_output_token_j is None for r in result.results) and result.results:
        lines.append("  (energy not measured on this machine: no GPU energy sensor)")
    if result.failed:
        lines += ["", "failed runs:"]
        for f in result.failed:
            message = f.message.strip().splitlines()[0] if f.message.strip() else ""
            lines.append(f"  {f.run_id}  [{f.status}] {f.error_type}: {message}")
    if result.rescued:
        lines += ["", "rescued results (not in the study directory):"]
        lines += [f"  {item}" for item in result.rescued]
    if result.study_dir is not None:
        lines += ["", f"  saved     {Path(result.study_dir) / SUMMARY_NAME}"]
        if result.results_table:
            lines.append(f"            {Path(result.study_dir) / result.results_table}")
    return "\n".join(lines)


def study_exit_code(result: StudyResult) -> int:
    """3 when a finished result had to be saved to a rescue folder (even if others failed: the
    output says where it went), else 0 when every planned run completed, 1 when any failed or
    did not run."""
    if result.rescued:
        return 3
    return 0 if result.ok else 1
