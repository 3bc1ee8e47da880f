"""Result locations and flat tables: unique output directories, rows for parquet and CSV.

Every byte is written by ``llenergymeasure.files`` (atomic, redacted, no links, no inputs).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import ConfigError


def model_slug(model: str) -> str:
    """Filesystem-safe short name of a model id: ``meta-llama/Llama-3.1-8B`` -> ``Llama-3.1-8B``."""
    name = model.rstrip("/").split("/")[-1].split(":")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:80]


def unique_directory(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name_1``, ``name_2``... never reusing one.

    ``ConfigError`` (exit 2) naming ``parent`` when it is a file or cannot be written, so an
    unusable output location is found before anything is measured.
    """
    if parent.exists() and not parent.is_dir():
        raise ConfigError(
            f"output directory {parent} is not a directory",
            hint="give -o / output.results_dir a directory path",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create output directory {parent}: {exc.strerror or exc}",
            hint="choose a writable location with -o or output.results_dir",
        ) from None
    candidate = parent / name
    i = 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            i += 1
            candidate = parent / f"{name}_{i}"
        except OSError as exc:
            raise ConfigError(
                f"cannot write in output directory {parent}: {exc.strerror or exc}",
                hint="choose a writable location with -o or output.results_dir",
            ) from None


def experiment_dir_name(model: str, backend: str, when: datetime) -> str:
    """The run directory name: ``<model-slug>_<backend>_<YYYY-MM-DDTHH-MM-SS>``."""
    return f"{model_slug(model)}_{backend}_{when.strftime('%Y-%m-%dT%H-%M-%S')}"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists and scalars kept as values (lists as JSON text)."""
    import json

    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        out[prefix[:-1]] = json.dumps(obj)
    else:
        out[prefix[:-1]] = obj
    return out


def _table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for row in rows:
        for key in columns:
            columns[key].append(row.get(key))
    arrays = {}
    for key, values in columns.items():
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[key] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(arrays)


def write_table_parquet(table: Any, path: Path, *, base: Path | None = None) -> Path:
    """Write a ``pyarrow.Table`` as parquet through the one write path."""
    from llenergymeasure.files import write_table

    return write_table(path, table, base=base)


def write_rows_parquet(rows: list[dict[str, Any]], path: Path, *, base: Path | None = None) -> Path:
    """Write flat rows as a parquet table through the one write path."""
    from llenergymeasure.redaction import redact

    return write_table_parquet(_table(redact(rows)), path, base=base)


def write_rows_csv(rows: list[dict[str, Any]], path: Path, *, base: Path | None = None) -> Path:
    """Write flat rows as CSV through the one write path."""
    from llenergymeasure.files import write_csv

    return write_csv(path, rows, base=base)
