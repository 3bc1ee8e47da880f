"""``prepare_dataset``, ``load_prompts`` and ``describe_dataset``: dispatch on the dataset spec."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from llenergymeasure.datasets.aienergyscore import (
    AIENERGYSCORE,
    AIENERGYSCORE_REPO_ID,
    AIENERGYSCORE_REVISION,
    Downloader,
    fetch_aienergyscore,
    read_prompt_column,
)
from llenergymeasure.datasets.jsonl import JsonlScan, scan_jsonl
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


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset read and checked once, before anything expensive, for a run of ``n`` prompts.

    ``rows``: the first ``n + extra`` rows of a file or hub dataset (fewer when it has fewer;
    never fewer than ``n``), or None for a synthetic dataset, whose prompts need the model's
    tokenizer and are built after it loads. ``provenance``: the record kept in the result.
    """

    spec: Path | str | SyntheticSpec
    n: int
    rows: tuple[Prompt, ...] | None
    provenance: dict[str, Any]

    def prompts(self, tokenizer: TokenizerLike | None = None) -> list[Prompt]:
        """The ``n`` measured prompts (synthetic ones built with ``tokenizer``)."""
        if self.rows is not None:
            return list(self.rows[: self.n])
        assert not isinstance(self.spec, (Path, str))
        return synthetic_prompts(self.spec, self.n, tokenizer)

    def rows_after(self) -> list[Prompt] | None:
        """The rows after the measured ones (for warmup), or None for a synthetic dataset."""
        return None if self.rows is None else list(self.rows[self.n :])


def prepare_dataset(
    dataset: DatasetSpec,
    n: int,
    *,
    extra: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    downloader: Downloader | None = None,
) -> PreparedDataset:
    """Read and check ``dataset`` for a run of ``n`` prompts, keeping ``extra`` rows more.

    A JSONL file is streamed once and parsed only as far as ``n + extra`` prompts; the
    ``aienergyscore`` set is fetched (see ``load_prompts``) and read once; a synthetic spec is
    only checked. Raises ``ConfigError`` for a bad or missing file, a bad row (file and line
    named) or fewer than ``n`` prompts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of prompts n must be a positive integer, got {n!r}")
    extra = max(0, int(extra))
    spec = _normalise(dataset, n)
    if isinstance(spec, Path):
        scan = scan_jsonl(spec, limit=n + extra)
        _check_enough(str(spec), len(scan.prompts), n, exact=scan.complete)
        return PreparedDataset(spec, n, tuple(scan.prompts), _jsonl_record(scan))
    if isinstance(spec, str):  # aienergyscore
        files = fetch_aienergyscore(cache_dir=cache_dir, downloader=downloader)
        record = _hub_record()
        texts: list[str] = []
        record["files"] = []
        for path in files:
            record["files"].append({"name": path.name, "sha256": _sha256(path)})
            texts.extend(read_prompt_column(path))
        record["n_available"] = len(texts)
        _check_enough(AIENERGYSCORE, len(texts), n)
        rows = tuple(Prompt(text, index=i) for i, text in enumerate(texts[: n + extra]))
        return PreparedDataset(spec, n, rows, record)
    _check_enough(f"{SYNTHETIC} (n={spec.n})", spec.n, n)
    unsized = isinstance(dataset, str) and dataset.strip().lower() == SYNTHETIC
    return PreparedDataset(spec, n, None, _synthetic_record(spec, unsized=unsized))


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
    prepared = prepare_dataset(dataset, n, cache_dir=cache_dir, downloader=downloader)
    return prepared.prompts(tokenizer)


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
    when cached) for aienergyscore. A run records the same keys from its ``PreparedDataset``
    (a file's ``n_available`` is None there when the run read only the rows it needed).
    """
    spec = _normalise(dataset, 0)
    if isinstance(spec, Path):
        return _jsonl_record(scan_jsonl(spec))
    if isinstance(spec, str):
        record = _hub_record()
        try:
            files = fetch_aienergyscore(
                cache_dir=cache_dir, downloader=downloader, local_files_only=True
            )
            record["files"] = [{"name": p.name, "sha256": _sha256(p)} for p in files]
            record["n_available"] = sum(len(read_prompt_column(p)) for p in files)
        except ConfigError:
            pass  # not cached: hub id + pinned revision identify it
        return record
    unsized = isinstance(dataset, str) and dataset.strip().lower() == SYNTHETIC
    return _synthetic_record(spec, unsized=unsized)


def _jsonl_record(scan: JsonlScan) -> dict[str, Any]:
    return {
        "kind": "jsonl",
        "path": str(scan.path.resolve()),
        "sha256": scan.sha256,
        "n_available": len(scan.prompts) if scan.complete else None,
    }


def _hub_record() -> dict[str, Any]:
    return {
        "kind": AIENERGYSCORE,
        "hub_id": AIENERGYSCORE_REPO_ID,
        "revision": AIENERGYSCORE_REVISION,
    }


def _synthetic_record(spec: SyntheticSpec, *, unsized: bool) -> dict[str, Any]:
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


def _check_enough(name: str, available: int, n: int, *, exact: bool = True) -> None:
    if available < n:
        has = f"{available}" if exact else f"only {available}"
        raise ConfigError(
            f"dataset {name} has {has} prompts but {n} were asked for",
            hint=f"use n <= {available}" if available else "add prompts to the dataset",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
