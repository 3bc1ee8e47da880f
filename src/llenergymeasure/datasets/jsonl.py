"""JSONL prompt files: one ``{"prompt": ..., "max_new_tokens"?: int}`` object per line.

Blank lines are skipped, and so are metadata lines whose keys all start with ``_``
(e.g. ``{"_provenance": ..., "_license": ...}``). Other extra keys are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.exceptions import ConfigError

JSONL_HINT = 'a JSONL dataset has one {"prompt": "...", "max_new_tokens"?: int} object per line'


def read_jsonl_prompts(path: Path) -> list[Prompt]:
    """Every prompt of the JSONL file at ``path``, in file order.

    Raises ``ConfigError`` naming the path if the file is missing, or the file and line number
    of the first bad line.
    """
    if not path.is_file():
        raise ConfigError(
            f"dataset file not found: {path}",
            hint="pass an existing .jsonl file, or --dataset aienergyscore / synthetic",
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read dataset file {path}: {err}") from err
    from llenergymeasure.files import register_input

    register_input(path)  # no write of this command may replace it

    prompts: list[Prompt] = []
    # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        prompt = _parse_line(line, path, lineno, index=len(prompts))
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def _parse_line(line: str, path: Path, lineno: int, *, index: int) -> Prompt | None:
    """Parse one non-blank line; None for a metadata line."""
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: invalid JSON ({err.msg})", hint=JSONL_HINT) from err
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
        isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1
    ):
        raise ConfigError(
            f"{where}: 'max_new_tokens' must be a positive integer, got {max_new!r}",
            hint=JSONL_HINT,
        )
    return Prompt(text, max_new, index=index)
