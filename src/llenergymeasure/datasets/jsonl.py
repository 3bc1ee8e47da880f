"""JSONL prompt files: one ``{"prompt": ..., "max_new_tokens"?: int}`` object per line.

Blank lines are skipped, and so are metadata lines whose keys all start with ``_``
(e.g. ``{"_provenance": ..., "_license": ...}``). Other extra keys are ignored.

``scan_jsonl`` reads a file once, as a stream: each line is decoded (UTF-8) and parsed on its
own, at most ``DATASET_LINE_MAX_BYTES`` of it is ever held, and parsing stops once ``limit``
prompts are found (the rest of the file is only hashed, for provenance). Every problem is a
``ConfigError`` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.config.bounds import DATASET_LINE_MAX_BYTES, TOKENS
from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.exceptions import ConfigError

JSONL_HINT = 'a JSONL dataset has one {"prompt": "...", "max_new_tokens"?: int} object per line'

_BOM = b"\xef\xbb\xbf"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class JsonlScan:
    """What one pass over a JSONL file found.

    ``prompts``: the file's prompts in order, the first ``limit`` of them when a limit was
    given; ``complete``: every line was parsed (``prompts`` are all the file has);
    ``sha256`` and ``size_bytes``: of the whole file.
    """

    path: Path
    prompts: list[Prompt]
    complete: bool
    sha256: str
    size_bytes: int


def scan_jsonl(
    path: Path, limit: int | None = None, *, max_line_bytes: int = DATASET_LINE_MAX_BYTES
) -> JsonlScan:
    """Read the JSONL file at ``path`` once; parse prompts until ``limit`` are found.

    Raises ``ConfigError`` naming the path if it is missing or not a regular file, or the file
    and line number of the first bad line (not UTF-8, not JSON, not an object, no ``prompt``,
    ``max_new_tokens`` not an integer in range, longer than ``max_line_bytes``).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(
            f"dataset file not found: {path}",
            hint="pass an existing .jsonl file, or --dataset aienergyscore / synthetic",
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot open dataset file {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"dataset {path} is not a regular file (a directory, FIFO or device)",
                hint="pass the path of a .jsonl file",
            )
        from llenergymeasure.files import register_input

        register_input(path)  # no write of this command may replace it
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return _scan(stream, path, limit, max_line_bytes)
    except OSError as err:
        raise ConfigError(f"cannot read dataset file {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def _scan(stream: Any, path: Path, limit: int | None, max_line_bytes: int) -> JsonlScan:
    digest = hashlib.sha256()
    size = 0
    prompts: list[Prompt] = []
    lineno = 0
    complete = True
    while True:
        if limit is not None and len(prompts) >= limit:
            complete = False
            break
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            break
        digest.update(raw)
        size += len(raw)
        lineno += 1
        if len(raw) > max_line_bytes:
            raise ConfigError(
                f"{path}:{lineno}: line longer than {max_line_bytes // (1 << 20)} MiB",
                hint="one prompt per line; a prompt of a million tokens is about 4 MiB",
            )
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                f"{err.start + 1}: {err.reason})",
                hint="save the file as UTF-8",
            ) from None
        if not line.strip():
            continue
        prompt = _parse_line(line, path, lineno, index=len(prompts))
        if prompt is not None:
            prompts.append(prompt)
    if not complete:  # the rest is hashed, not parsed: provenance names the whole file
        rest_blank = True
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            rest_blank = rest_blank and not chunk.strip()
        complete = rest_blank  # nothing after the last prompt read: it was all of them
    return JsonlScan(path, prompts, complete, digest.hexdigest(), size)


def read_jsonl_prompts(path: Path) -> list[Prompt]:
    """Every prompt of the JSONL file at ``path``, in file order (``scan_jsonl`` of it all)."""
    return scan_jsonl(path).prompts


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise ValueError(f"key {key!r} appears twice")
        row[key] = value
    return row


def _parse_line(line: str, path: Path, lineno: int, *, index: int) -> Prompt | None:
    """Parse one non-blank line; None for a metadata line."""
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{where}: invalid JSON ({err.msg}, column {err.colno})", hint=JSONL_HINT
        ) from None
    except ValueError as err:  # a duplicate key
        raise ConfigError(f"{where}: invalid row ({err})", hint=JSONL_HINT) from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply", hint=JSONL_HINT) from None
    if not isinstance(row, dict):
        raise ConfigError(
            f"{where}: expected a JSON object, got {type(row).__name__}", hint=JSONL_HINT
        )
    if row and all(str(key).startswith("_") for key in row):
        return None
    text = row.get("prompt")
    if not isinstance(text, str) or not text:
        got = "missing" if "prompt" not in row else f"{type(text).__name__} {text!r:.40}"
        raise ConfigError(f"{where}: 'prompt' must be a non-empty string ({got})", hint=JSONL_HINT)
    max_new = row.get("max_new_tokens")
    if max_new is not None and (
        isinstance(max_new, bool) or not isinstance(max_new, int) or not TOKENS.contains(max_new)
    ):
        raise ConfigError(
            f"{where}: 'max_new_tokens' must be an integer in {TOKENS.explain()}, "
            f"got {max_new!r:.40}",
            hint=JSONL_HINT,
        )
    return Prompt(text, max_new, index=index)
