"""Study execution: run order, per-run subprocess isolation, manifest checkpoints, resume.

Entry points: ``run_study_config`` (a fresh study) and ``resume_study_dir`` (continue one);
``StudyRunner`` is the engine behind both.
"""

from __future__ import annotations

from llenergymeasure.study.runner import (
    StudyRunner,
    resume_study_dir,
    run_order,
    run_study_config,
)
from llenergymeasure.study.worker import RunRequest, measure_worker

__all__ = [
    "RunRequest",
    "StudyRunner",
    "measure_worker",
    "resume_study_dir",
    "run_order",
    "run_study_config",
]
