"""The lazy public API is listable and documented without importing torch."""

from __future__ import annotations

import pydoc
import subprocess
import sys

import llenergymeasure


def test_every_name_in_all_resolves_and_is_listed_by_dir():
    for name in llenergymeasure.__all__:
        assert getattr(llenergymeasure, name) is not None
        assert name in dir(llenergymeasure)


def test_resume_study_is_exported():
    from llenergymeasure.api import resume_study

    assert llenergymeasure.resume_study is resume_study
    assert "resume_study" in llenergymeasure.__all__


def test_help_shows_the_api_functions_and_types():
    text = pydoc.render_doc(llenergymeasure, renderer=pydoc.plaintext)
    for name in ("run_experiment", "run_study", "resume_study", "ExperimentConfig", "StudyResult"):
        assert name in text


def test_help_does_not_import_torch():
    code = (
        "import sys, pydoc, llenergymeasure as l; pydoc.render_doc(l); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
