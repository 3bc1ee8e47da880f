"""The ``Prompt`` record and the structural types the loaders accept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Prompt:
    """One prompt of a dataset.

    ``max_new_tokens`` is the per-prompt generation budget (None: use the experiment's);
    ``index`` is the 0-based position of the prompt in its dataset.
    """

    text: str
    max_new_tokens: int | None = None
    index: int = field(kw_only=True)


@runtime_checkable
class SyntheticSpec(Protocol):
    """What a synthetic dataset needs (``config.models.SyntheticDatasetConfig`` has it)."""

    @property
    def n(self) -> int: ...

    @property
    def input_len(self) -> int: ...

    @property
    def output_len(self) -> int: ...

    @property
    def seed(self) -> int: ...


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer that synthetic prompts need."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], **kwargs: Any) -> str: ...
