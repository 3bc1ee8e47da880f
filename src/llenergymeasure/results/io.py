"""Writing results safely: atomic files, unique output directories, flat tables."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import ConfigError

#: A temp file of a write this old was left by a killed writer (a live write takes seconds).
STALE_TMP_SECONDS = 300.0


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(directory: Path, *, older_than_s: float = STALE_TMP_SECONDS) -> None:
    """Delete ``.<name>.<random>.tmp`` files of killed atomic writes in ``directory``."""
    cutoff = time.time() - older_than_s
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``.

    The file gets the permissions a plain ``open()`` would (0666 less the umask), and temp
    files that killed writes left in the directory are removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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


def write_table_parquet(table: Any, path: Path) -> Path:
    """Write a ``pyarrow.Table`` as parquet, atomically."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue())


def write_rows_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write flat rows as a parquet table, atomically."""
    return write_table_parquet(_table(rows), path)


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write flat rows as CSV, atomically."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
