"""Shared helpers for benchmark scripts: replace one ``## Section`` of BENCHMARKS.md; cells."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def update_section(body: str, title: str, path: Path | None = None) -> None:
    """Replace the ``## {title}`` section of ``path`` (default BENCHMARKS.md) with ``body``
    (append if absent)."""
    path = BENCHMARKS_MD if path is None else path
    block = f"## {title}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def add_section_options(parser: argparse.ArgumentParser, *, extra: bool = True) -> None:
    """The options every section script takes: ``--extra MD`` (appended) and ``--no-write``."""
    if extra:
        parser.add_argument("--extra", type=Path, help="markdown appended to the section")
    parser.add_argument("--no-write", action="store_true", help="print only")


def publish(body: str, title: str, no_write: bool) -> None:
    """Print the section and, unless ``no_write``, replace it in BENCHMARKS.md."""
    print(body)
    if not no_write:
        update_section(body, title)


def num(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "n/a" when it is None (not measured)."""
    return "n/a" if value is None else format(value, spec)


def num_pair(a: float | None, b: float | None, spec: str) -> str:
    """Two figures as one cell, "a / b" (e.g. raw / adjusted, p50 / p99), each ``num``."""
    return f"{num(a, spec)} / {num(b, spec)}"
