"""``load_prompts`` and ``describe_dataset``: dispatch on the dataset spec."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, TypeAlias

from llenergymeasure.datasets.aienergyscore import (
    AIENERGYSCORE,
    AIENERGYSCORE_REPO_ID,
    AIENERGYSCORE_REVISION,
    Downloader,
    fetch_aienergyscore,
    load_aienergyscore,
    read_prompt_column,
)
from llenergymeasure.datasets.jsonl import read_jsonl_prompts
from llenergymeasure.datasets.prompt import Prompt, SyntheticSpec, TokenizerLike
from llenergymeasure.datasets.synthetic import (
    GENERATOR_VERSION,
    SYNTHETIC,
    SyntheticParams,
    synthetic_prompts,
)
from llenergymeasure.exceptions import ConfigError

DatasetSpec: TypeAlias = "str | os.PathLike[str] | SyntheticSpec"
"""``"aienergyscore"``, ``"synthetic"``, a path to a ``.jsonl`` file, or a synthetic spec."""

_VALID = f"'{AIENERGYSCORE}', '{SYNTHETIC}', a path to a .jsonl file, or a synthetic config"


def load_prompts(
    dataset: DatasetSpec,
    n: int,
    *,
    tokenizer: TokenizerLike | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    downloader: Downloader | None = None,
) -> list[Prompt]:
    """The first ``n`` prompts of ``dataset``, in its fixed order.

    ``tokenizer`` (the model's HF tokenizer) is required for synthetic datasets; ``cache_dir`` is
    the HF hub cache used for ``aienergyscore`` (default: the HF default); ``downloader`` replaces
    the hub download (tests). Raises ``ConfigError`` if the dataset has fewer than ``n`` prompts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of prompts n must be a positive integer, got {n!r}")
    spec = _normalise(dataset, n)
    if isinstance(spec, Path):
        prompts = read_jsonl_prompts(spec)
        _check_enough(str(spec), len(prompts), n)
        return prompts[:n]
    if isinstance(spec, str):  # aienergyscore
        prompts = load_aienergyscore(cache_dir=cache_dir, downloader=downloader)
        _check_enough(AIENERGYSCORE, len(prompts), n)
        return prompts[:n]
    _check_enough(f"{SYNTHETIC} (n={spec.n})", spec.n, n)
    return synthetic_prompts(spec, n, tokenizer)


def describe_dataset(
    dataset: DatasetSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    downloader: Downloader | None = None,
) -> dict[str, Any]:
    """A small provenance record of ``dataset`` for results; never touches the network.

    Keys: ``kind`` (jsonl / synthetic / aienergyscore), then ``path``, ``sha256`` and
    ``n_available`` for a file; ``n``, ``input_len``, ``output_len``, ``seed`` and ``generator``
    for synthetic; ``hub_id`` and ``revision`` (plus ``files`` with sha256 and ``n_available``
    when cached) for aienergyscore.
    """
    spec = _normalise(dataset, 0)
    unsized = isinstance(dataset, str) and dataset.strip().lower() == SYNTHETIC
    if isinstance(spec, Path):
        prompts = read_jsonl_prompts(spec)
        return {
            "kind": "jsonl",
            "path": str(spec.resolve()),
            "sha256": _sha256(spec),
            "n_available": len(prompts),
        }
    if isinstance(spec, str):
        record: dict[str, Any] = {
            "kind": AIENERGYSCORE,
            "hub_id": AIENERGYSCORE_REPO_ID,
            "revision": AIENERGYSCORE_REVISION,
        }
        try:
            files = fetch_aienergyscore(
                cache_dir=cache_dir, downloader=downloader, local_files_only=True
            )
            record["files"] = [{"name": p.name, "sha256": _sha256(p)} for p in files]
            record["n_available"] = sum(len(read_prompt_column(p)) for p in files)
        except ConfigError:
            pass  # not cached: hub id + pinned revision identify it
        return record
    return {
        "kind": SYNTHETIC,
        "n": None if unsized else spec.n,
        "input_len": spec.input_len,
        "output_len": spec.output_len,
        "seed": spec.seed,
        "generator": GENERATOR_VERSION,
    }


def _normalise(dataset: DatasetSpec, n: int) -> Path | str | SyntheticSpec:
    """A JSONL ``Path``, the string ``"aienergyscore"``, or a synthetic spec."""
    if isinstance(dataset, (str, os.PathLike)):
        name = os.fspath(dataset)
        if isinstance(dataset, str) and name.strip().lower() == AIENERGYSCORE:
            return AIENERGYSCORE
        if isinstance(dataset, str) and name.strip().lower() == SYNTHETIC:
            return SyntheticParams(n=n)
        path = Path(name).expanduser()
        if path.suffix.lower() == ".jsonl" or path.exists() or os.sep in name or "/" in name:
            return path
        raise ConfigError(f"unknown dataset {name!r}; valid: {_VALID}")
    if all(hasattr(dataset, a) for a in ("n", "input_len", "output_len", "seed")):
        return dataset
    raise ConfigError(f"unsupported dataset {dataset!r}; valid: {_VALID}")


def _check_enough(name: str, available: int, n: int) -> None:
    if available < n:
        raise ConfigError(
            f"dataset {name} has {available} prompts but {n} were asked for",
            hint=f"use n <= {available}" if available else "add prompts to the dataset",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
