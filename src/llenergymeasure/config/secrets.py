"""Secret-bearing option keys and the one function that redacts them.

A ``passthrough_kwargs`` key is secret when one of its ``_``/``-``/``.``-separated words is a
credential word (``token``, ``password``, ``secret``, ``auth``, ...) or it contains a
credential phrase (``api_key``, ``access_key``, ``private_key``): ``hf_token``,
``use_auth_token``, ``api_key``, ``client_secret`` are secret; ``max_tokens``,
``tokenizer_mode`` and ``num_speculative_tokens`` are not.

Everything llem writes (result.json, the study manifest, reports, CSV/parquet) serialises
configs through ``redact_secrets``, so a secret never reaches a file. A config read back from
such a file has no secret: the placeholder is dropped (``drop_redacted``) and the engine falls
back to the environment's credentials (``HF_TOKEN``, ``huggingface-cli login``), which is also
how studies run on SLURM, in containers or after ``--resume`` should get them.
"""

from __future__ import annotations

import re
from typing import Any

#: What a secret's value is replaced with in everything written.
REDACTED = "<redacted>"

_SECRET_WORDS = frozenset(
    {
        "token",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "auth",
        "authorization",
        "apikey",
        "credential",
        "credentials",
        "cookie",
    }
)
_SECRET_PHRASES = ("api_key", "access_key", "private_key", "secret_key")


def is_secret_key(key: str) -> bool:
    """Whether an option named ``key`` carries a credential."""
    normalised = key.lower().replace("-", "_").replace(".", "_")
    if any(phrase in normalised for phrase in _SECRET_PHRASES):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"_+", normalised))


def redact_secrets(value: Any) -> Any:
    """A copy of ``value`` with the value of every secret key (at any depth) ``REDACTED``."""
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_secrets(item) for item in value)
    return value


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
