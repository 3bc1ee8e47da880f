"""Shell completion of ``llem run`` values (``llem --install-completion`` sets it up).

The values come from the tables the config is validated against: engine names from the engine
catalogue, precisions from the precision type (narrowed to what the engine already on the
command line accepts), dataset names from the built-in datasets plus ``.jsonl`` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

__all__ = ["complete_backend", "complete_dataset", "complete_precision", "precision_values"]


def precision_values(backend: str | None = None) -> list[str]:
    """Every precision of the config schema, or those ``backend`` accepts (catalogue order)."""
    from llenergymeasure.config.catalogue import engine_names, engine_spec
    from llenergymeasure.config.models import Precision

    if backend is not None and backend in engine_names():
        return list(engine_spec(backend).precisions)
    return list(get_args(Precision))


def complete_backend(incomplete: str) -> list[str]:
    """Engine names starting with ``incomplete``."""
    from llenergymeasure.config.catalogue import engine_names

    return [name for name in engine_names() if name.startswith(incomplete)]


def complete_precision(ctx: Any, incomplete: str) -> list[str]:
    """Precisions starting with ``incomplete``; only the engine's when ``-b`` came first."""
    backend = (getattr(ctx, "params", None) or {}).get("backend")
    return [p for p in precision_values(backend) if p.startswith(incomplete)]


def complete_dataset(incomplete: str) -> list[str]:
    """Built-in dataset names and ``.jsonl`` files (and folders on the way) matching
    ``incomplete``."""
    from llenergymeasure.config.models import BUILTIN_DATASETS

    values = [name for name in BUILTIN_DATASETS if name.startswith(incomplete)]
    head, sep, prefix = incomplete.rpartition("/")
    folder = Path(os.path.expanduser(head + sep)) if sep else Path(".")
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return values
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name.startswith("."):
            continue
        shown = f"{head}{sep}{entry.name}"
        if entry.is_dir():
            values.append(shown + "/")
        elif entry.suffix.lower() == ".jsonl":
            values.append(shown)
    return values
