"""Load a script of ``benchmarks/`` as a module, for its tests (shared by the table tests)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name`` (with its sibling modules)."""
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings (_markdown, ...)
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def redirect_sections(module: ModuleType, monkeypatch: pytest.MonkeyPatch, path: Path) -> Path:
    """Make the section scripts write to ``path``, a BENCHMARKS.md holding one other section
    (``## Other``, text ``kept``), instead of the repository's. ``module`` is a loaded script."""
    path.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    monkeypatch.setattr(sections(module), "BENCHMARKS_MD", path)
    return path


def refuse_writes(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any write of a BENCHMARKS.md section by the scripts fail the test."""

    def refuse(body: str, title: str, path: Path | None = None) -> None:
        raise AssertionError("--no-write wrote BENCHMARKS.md")

    monkeypatch.setattr(sections(module), "update_section", refuse)


def sections(module: ModuleType) -> ModuleType:
    """The ``_markdown`` helper module that the loaded script ``module`` writes sections with."""
    assert module.__name__ in sys.modules
    return sys.modules["_markdown"]


def assert_tables_well_formed(out: str, first_lines: Sequence[str]) -> None:
    """Each table of ``out`` that starts with one of ``first_lines``: every row has as many
    cells as its header."""
    for first in first_lines:
        block = out[out.index(first) :].split("\n\n")[0].splitlines()
        assert {line.count("|") for line in block} == {block[0].count("|")}, first


def write_study(directory: Path, runs: Sequence[tuple[int, str | None]]) -> Path:
    """``directory`` as ``llem run`` leaves a study: ``study_manifest.json`` and, per run given
    as (cycle, result JSON text), ``<run_id>/result.json``; a None result is a failed run."""
    directory.mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    for position, (cycle, result) in enumerate(runs, 1):
        run_id = f"{position:03d}_llama8b_pytorch_c{cycle}"
        entry = {"run_id": run_id, "cycle": cycle, "config_index": 0, "status": "failed"}
        if result is not None:
            (directory / run_id).mkdir()
            (directory / run_id / "result.json").write_text(result)
            entry.update(status="completed", result_path=f"{run_id}/result.json")
        entries.append(entry)
    (directory / "study_manifest.json").write_text(json.dumps({"runs": entries}))
    return directory
