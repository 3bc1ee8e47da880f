"""What guards a study while it runs: the study lock (one llem process at a time runs a study
directory) and SIGTERM read as Ctrl-C."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from llenergymeasure.exceptions import StudyError

__all__ = ["LOCK_NAME", "StudyLock"]

LOCK_NAME = ".study.lock"


class StudyLock:
    """Exclusive lock on a study directory, held while the study runs.

    The lock is ``flock`` on an open descriptor of the study **directory itself**: deleting or
    replacing files inside it cannot release it, and the kernel releases it when the process
    ends (even on SIGKILL). On a filesystem without directory locks (some NFS or Lustre
    mounts), a lock file ``.study.lock`` held open is the fallback; ``check`` (called before
    every manifest write) stops the study if that file was deleted or replaced, since a second
    process could then have locked a new one.
    """

    def __init__(self, study_dir: Path) -> None:
        self.study_dir = study_dir
        self._dir_fd: int | None = None
        self._file_fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        busy = StudyError(
            f"{self.study_dir} is being run by another llem process",
            hint="wait for it to finish, or stop it first",
        )
        try:
            dir_fd = os.open(self.study_dir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise StudyError(
                f"the study directory {self.study_dir} does not exist (was it moved or deleted?)",
                hint="give the directory a study wrote, e.g. results/<study-name>_<timestamp>",
            ) from None
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(dir_fd)
            raise busy from None
        except OSError:  # no directory locks on this filesystem: a lock file held open
            os.close(dir_fd)
            self._acquire_file(fcntl, busy)
            return
        self._dir_fd = dir_fd

    def _acquire_file(self, fcntl: Any, busy: StudyError) -> None:
        fd = os.open(self.study_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise busy from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._file_fd = fd

    def check(self) -> None:
        """``StudyError`` when a fallback lock file was deleted or replaced under this study."""
        if self._file_fd is None:
            return
        held = os.fstat(self._file_fd)
        try:
            now = os.stat(self.study_dir / LOCK_NAME, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise StudyError(
                f"the lock file {self.study_dir / LOCK_NAME} was deleted or replaced while "
                "this study ran; another llem process may be running it now, so this one stops",
                hint=f"when no other llem runs it: llem run --resume {self.study_dir}",
            )

    def release(self) -> None:
        if self._file_fd is not None:
            # Removed while still held, so no later process can lock the file being removed.
            with contextlib.suppress(OSError):
                held = os.fstat(self._file_fd)
                now = os.stat(self.study_dir / LOCK_NAME, follow_symlinks=False)
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    os.unlink(self.study_dir / LOCK_NAME)
            os.close(self._file_fd)
            self._file_fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
