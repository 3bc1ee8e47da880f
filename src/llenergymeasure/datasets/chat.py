"""Prompts wrapped in the tokenizer's chat template (``chat_template: true``).

Each prompt becomes one user message, rendered with ``add_generation_prompt=True`` so that the
model answers as the assistant, which is how instruct models are served. Engines then encode the
text as usual, which adds the tokenizer's special tokens; where the template itself starts with
the BOS token and encoding adds it again, the template's copy is removed, so that every prompt
starts with exactly one BOS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.exceptions import ConfigError

__all__ = ["apply_chat_template", "chat_template_of", "chat_template_record"]

NO_TEMPLATE_HINT = (
    "use an instruct/chat model (its tokenizer_config.json or chat_template.jinja holds a "
    "template), or set chat_template: false to measure the prompts as written"
)


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside an engine's wrapper (TensorRT-LLM wraps it), or the
    tokenizer itself."""
    if hasattr(tokenizer, "apply_chat_template"):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def chat_template_of(tokenizer: Any) -> str | None:
    """The chat template text of ``tokenizer``, or None when it has none."""
    template = getattr(hf_tokenizer(tokenizer), "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def chat_template_record(tokenizer: Any) -> dict[str, Any]:
    """What was applied, for the result: the template's SHA-256, and whether encoding adds the
    BOS token (then a BOS at the start of the rendered template is removed)."""
    template = chat_template_of(tokenizer)
    return {
        "applied": True,
        "template_sha256": (
            hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None
        ),
        "role": "user",
        "add_generation_prompt": True,
        "encoding_adds_bos": _encoding_adds_bos(hf_tokenizer(tokenizer)),
    }


def apply_chat_template(
    prompts: Sequence[Prompt], tokenizer: Any, *, model: str = "the model"
) -> list[Prompt]:
    """``prompts`` with each text rendered as a user message by the tokenizer's template.

    ``ConfigError`` when the tokenizer has no chat template. Per-prompt ``max_new_tokens`` and
    indices are kept.
    """
    tok = hf_tokenizer(tokenizer)
    if tokenizer is None or chat_template_of(tok) is None:
        raise ConfigError(
            f"chat_template: true, but the tokenizer of {model} has no chat template",
            hint=NO_TEMPLATE_HINT,
        )
    strip_bos = _encoding_adds_bos(tok)
    bos = getattr(tok, "bos_token", None)
    out: list[Prompt] = []
    for prompt in prompts:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt.text}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if strip_bos and isinstance(bos, str) and bos and text.startswith(bos):
            text = text[len(bos) :]
        out.append(replace(prompt, text=str(text)))
    return out


def _encoding_adds_bos(tok: Any) -> bool:
    """Whether encoding a text puts the BOS token first (so a template's own BOS doubles it)."""
    bos_id = getattr(tok, "bos_token_id", None)
    if bos_id is None or not callable(tok):
        return False
    try:
        ids = tok("a")["input_ids"]
    except Exception:  # a tokenizer that cannot encode like this: leave the template as is
        return False
    return bool(ids) and ids[0] == bos_id
