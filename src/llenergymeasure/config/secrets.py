"""Secret-bearing config keys: what a config keeps, what identifies it, what is dropped.

The rules of what is secret, and the redaction every written or printed byte passes through,
live in ``llenergymeasure.redaction`` (one place); this module re-exports them for config code.
A config serialises ``passthrough_kwargs`` redacted, and a config read back from a written
file has no secret: the placeholder is dropped (``drop_redacted``) and the engine falls back to
the environment's credentials (``HF_TOKEN``, ``huggingface-cli login``), which is also how
studies run on SLURM, in containers or after ``--resume`` should get them.
"""

from __future__ import annotations

from typing import Any

from llenergymeasure.redaction import REDACTED, is_secret_key, redact

__all__ = ["REDACTED", "drop_redacted", "drop_secrets", "is_secret_key", "redact_secrets"]


def redact_secrets(value: Any) -> Any:
    """A redacted copy of ``value`` (``llenergymeasure.redaction.redact``)."""
    return redact(value)


def drop_secrets(value: Any) -> Any:
    """A copy of ``value`` without secret keys (at any depth): what identifies a config."""
    if isinstance(value, dict):
        return {
            key: drop_secrets(item)
            for key, item in value.items()
            if not (isinstance(key, str) and is_secret_key(key))
        }
    if isinstance(value, list):
        return [drop_secrets(item) for item in value]
    return value


def drop_redacted(value: Any) -> Any:
    """A copy of ``value`` without the secret keys whose value is the ``REDACTED`` placeholder."""
    if isinstance(value, dict):
        return {
            key: drop_redacted(item)
            for key, item in value.items()
            if not (isinstance(key, str) and is_secret_key(key) and item == REDACTED)
        }
    if isinstance(value, list):
        return [drop_redacted(item) for item in value]
    return value
