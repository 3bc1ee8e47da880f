"""Online mode keeps to its floor: no upward imports, no heavy engine imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import llenergymeasure

SRC = Path(llenergymeasure.__file__).parent
# online/ sits on the harness floor: it may use config, datasets (the Prompt it sends), energy,
# engines, results, exceptions.
ALLOWED_FOR_ONLINE = {
    "config",
    "datasets",
    "energy",
    "engines",
    "results",
    "exceptions",
    "online",
    "files",  # floor 0: the one write path
    "redaction",  # floor 0
    "logs",  # floor 0: the logger tree (a started server's environment)
}


def imported_packages(path: Path) -> set[str]:
    """Top-level llenergymeasure sub-packages a module imports (anywhere in it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "llenergymeasure" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("module", sorted((SRC / "online").glob("*.py")), ids=lambda p: p.name)
def test_online_modules_import_only_from_their_floor_or_below(module: Path):
    assert imported_packages(module) <= ALLOWED_FOR_ONLINE


def test_the_online_config_depends_on_config_only():
    assert imported_packages(SRC / "config" / "online.py") <= {"config"}


def test_online_mode_does_not_import_torch_or_an_engine():
    code = (
        "import sys, llenergymeasure.online.run\n"
        "heavy = ('torch', 'vllm', 'tensorrt_llm', 'transformers')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
