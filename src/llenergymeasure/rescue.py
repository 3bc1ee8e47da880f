"""Saving a finished measurement: the place asked for, else a rescue folder.

``save_files`` writes a measurement's files (each through the one write path,
``llenergymeasure.files``) into the folder asked for; when any write fails it writes them all
into a fresh folder of the first rescue root that works (``rescue_roots``) and reports where
they went, so a finished measurement is never thrown away.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.exceptions import UnsafeWriteError
from llenergymeasure.os_errors import failure_reason

__all__ = [
    "RESCUE_DIR_ENV",
    "FileWriter",
    "SavedFiles",
    "rescue_folder",
    "rescue_roots",
    "save_files",
]

#: Environment variable naming the first folder a measurement is rescued to.
RESCUE_DIR_ENV = "LLEM_RESCUE_DIR"


def rescue_roots() -> list[Path]:
    """Where a measurement that cannot be saved where asked goes, in order: ``$LLEM_RESCUE_DIR``,
    the user data folder's ``rescued/``, then the temp folder's ``llenergymeasure-rescued/``."""
    roots: list[Path] = []
    env = os.environ.get(RESCUE_DIR_ENV)
    if env:
        roots.append(Path(env).expanduser())
    with contextlib.suppress(Exception):
        import platformdirs

        roots.append(Path(platformdirs.user_data_dir("llenergymeasure")) / "rescued")
    roots.append(Path(tempfile.gettempdir()) / f"llenergymeasure-rescued-{os.getuid()}")
    return roots


@dataclass
class SavedFiles:
    """Where a measurement's files went: ``directory`` (the one asked for, or a rescue folder)."""

    directory: Path
    rescued_from: Path | None = None
    reason: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def rescued(self) -> bool:
        return self.rescued_from is not None


#: A file of a measurement: its name and a function that writes it given (path, base).
FileWriter = Callable[[Path, Path | None], Path]


def save_files(
    directory: Path,
    writers: Mapping[str, FileWriter] | Iterable[tuple[str, FileWriter]],
    *,
    base: Path | None = None,
    rescue: bool = True,
) -> SavedFiles:
    """Write a finished measurement's files into ``directory``; if any write fails (a refusal
    or an operating-system error), write them all into a fresh folder of the first rescue root
    that works and say so. Raises the first error when ``rescue`` is off or no place at all
    could take them.
    """
    items = list(writers.items()) if isinstance(writers, Mapping) else list(writers)
    try:
        return SavedFiles(directory, files=[w(directory / name, base) for name, w in items])
    except (OSError, UnsafeWriteError) as exc:
        if not rescue:
            raise
        first: BaseException = exc
        reason = failure_reason(exc)
    for root in rescue_roots():
        try:
            target = _fresh_folder(root, directory.name or "measurement")
            files = [w(target / name, target) for name, w in items]
        except (OSError, UnsafeWriteError):
            continue
        return SavedFiles(target, rescued_from=directory, reason=reason, files=files)
    raise first


def rescue_folder(name: str, fill: Callable[[Path], object]) -> Path:
    """A fresh folder named after ``name`` under the first rescue root where ``fill(folder)``
    (which writes into it) succeeds; the first error when none does."""
    first: BaseException | None = None
    for root in rescue_roots():
        try:
            target = _fresh_folder(root, name)
            fill(target)
        except (OSError, UnsafeWriteError) as exc:
            first = first or exc
            continue
        return target
    assert first is not None
    raise first


def _fresh_folder(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for i in range(1000):
        candidate = root / (name if i == 0 else f"{name}_{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free rescue folder name", str(root / name))
