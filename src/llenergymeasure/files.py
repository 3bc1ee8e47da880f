"""The one write path: every file llem writes goes through this module.

Every write here is:

- **redacted**: text and JSON pass through ``llenergymeasure.redaction`` before they become
  bytes; tables have their string cells and figures their text redacted before they are
  serialised (``write_table``, ``write_figure``);
- **atomic**: a temp file in the destination's directory, ``fsync``, ``os.replace``, then
  ``fsync`` of the directory: a crash leaves the old file or the new one, never half of one;
- **never through a symbolic link**: the destination itself must not be a link, and no
  directory between the ``base`` a caller names and the file may be one (each is opened with
  ``O_NOFOLLOW`` relative to its parent, so a link swapped in mid-way is not followed either).
  ``base`` is the folder the user chose (``-o``, ``output.results_dir``, ``--resume DIR``,
  the path given to ``to_json``): it may itself be a link (a results folder on a scratch
  filesystem often is), and it must exist (a write never recreates a folder that vanished);
  without ``base`` the destination's own directory is the base and is created if missing;
- **never over an input**: files this process read as inputs (the config file, the dataset,
  the user config, a study manifest or results being resumed or reported) are registered with
  ``register_input``, and a write whose destination is one of them is refused;
- **never over a measurement**: an existing experiment result (``experiment_id``), study
  manifest or study summary (same study: design hash and creation time) or parquet table is
  replaced only by the same measurement (or table); anything else is refused.

A refusal is ``UnsafeWriteError`` (exit 2); operating-system failures (disk full, read-only,
permission denied, not a directory, folder gone) are ``OSError`` for the caller to handle:
``llenergymeasure.rescue.save_files`` (used to save a finished measurement) tries the place
asked for, then the rescue folders, and reports where the files went, so a finished
measurement is never thrown away. ``llenergymeasure.os_errors.environment_error`` turns an
``OSError`` into a clear message with a hint (exit 4).

Logs that grow while a process runs (a started server's output) are appended through
``open_log`` (``O_NOFOLLOW``, redacted line by line), not atomically: they must survive a crash.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import IO, Any

from llenergymeasure.exceptions import UnsafeWriteError
from llenergymeasure.redaction import REDACTED, is_secret_key, redact, redact_json, redact_text

__all__ = [
    "STALE_TMP_SECONDS",
    "LogFile",
    "is_input",
    "make_directory",
    "open_log",
    "pump_lines",
    "register_input",
    "remove_stale_temp_files",
    "write_bytes",
    "write_csv",
    "write_figure",
    "write_json",
    "write_table",
    "write_text",
]

#: A temp file of a write this old was left by a killed writer (a live write takes seconds).
STALE_TMP_SECONDS = 300.0


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# --- inputs of this process ----------------------------------------------------------------

_inputs: dict[tuple[int, int], str] = {}
_written: set[tuple[int, int]] = set()  # files this process wrote (it may replace them)
_registry_lock = threading.Lock()


def register_input(path: str | os.PathLike[str]) -> None:
    """Remember that this process reads ``path``: no write may replace it (missing: ignored)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        with _registry_lock:
            _inputs[(st.st_dev, st.st_ino)] = str(path)


