"""Warmup prompts that are never the measured prompts.

A run measures the first ``n`` prompts of its dataset. Its warmup uses ``k`` further prompts:

- a file or named dataset: rows ``n .. n+k-1`` (the rows after the measured ones);
- a synthetic dataset: the same lengths with a different seed (``seed + WARMUP_SEED_OFFSET``);
- a file or named dataset with fewer than ``n + k`` rows: synthetic prompts with the token
  lengths of the measured prompts (a different text of the same size).

Warming up on the measured prompts would pre-fill any prompt cache (vLLM's prefix cache) and
make the window measure cached prefills; on a reused engine the effect would carry over runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from llenergymeasure.datasets.loader import DatasetSpec, load_prompts
from llenergymeasure.datasets.prompt import Prompt, SyntheticSpec, TokenizerLike
from llenergymeasure.datasets.synthetic import SyntheticParams, synthetic_text
from llenergymeasure.exceptions import ConfigError

__all__ = ["WARMUP_SEED_OFFSET", "WarmupPrompts", "warmup_prompts"]

WARMUP_SEED_OFFSET = 7_919  # synthetic warmup prompts: seed + this (a prime, far from small seeds)


@dataclass(frozen=True)
class WarmupPrompts:
    """Warmup prompts and a sentence saying where they came from (kept in the result)."""

    prompts: list[Prompt]
    source: str


def _is_synthetic(dataset: DatasetSpec) -> SyntheticSpec | None:
    if isinstance(dataset, str) and dataset.strip().lower() == "synthetic":
        return SyntheticParams(n=0)
    if not isinstance(dataset, (str, os.PathLike)) and all(
        hasattr(dataset, a) for a in ("n", "input_len", "output_len", "seed")
    ):
        synthetic: SyntheticSpec = dataset  # type: ignore[assignment]
        return synthetic
    return None


def warmup_prompts(
    dataset: DatasetSpec,
    n: int,
    k: int,
    *,
    measured: Sequence[Prompt],
    tokenizer: TokenizerLike | None = None,
    rows_after: Sequence[Prompt] | None = None,
    formatter: Callable[[Sequence[Prompt]], list[Prompt]] | None = None,
) -> WarmupPrompts:
    """``k`` full-length warmup prompts for a run that measures the first ``n`` of ``dataset``.

    ``measured`` are the run's measured prompts (their lengths shape the fallback).
    ``rows_after``: the dataset's rows after the measured ones, when the run has read them
    already (``PreparedDataset.rows_after``); without them a file is read again.
    ``formatter``: what the run did to its measured prompts (the chat template,
    ``PreparedDataset.formatter``), done to warmup prompts taken from the dataset or the
    synthetic generator too; the same-length fallback copies the lengths of the measured
    prompts as they were formatted, so it is not formatted again.
    """
    fmt = formatter or list
    k = max(0, k)
    if k == 0:
        return WarmupPrompts([], "no warmup prompts")
    synthetic = _is_synthetic(dataset)
    if synthetic is not None:
        seed = synthetic.seed + WARMUP_SEED_OFFSET
        if tokenizer is None:
            raise ConfigError("synthetic warmup prompts need the model's tokenizer")
        prompts = [
            Prompt(
                synthetic_text(tokenizer, synthetic.input_len, seed=seed, index=i),
                synthetic.output_len,
                index=i,
            )
            for i in range(k)
        ]
        return WarmupPrompts(
            fmt(prompts),
            f"synthetic prompts with seed {seed} (the measured prompts use seed {synthetic.seed}), "
            f"same lengths ({synthetic.input_len} -> {synthetic.output_len} tokens)",
        )
    if rows_after is None:
        try:
            rows_after = load_prompts(dataset, n + k, tokenizer=tokenizer)[n:]
        except ConfigError:
            rows_after = []
    if len(rows_after) >= k:
        return WarmupPrompts(
            fmt(rows_after[:k]), f"dataset rows {n}..{n + k - 1} (after the {n} measured)"
        )
    return _same_length_synthetic(measured, k, tokenizer, n)


def _same_length_synthetic(
    measured: Sequence[Prompt], k: int, tokenizer: TokenizerLike | None, n: int
) -> WarmupPrompts:
    if tokenizer is None or not measured:
        raise ConfigError(
            f"the dataset has no rows beyond the {n} measured prompts for warmup, and no "
            "tokenizer is available to build prompts of the same lengths",
            hint="use a dataset with more rows than n",
        )
    seed = 42 + WARMUP_SEED_OFFSET
    prompts = []
    for i in range(k):
        template = measured[i % len(measured)]
        length = max(1, len(tokenizer.encode(template.text, add_special_tokens=False)))
        text = synthetic_text(tokenizer, length, seed=seed, index=i)
        prompts.append(replace(template, text=text, index=i))
    return WarmupPrompts(
        prompts,
        f"synthetic prompts (seed {seed}) with the token lengths of the measured prompts: the "
        f"dataset has no {k} rows beyond the {n} measured",
    )
