"""Helpers of the hostile-input tests: real small filesystems, tiny configs, a grep over outputs.

``small_tmpfs`` and ``read_only_bind`` mount real filesystems under the test's folder; they need
root (and a kernel that lets it mount) and skip the test cleanly otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from llenergymeasure.testing.configs import tiny_experiment


def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", *args], capture_output=True, check=False)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield path
    finally:
        _umount(path)


def fill(path: Path, leave_bytes: int = 2048) -> None:
    """Fill the filesystem of ``path`` up to ``leave_bytes`` free (one filler file)."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(free - leave_bytes, 0))


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted onto itself read-only (skips where mounting is refused)."""
    if not _mount("--bind", str(path), str(path)):
        pytest.skip("cannot bind-mount here (needs root and mount rights)")
    try:
        if not _mount("-o", "remount,bind,ro", str(path)):
            pytest.skip("cannot remount read-only here")
        yield path
    finally:
        _umount(path)


def make_read_only(path: Path) -> None:
    """Remount ``path`` read-only in place (no context: ``undo_mounts`` ends it)."""
    if not (_mount("--bind", str(path), str(path)) and _mount("-o", "remount,bind,ro", str(path))):
        pytest.skip("cannot bind-mount read-only here (needs root and mount rights)")


def undo_mounts(path: Path) -> None:
    _umount(path)


def tiny_yaml(directory: Path, filename: str = "tiny.yaml", **overrides: Any) -> Path:
    """A tiny ``builtin:tiny`` experiment (or study) YAML with ``overrides``, written to
    ``directory/filename``."""
    data = tiny_experiment(precision="fp32", **overrides)
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def files_under(*roots: Path) -> list[Path]:
    """Every regular file below ``roots`` (links not followed)."""
    out: list[Path] = []
    for root in roots:
        if root.is_file():
            out.append(root)
            continue
        for dirpath, _dirs, names in os.walk(root):
            out += [Path(dirpath) / n for n in names if not Path(dirpath, n).is_symlink()]
    return sorted(out)


def leaks(secrets: Iterable[str], texts: dict[str, bytes | str]) -> list[str]:
    """``"<secret> in <where>"`` for every planted secret found in ``texts``."""
    found = []
    for secret in secrets:
        needle = secret.encode()
        for where, content in texts.items():
            data = (
                content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
            )
            if needle in data:
                found.append(f"{secret} in {where}")
    return found


def grep_outputs(secrets: Iterable[str], *roots: Path, **streams: str) -> list[str]:
    """Every planted secret found in any file below ``roots`` or in the named ``streams``."""
    texts: dict[str, bytes | str] = {str(p): p.read_bytes() for p in files_under(*roots)}
    texts.update(streams)
    return leaks(secrets, texts)


@dataclass(frozen=True)
class LinkSwapWorker:
    """The fake measurement of ``testing.study``; then, at the chosen positions, the run's
    folder is swapped for a link to ``victim`` before the result is saved (picklable: it runs
    in the study's spawned processes)."""

    victim: str
    at: frozenset[int]

    def __call__(self, request: Any, progress: Any) -> Any:
        from llenergymeasure.testing.study import fake_measure_worker

        measured = fake_measure_worker(request, progress)
        if request.position in self.at:
            run_dir = Path(request.run_dir)
            shutil.rmtree(run_dir)
            run_dir.symlink_to(self.victim, target_is_directory=True)
        return measured