def is_input(path: str | os.PathLike[str]) -> str | None:
    """The path under which ``path``'s file was registered as an input, if it was."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _registry_lock:
        return _inputs.get((st.st_dev, st.st_ino))


def forget_inputs() -> None:
    """Clear the input registry (for long-lived processes that run several commands)."""
    with _registry_lock:
        _inputs.clear()


# --- what an existing file is --------------------------------------------------------------


def _identity(data: bytes) -> tuple[str, str] | None:
    """What measurement ``data`` is, if it is one: ``(kind, key)``.

    ``("result", experiment_id)``, ``("manifest", design@created)``, ``("summary",
    design@started)``, ``("table", "")`` for parquet; None for anything else.
    """
    if data[:4] == b"PAR1":
        return ("table", "")
    head = data.lstrip()[:1]
    if head != b"{":
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if "experiment_id" in obj and "measurement_config_hash" in obj:
        return ("result", str(obj["experiment_id"]))
    if "study_design_hash" in obj and "runs" in obj:
        return ("manifest", f"{obj['study_design_hash']}@{obj.get('created_at')}")
    if "study_design_hash" in obj and "counts" in obj:
        return ("summary", f"{obj['study_design_hash']}@{obj.get('started_at_utc')}")
    return None


_IDENTITY_NAMES = {
    "result": "the experiment result",
    "manifest": "the study manifest",
    "summary": "the study summary",
    "table": "the results table",
}


# --- the write ------------------------------------------------------------------------------


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (the operating-system call tests inject faults into)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _open_directory(directory: Path, base: Path | None) -> int:
    """An fd of ``directory``, walked from ``base`` without following any link below it."""
    if base is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder of the path should be
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
            ) from None
        return os.open(directory, _O_DIR)
    try:
        rel = directory.relative_to(base)
    except ValueError:
        raise ValueError(f"{directory} is not inside {base}") from None
    fd = os.open(base, _O_DIR)
    try:
        for part in rel.parts:
            if part in ("", "."):
                continue
            if part == "..":
                raise UnsafeWriteError(
                    f"refusing to write to {directory}: the path leaves {base}",
                    hint="give a path inside the results folder",
                )
            try:
                child = os.open(part, _O_DIR | _O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, _O_DIR | _O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                    raise UnsafeWriteError(
                        f"refusing to write under {directory}: {base / rel} contains a symbolic "
                        f"link ({part!r})",
                        hint="llem never writes through a link inside a results folder; remove "
                        "the link or choose another folder",
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_destination(path: Path, name: str, dir_fd: int, data: bytes) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeWriteError(
            f"refusing to write {path}: it is a symbolic link",
            hint="llem never writes through or over a link; remove it or choose another path",
        )
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    key = (st.st_dev, st.st_ino)
    with _registry_lock:
        source = _inputs.get(key)
        ours = key in _written
    if source is not None:
        raise UnsafeWriteError(
            f"refusing to write {path}: it is {source}, which this command reads",
            hint="choose an output path that is not the config, dataset or results being read",
        )
    if ours or not stat.S_ISREG(st.st_mode):
        return
    old = _read_existing(name, dir_fd)
    existing = _identity(old) if old is not None else None
    if existing is None:
        return
    new = _identity(data)
    if new != existing and not (existing[0] == "table" and new is not None and new[0] == "table"):
        what = _IDENTITY_NAMES[existing[0]]
        ident = f" {existing[1]}" if existing[0] == "result" else ""
        raise UnsafeWriteError(
            f"refusing to replace {path}: it holds {what}{ident}, a measurement llem never "
            "replaces with anything else",
            hint="choose another output path; move the file away first if it must go",
        )


#: Existing JSON files larger than this are not parsed to tell what they are.
_MAX_IDENTITY_BYTES = 1 << 30


def _read_existing(name: str, dir_fd: int) -> bytes | None:
    """Enough of an existing file to tell what it is: its head, or all of it when it may be a
    JSON measurement (which must be parsed)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(64)
        if not head.lstrip().startswith(b"{"):
            return head
        if os.fstat(fh.fileno()).st_size > _MAX_IDENTITY_BYTES:
            return None
        return head + fh.read()


def write_bytes(path: str | os.PathLike[str], data: bytes, *, base: Path | None = None) -> Path:
    """Write ``data`` (already redacted or binary) to ``path`` with every property of the
    module docstring; returns ``path``. Prefer ``write_text``/``write_json``/``write_table``,
    which redact."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    dir_fd = _open_directory(path.parent, Path(base) if base is not None else None)
    try:
        _check_destination(path, path.name, dir_fd, data)
        remove_stale_temp_files(path.parent, dir_fd=dir_fd)
        tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o666,  # less the umask, as a plain open() would
            dir_fd=dir_fd,
        )
        try:
            try:
                _write_fd(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        with contextlib.suppress(OSError):  # not every filesystem syncs a directory
            os.fsync(dir_fd)
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        with _registry_lock:
            _written.add((st.st_dev, st.st_ino))
    finally:
        os.close(dir_fd)
    return path


def make_directory(path: str | os.PathLike[str], *, base: Path) -> Path:
    """Create ``path`` (and the folders between) under the existing ``base``, following no link
    below ``base``; an existing directory is fine. Returns ``path``."""
    path = Path(path)
    os.close(_open_directory(path, Path(base)))
    return path


def write_text(path: str | os.PathLike[str], text: str, *, base: Path | None = None) -> Path:
    """Write redacted ``text`` (UTF-8)."""
    return write_bytes(path, redact_text(text).encode("utf-8"), base=base)


def write_json(
    path: str | os.PathLike[str], obj: Any, *, base: Path | None = None, indent: int | None = 2
) -> Path:
    """Write ``obj`` (a pydantic model, plain data or JSON text) as redacted JSON."""
    return write_bytes(path, (redact_json(obj, indent=indent) + "\n").encode("utf-8"), base=base)


def redact_table(table: Any) -> Any:
    """A ``pyarrow.Table`` with its string cells redacted (and the whole column of a
    credential-like name replaced by the placeholder)."""
    import pyarrow as pa

    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if is_secret_key(name.rsplit(".", 1)[-1]):
            values = [None if v is None else REDACTED for v in column.to_pylist()]
            columns.append(pa.array(values, type=pa.string()))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values = [None if v is None else redact_text(v) for v in column.to_pylist()]
            columns.append(pa.array(values, type=kind))
        elif pa.types.is_nested(kind) or pa.types.is_dictionary(kind):
            columns.append(pa.array(redact(column.to_pylist()), type=kind))
        else:
            columns.append(column)
    names = [redact_text(n) for n in table.column_names]
    return pa.table(columns, names=names)


def write_table(path: str | os.PathLike[str], table: Any, *, base: Path | None = None) -> Path:
    """Write a ``pyarrow.Table`` as parquet (serialised in memory, then the same atomic write)."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(redact_table(table), sink)
    return write_bytes(path, sink.getvalue(), base=base)


