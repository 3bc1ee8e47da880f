"""Operating-system errors (and damaged model files) explained: an ``EnvironmentProblem``
(exit 4) with a clear message and a hint, and the one line saying why a write failed."""

from __future__ import annotations

import errno

from llenergymeasure.exceptions import EnvironmentProblem

__all__ = ["damaged_model_error", "environment_error", "failure_reason"]


def failure_reason(exc: BaseException) -> str:
    """One line saying why a write failed."""
    if isinstance(exc, OSError):
        return environment_error(exc).message
    return getattr(exc, "message", None) or str(exc)


_ERRNO_TEXT: dict[int, tuple[str, str]] = {
    errno.ENOSPC: (
        "no space left on the device",
        "free space (or choose another folder with -o / output.results_dir) and run again",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space within your quota or choose another folder with -o",
    ),
    errno.EROFS: (
        "the filesystem is read-only",
        "choose a writable folder with -o / output.results_dir",
    ),
    errno.EACCES: (
        "permission denied",
        "check the folder's owner and permissions, or choose another folder with -o",
    ),
    errno.EPERM: (
        "operation not permitted",
        "check the folder's owner and permissions, or choose another folder with -o",
    ),
    errno.ENOTDIR: (
        "a part of the path is a file, not a directory",
        "remove or rename the file that is in the way, or choose another path",
    ),
    errno.EISDIR: (
        "the path is a directory, not a file",
        "give a file path, or remove the directory that is in the way",
    ),
    errno.ENOENT: (
        "no such file or directory (was the folder moved or deleted?)",
        "check that the folder still exists; llem does not recreate a folder that vanished",
    ),
    errno.ELOOP: (
        "too many levels of symbolic links (or a link where none is allowed)",
        "remove the symbolic link from the path",
    ),
    errno.EMFILE: (
        "too many open files",
        "raise the open-file limit (ulimit -n) and run again",
    ),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
    errno.EIO: (
        "input/output error from the device",
        "check the disk or filesystem (dmesg) and run again",
    ),
    errno.EFBIG: ("the file is too large for the filesystem", "choose another filesystem"),
}


def environment_error(exc: OSError, *, doing: str | None = None) -> EnvironmentProblem:
    """A clear ``EnvironmentProblem`` (exit 4) for an operating-system error ``exc``."""
    text, hint = _ERRNO_TEXT.get(
        exc.errno if exc.errno is not None else -1,
        (exc.strerror or str(exc) or type(exc).__name__, "check the path and run again"),
    )
    where = exc.filename if exc.filename is not None else None
    if where is None and exc.filename2 is not None:
        where = exc.filename2
    parts = [doing] if doing else []
    if where is not None:
        parts.append(str(where))
    lead = ": ".join(parts)
    message = f"{lead}: {text}" if lead else text
    return EnvironmentProblem(message, hint=hint, errno_value=exc.errno)


_DAMAGED_FILE_SIGNS = (
    "error while deserializing header",
    "metadataincompletebuffer",
    "headertoolarge",
    "invalid header length",
    "incomplete metadata",
    "file not fully covered",
    "unable to load weights",
    "pytorchstreamreader failed",
    "failed finding central directory",
    "unexpected end of file",
    "unexpected eof",
)


def damaged_model_error(
    exc: BaseException, *, model: str | None = None
) -> EnvironmentProblem | None:
    """An ``EnvironmentProblem`` (exit 4) when ``exc`` says a model file is truncated or damaged
    (a download or copy cut short, a full disk), with how to clear the Hugging Face cache; None
    for other errors."""
    text = f"{type(exc).__name__}: {exc}"
    if not any(sign in text.lower() for sign in _DAMAGED_FILE_SIGNS):
        return None
    first = text.splitlines()[0]
    what = f"a file of model {model!r}" if model else "a model file"
    return EnvironmentProblem(
        f"{what} could not be read; it looks truncated or damaged ({first})",
        hint="delete the model from the Hugging Face cache (huggingface-cli delete-cache, or "
        "remove its folder under ~/.cache/huggingface/hub) or replace the local copy, and run "
        "again; builtin:tiny is checked and rebuilt automatically",
    )
