"""``prepare_dataset``, ``load_prompts`` and ``describe_dataset``: dispatch on the dataset spec."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
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
from llenergymeasure.datasets.chat import apply_chat_template, chat_template_record
from llenergymeasure.datasets.hf import HFSpec, describe_hf, is_hf_spec, read_hf_dataset
from llenergymeasure.datasets.jsonl import JsonlScan, scan_jsonl
from llenergymeasure.datasets.prompt import Prompt, SyntheticSpec, TokenizerLike
from llenergymeasure.datasets.synthetic import (
    GENERATOR_VERSION,
    SYNTHETIC,
    SyntheticParams,
    synthetic_prompts,
)
from llenergymeasure.exceptions import ConfigError

DatasetSpec: TypeAlias = "str | os.PathLike[str] | SyntheticSpec | HFSpec"
"""``"aienergyscore"``, ``"synthetic"``, a path to a ``.jsonl`` file, a synthetic spec, or an HF
dataset spec (``{hf, split, column, config, revision}``)."""

_VALID = (
    f"'{AIENERGYSCORE}', '{SYNTHETIC}', a path to a .jsonl file, a synthetic config, or an HF "
    "dataset {hf: NAME_OR_PATH, ...}"
)


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset read and checked once, before anything expensive, for a run of ``n`` prompts.

    ``rows``: the first ``n + extra`` rows of a file or hub dataset (fewer when it has fewer;
    never fewer than ``n``), or None for a synthetic dataset, whose prompts need the model's
    tokenizer and are built after it loads. ``provenance``: the record kept in the result.
    ``chat_template``: the measured prompts are wrapped in the tokenizer's chat template
    (``prompts`` does it; ``format`` does it for other prompts of the run, e.g. warmup's).
    """

    spec: Path | str | SyntheticSpec | HFSpec
    n: int
    rows: tuple[Prompt, ...] | None
    provenance: dict[str, Any]
    chat_template: bool = False

    def prompts(self, tokenizer: Any = None) -> list[Prompt]:
        """The ``n`` measured prompts (synthetic ones built with ``tokenizer``), in the chat
        template when asked."""
        if self.rows is not None:
            return self.format(self.rows[: self.n], tokenizer)
        synthetic: Any = self.spec  # rows are None only for a synthetic spec
        return self.format(synthetic_prompts(synthetic, self.n, tokenizer), tokenizer)

    def format(self, prompts: Sequence[Prompt], tokenizer: Any) -> list[Prompt]:
        """``prompts`` in the tokenizer's chat template when ``chat_template`` (recorded in
        ``provenance``), else unchanged. ``ConfigError`` when the tokenizer has none."""
        if not self.chat_template:
            return list(prompts)
        formatted = apply_chat_template(prompts, tokenizer)
        self.provenance["chat_template"] = chat_template_record(tokenizer)
        return formatted

    def formatter(self, tokenizer: Any) -> Callable[[Sequence[Prompt]], list[Prompt]] | None:
        """``format`` bound to ``tokenizer``, or None when prompts are used as written."""
        if not self.chat_template:
            return None
        return lambda prompts: self.format(prompts, tokenizer)

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
    chat_template: bool = False,
) -> PreparedDataset:
    """Read and check ``dataset`` for a run of ``n`` prompts, keeping ``extra`` rows more.

    A JSONL file is streamed once and parsed only as far as ``n + extra`` prompts; the
    ``aienergyscore`` set is fetched (see ``load_prompts``) and read once; an HF dataset is
    opened and its first ``n + extra`` rows read (``datasets.hf``); a synthetic spec is only
    checked. Raises ``ConfigError`` for a bad or missing file, a bad row (file and line named),
    a missing split or column, or fewer than ``n`` prompts. ``chat_template``: the prompts are
    wrapped in the tokenizer's chat template when taken (``PreparedDataset.prompts``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of prompts n must be a positive integer, got {n!r}")
    extra = max(0, int(extra))
    spec = _normalise(dataset, n)
    if isinstance(spec, Path):
        scan = scan_jsonl(spec, limit=n + extra)
        _check_enough(str(spec), len(scan.prompts), n, exact=scan.complete)
        return PreparedDataset(spec, n, tuple(scan.prompts), _jsonl_record(scan), chat_template)
    if is_hf_spec(spec):
        hf_spec: Any = spec
        hf = read_hf_dataset(hf_spec, limit=n + extra)
        _check_enough(f"{hf_spec.hf!r} (split {hf.record['split']!r})", hf.n_available, n)
        rows = tuple(Prompt(text, index=i) for i, text in enumerate(hf.texts))
        return PreparedDataset(spec, n, rows, hf.record, chat_template)
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
        return PreparedDataset(spec, n, rows, record, chat_template)
    synthetic: Any = spec
    _check_enough(f"{SYNTHETIC} (n={synthetic.n})", synthetic.n, n)
    unsized = isinstance(dataset, str) and dataset.strip().lower() == SYNTHETIC
    record = _synthetic_record(synthetic, unsized=unsized)
    return PreparedDataset(spec, n, None, record, chat_template)


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

    Keys: ``kind`` (jsonl / synthetic / aienergyscore / hf), then ``path``, ``sha256`` and
    ``n_available`` for a file; ``hf``, ``path``, ``split``, ``column``, ``config`` and
    ``revision`` for an HF dataset (a run adds ``fingerprint`` and ``n_available``); ``n``,
    ``input_len``, ``output_len``, ``seed`` and ``generator`` for synthetic; ``hub_id`` and
    ``revision`` (plus ``files`` with sha256 and ``n_available`` when cached) for
    aienergyscore. A run records the same keys from its ``PreparedDataset``
    (a file's ``n_available`` is None there when the run read only the rows it needed).
    """
    spec = _normalise(dataset, 0)
    if isinstance(spec, Path):
        return _jsonl_record(scan_jsonl(spec))
    if is_hf_spec(spec):
        hf_spec: Any = spec
        return describe_hf(hf_spec)
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
    synthetic: Any = spec
    return _synthetic_record(synthetic, unsized=unsized)


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


def _normalise(dataset: DatasetSpec, n: int) -> Path | str | SyntheticSpec | HFSpec:
    """A JSONL ``Path``, the string ``"aienergyscore"``, a synthetic spec or an HF spec."""
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
    if is_hf_spec(dataset):
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