def write_csv(
    path: str | os.PathLike[str], rows: list[dict[str, Any]], *, base: Path | None = None
) -> Path:
    """Write flat rows as CSV (redacted)."""
    import csv

    rows = redact(rows)
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue(), base=base)


def write_figure(
    path: str | os.PathLike[str], figure: Any, *, base: Path | None = None, **savefig: Any
) -> Path:
    """Write a matplotlib figure as PNG, its text (titles, labels, legends) redacted first."""
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        content = text.get_text()
        if content:
            text.set_text(redact_text(content))
    sink = io.BytesIO()
    figure.savefig(sink, format="png", **savefig)
    return write_bytes(path, sink.getvalue(), base=base)


def remove_stale_temp_files(
    directory: Path, *, older_than_s: float = STALE_TMP_SECONDS, dir_fd: int | None = None
) -> None:
    """Delete ``.<name>.<random>.tmp`` files of killed atomic writes in ``directory``."""
    cutoff = time.time() - older_than_s
    with contextlib.suppress(OSError):
        names = os.listdir(dir_fd) if dir_fd is not None else os.listdir(directory)
        for name in names:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            with contextlib.suppress(OSError):
                st = (
                    os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if dir_fd is not None
                    else os.lstat(directory / name)
                )
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    if dir_fd is not None:
                        os.unlink(name, dir_fd=dir_fd)
                    else:
                        os.unlink(directory / name)


# --- logs appended while a process runs ------------------------------------------------------


class LogFile:
    """A log appended line by line, each line redacted; opened without following a link."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()
        self._pending = b""

    def write(self, data: bytes | str) -> None:
        """Append ``data``; complete lines are redacted and written at once, a partial line
        when the log is flushed or closed."""
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        with self._lock:
            self._pending += raw
            if b"\n" not in self._pending and len(self._pending) < 65536:
                return
            head, sep, rest = self._pending.rpartition(b"\n")
            chunk, self._pending = (head + sep, rest) if sep else (self._pending, b"")
            self._emit(chunk)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                chunk, self._pending = self._pending, b""
                self._emit(chunk)

    def _emit(self, chunk: bytes) -> None:
        if self._fd < 0:
            return
        text = redact_text(chunk.decode("utf-8", "surrogateescape"))
        _write_fd(self._fd, text.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(path: str | os.PathLike[str], *, base: Path | None = None) -> LogFile:
    """Open ``path`` for appending (created if missing; never through a link, never an input)."""
    path = Path(path)
    dir_fd = _open_directory(path.parent, Path(base) if base is not None else None)
    try:
        _check_destination(path, path.name, dir_fd, b"")
        fd = os.open(
            path.name,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o666,
            dir_fd=dir_fd,
        )
    finally:
        os.close(dir_fd)
    return LogFile(path, fd)


def pump_lines(source: IO[bytes], log: LogFile, *, close: bool = True) -> threading.Thread:
    """Copy ``source`` (a child's stdout) into ``log`` on a daemon thread, line by line."""

    def run() -> None:
        try:
            for line in iter(lambda: source.readline(65536), b""):
                log.write(line)
        except (OSError, ValueError):
            pass
        finally:
            log.flush()
            if close:
                log.close()

    thread = threading.Thread(target=run, name=f"llem-log-{log.path.name}", daemon=True)
    thread.start()
    return thread
