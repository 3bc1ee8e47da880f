"""Seeded synthetic prompts of an exact token length.

Prompt ``i`` is built from a word list with ``random.Random("llem-synthetic:<seed>:<i>")``, so the
first ``k`` prompts are the same whatever ``n`` is, and the same seed always gives the same text.
The text is then adjusted token-wise until it re-encodes (without special tokens) to exactly
``input_len`` tokens under the given tokenizer. Fully offline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llenergymeasure.datasets.prompt import Prompt, SyntheticSpec, TokenizerLike
from llenergymeasure.exceptions import ConfigError

SYNTHETIC = "synthetic"
"""Dataset name meaning ``SyntheticParams(n)`` with the default lengths and seed."""

GENERATOR_VERSION = "llem-synthetic-v1"
"""Recorded in provenance; bump when the text generation changes."""

_MAX_ADJUSTMENTS = 200

# Common English words; order matters (the seeded choice indexes into this tuple).
_WORD_TEXT = """
    the of and to in is was for on that with as by at from his her an it be are this which
    or were had not but have their also one its new after first who been they has two more
    other time year when all into there would she than most during over some between only
    city world people under about through later these many state part history used while
    because before where since each three them such both being known then same work group
    game system number may called several early well against both season following during
    team music film series water energy model power light house river school church war
    small large long short high low great little old young good best right left north south
    east west area place road line point form order level value result effect change case
    book story paper report study data table figure section chapter example question answer
    method process design test rate price market company service product program project
    measure machine engine network computer language science nature animal plant island
    mountain valley ocean forest garden village country station bridge tower castle street
    morning evening winter summer spring autumn today family friend child mother father
"""
_WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORD_TEXT.split()))


@dataclass(frozen=True)
class SyntheticParams:
    """A synthetic dataset spec with the ``SyntheticDatasetConfig`` defaults."""

    n: int
    input_len: int = 512
    output_len: int = 128
    seed: int = 42


def synthetic_prompts(spec: SyntheticSpec, n: int, tokenizer: TokenizerLike | None) -> list[Prompt]:
    """The first ``n`` prompts of synthetic dataset ``spec`` (caller checks ``n <= spec.n``)."""
    if tokenizer is None:
        raise ConfigError(
            "synthetic prompts need the model's tokenizer (tokenizer=None was given)",
            hint="pass the Hugging Face tokenizer of the model to load_prompts(..., tokenizer=...)",
        )
    if spec.input_len < 1:
        raise ConfigError(f"synthetic input_len must be >= 1, got {spec.input_len}")
    if spec.output_len < 1:
        raise ConfigError(f"synthetic output_len must be >= 1, got {spec.output_len}")
    return [
        Prompt(
            synthetic_text(tokenizer, spec.input_len, seed=spec.seed, index=i),
            spec.output_len,
            index=i,
        )
        for i in range(n)
    ]


def synthetic_text(tokenizer: TokenizerLike, input_len: int, *, seed: int, index: int) -> str:
    """Text of prompt ``index`` that encodes to exactly ``input_len`` tokens (no special tokens).

    Raises ``ConfigError`` if the tokenizer cannot produce that length.
    """
    rng = random.Random(f"{GENERATOR_VERSION}:{seed}:{index}")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # 1. enough words to reach the target length (without overshooting much)
    words: list[str] = []
    ids: list[int] = []
    chunk = 8
    while len(ids) < input_len and len(words) <= 64 * input_len + 1024:
        words.extend(rng.choice(_WORDS) for _ in range(chunk))
        ids = encode(" ".join(words))
        per_word = max(len(ids), 1) / len(words)
        chunk = max(4, int((input_len - len(ids)) / per_word) + 2)
    ids = ids[:input_len]

    # 2. decode / re-encode until the length is exact; trim when long, pad with words when short
    seen: set[tuple[int, ...]] = set()
    for _ in range(_MAX_ADJUSTMENTS):
        text = decode(ids)
        again = encode(text)
        if len(again) == input_len:
            return text
        key = tuple(ids)
        stuck = key in seen
        seen.add(key)
        if len(again) > input_len:
            # drop one extra token when the same trim was already tried (boundary effects)
            ids = again[: input_len - (1 if stuck else 0)]
        else:
            ids = (again + encode(" " + rng.choice(_WORDS)))[:input_len]
    raise ConfigError(
        f"cannot build a synthetic prompt of exactly {input_len} tokens with this tokenizer "
        f"(seed {seed}, prompt {index})",
        hint="try a different synthetic input_len or seed, or use a JSONL dataset",
    )
