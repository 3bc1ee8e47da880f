"""Shared helpers for the BENCHMARKS.md table scripts: read ``llem run`` study directories.

A study directory holds ``study_manifest.json`` and one ``<run_id>/result.json`` per completed
run. The scripts take either that directory or the ``-o`` folder that holds it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One completed run of a study: where it came from and its result JSON (a dict)."""

    study: str  # the directory as named on the command line
    run_id: str
    cycle: int
    result: dict[str, Any]
    config_index: int = 0  # which of the manifest's experiments it ran

    @property
    def split(self) -> dict[str, Any] | None:
        return self.result.get("phase_split")

    @property
    def attribution(self) -> dict[str, Any] | None:
        return self.result.get("energy_attribution")

    @property
    def reuse(self) -> str:
        return "reused" if self.result.get("engine_reused") else "fresh"

    @property
    def config(self) -> dict[str, Any]:
        return self.result["config"]


def study_dir(path: Path) -> Path:
    """``path`` itself when it holds a manifest, else the latest study directory inside it."""
    if (path / "study_manifest.json").is_file():
        return path
    found = sorted(p.parent for p in path.glob("*/study_manifest.json"))
    if not found:
        raise SystemExit(f"{path}: no study_manifest.json in it or in a folder inside it")
    if len(found) > 1:
        print(
            f"{path}: {len(found)} studies inside, using the latest {found[-1].name}",
            file=sys.stderr,
        )
    return found[-1]


def load_study(path: Path) -> tuple[dict[str, Any], list[Run]]:
    """The manifest and the completed runs (manifest order) of the study at or inside ``path``."""
    directory = study_dir(path)
    manifest = json.loads((directory / "study_manifest.json").read_text())
    runs = []
    for entry in manifest["runs"]:
        if entry.get("status") == "completed" and entry.get("result_path"):
            result = json.loads((directory / entry["result_path"]).read_text())
            runs.append(
                Run(
                    path.name,
                    entry["run_id"],
                    int(entry.get("cycle", 1)),
                    result,
                    int(entry.get("config_index", 0)),
                )
            )
    return manifest, runs


def load_runs(path: Path) -> list[Run]:
    """The completed runs of the study at (or inside) ``path``, in manifest order."""
    return load_study(path)[1]


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def mean_cv(values: list[float]) -> tuple[float, float]:
    """Mean and coefficient of variation (sample stdev / mean; 0 for a single value)."""
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if len(values) > 1 and mean else 0.0
    return mean, cv


def machine(results: Iterable[dict[str, Any]]) -> str:
    """GPU name and driver of the results' machines, each distinct one once."""
    seen: list[str] = []
    for result in results:
        env = result.get("environment", {})
        gpus = env.get("gpus") or []
        name = gpus[0].get("name") if gpus and isinstance(gpus[0], dict) else "unknown GPU"
        line = f"{name}, driver {env.get('driver_version') or '?'}"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen) or "unknown GPU, driver ?"
