"""Entry point of one SLURM job: measure one run of a study, save into its run directory.

``python -m llenergymeasure.study.slurm_entry <study_dir> <position> [<attempt>]``

Reads the run (by its 1-based position) and its resolved config from the study manifest (read
only: the study process alone writes the manifest), measures it with the real worker and saves
``result.json`` (+ ``timeseries.parquet``) into ``<study_dir>/<run_id>/``. Its own status goes
to ``<run_dir>/slurm_status.json``: ``RUNNING`` at the start, then ``COMPLETED`` or ``FAILED``
(with the exception), so the study process can settle the run even without ``sacct``.
Exit code 0 on success, 1 on failure. Its log records go to stderr (the job's log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import UnsafeWriteError
from llenergymeasure.logs import process_logging, relay
from llenergymeasure.runners.slurm import STATUS_NAME
from llenergymeasure.study.worker import RunRequest, Worker, measure_worker, short_traceback

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _write_status(run_dir: Path, data: dict[str, Any]) -> None:
    from llenergymeasure.files import write_json

    write_json(run_dir / STATUS_NAME, data, base=run_dir.parent)


def main(argv: Sequence[str] | None = None, *, worker: Worker | None = None) -> int:
    """Measure the run at ``position`` of the study in ``study_dir``; the exit code."""
    with process_logging():
        return _measure(list(sys.argv[1:] if argv is None else argv), worker)


def _measure(args: list[str], worker: Worker | None) -> int:
    from llenergymeasure.study.manifest import load_manifest
    from llenergymeasure.study.planning import BASELINE_CACHE_NAME

    if len(args) not in (2, 3):
        logger.error("usage: slurm_entry <study_dir> <position> [<attempt>]")
        return 2
    study_dir, position = Path(args[0]), int(args[1])
    manifest = load_manifest(study_dir)
    entry = next((r for r in manifest.runs if r.position == position), None)
    if entry is None:
        logger.error("no run at position %d in %s", position, study_dir)
        return 2
    from llenergymeasure.files import make_directory
    from llenergymeasure.redaction import install_stream_redaction

    install_stream_redaction()  # the job's log (written by SLURM from our output) is redacted
    run_dir = study_dir / entry.run_id
    make_directory(run_dir, base=study_dir)  # never recreates a study folder that vanished
    job = _job_id()
    host = os.uname().nodename
    _write_status(run_dir, {"job_id": job, "state": "RUNNING", "host": host})
    request = RunRequest(
        run_id=entry.run_id,
        config=manifest.experiments[entry.config_index],
        run_dir=str(run_dir),
        cycle=entry.cycle,
        position=entry.position,
        attempt=int(args[2]) if len(args) == 3 else entry.attempts,
        baseline_cache_path=str(study_dir / BASELINE_CACHE_NAME),
        runner="local",
    )
    try:
        measured = (worker or measure_worker)(
            request, lambda text: relay(logger, text, run_id=entry.run_id)
        )
        path = measured.save(run_dir, base=study_dir)
    except Exception as exc:
        logger.error("%s", short_traceback(exc))
        error = {"type": type(exc).__name__, "message": str(exc) or repr(exc)}
        error["traceback"] = short_traceback(exc)
        _write_status(run_dir, {"job_id": job, "state": "FAILED", "host": host, "error": error})
        return 1
    done: dict[str, Any] = {"job_id": job, "state": "COMPLETED", "host": host}
    saved = measured.saved
    if saved is not None and saved.rescued:
        logger.warning(
            "%s: the result could not be saved in %s (%s); it was saved to %s",
            entry.run_id,
            run_dir,
            saved.reason,
            path,
        )
        done.update(rescued_to=str(path), rescue_reason=saved.reason)
    with contextlib.suppress(OSError, UnsafeWriteError):  # the log above says where it went
        _write_status(run_dir, done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
