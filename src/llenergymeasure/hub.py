"""Reaching the Hugging Face Hub: the offline switches and one bounded probe.

The hub client retries a connection that fails (five times with back-off, per file, and
transformers asks for several files), so an unreachable hub used to take about a minute to fail
a run. Pre-flight asks this module instead: is the hub switched off (``HF_HUB_OFFLINE``), and,
when something must be downloaded, can its endpoint (``HF_ENDPOINT``) be reached by a single
HTTP request that gives up after ``probe_timeout_s()`` seconds? Nothing here retries.
"""

from __future__ import annotations

import os
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = [
    "OFFLINE_HINT",
    "datasets_offline",
    "hub_endpoint",
    "hub_model_problem",
    "hub_offline",
    "in_hub_cache",
    "is_hub_id",
    "probe_hub",
    "probe_timeout_s",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_PROBE_TIMEOUT_S = 5.0
#: How long a probe's answer is reused (several things of one pre-flight share one probe).
PROBE_TTL_S = 60.0

OFFLINE_HINT = (
    "without network access, use the HF cache with HF_HUB_OFFLINE=1 (after one download on a "
    "machine that has it), or give a local path"
)

_TRUE = {"1", "ON", "YES", "TRUE"}
_probes: dict[str, tuple[float, str | None]] = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return _flag("HF_HUB_OFFLINE")


def datasets_offline() -> bool:
    """The ``datasets`` library works from its cache only (``HF_DATASETS_OFFLINE`` or
    ``HF_HUB_OFFLINE``)."""
    return hub_offline() or _flag("HF_DATASETS_OFFLINE")


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT``, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def probe_timeout_s() -> float:
    """Seconds the probe waits: ``HF_HUB_ETAG_TIMEOUT`` (the hub client's own timeout for
    metadata requests) when set, else 5."""
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT_S
    return value if 0 < value <= 600 else DEFAULT_PROBE_TIMEOUT_S


def probe_hub(*, timeout: float | None = None, fresh: bool = False) -> str | None:
    """Why the hub endpoint cannot be reached, or None when it answers.

    One ``HEAD`` request to the endpoint (proxies from the environment apply), no retry; any
    HTTP status counts as reachable, and so does a TLS certificate the client would judge
    itself. The answer is reused for ``PROBE_TTL_S`` seconds unless ``fresh``.
    """
    endpoint = hub_endpoint()
    now = time.monotonic()
    cached = _probes.get(endpoint)
    if cached is not None and not fresh and now - cached[0] < PROBE_TTL_S:
        return cached[1]
    wait = probe_timeout_s() if timeout is None else timeout
    reason: str | None = None
    try:
        request = urllib.request.Request(endpoint, method="HEAD")
        with urllib.request.urlopen(request, timeout=wait):
            pass
    except urllib.error.HTTPError:
        reason = None  # the server answered
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            reason = None  # something answered; the hub client has its own CA settings
        else:
            reason = f"{endpoint} cannot be reached ({_why(err.reason)})"
    except (OSError, ValueError) as err:  # timeouts, resets, a malformed HF_ENDPOINT
        reason = f"{endpoint} cannot be reached ({_why(err)})"
    _probes[endpoint] = (time.monotonic(), reason)
    return reason


def _why(err: Any) -> str:
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return f"no answer within {probe_timeout_s():g} s"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return str(text)[:200]


def is_hub_id(name: str) -> bool:
    """Whether a ``model:`` value names a hub repository (not ``builtin:``, not a local path,
    not a ``.gguf`` file)."""
    from llenergymeasure.gguf_files import is_gguf_path

    if name.startswith(("builtin:", "/", "./", "../", "~", ".\\")) or is_gguf_path(name):
        return False
    return not os.path.exists(os.path.expanduser(name))


def in_hub_cache(name: str, *, revision: str | None = None, filename: str = "config.json") -> bool:
    """Whether the hub model ``name`` is in the local HF cache (its ``filename``)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, filename, revision=revision), str)
    except Exception:
        return False


def hub_model_problem(
    name: str,
    field_name: str,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    filename: str = "config.json",
) -> str | None:
    """A pre-flight problem for the hub model ``name``, or None when it can be had.

    In the HF cache (its ``filename``: ``config.json``, ``adapter_config.json`` for an
    adapter, the ``.gguf`` file of a GGUF repository): fine. Not cached and ``HF_HUB_OFFLINE``
    set, or not cached and the hub unreachable (one probe): a problem naming the field, with
    the offline hint. Reachable: None (the engine downloads it).
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, filename, cache_dir=cache_dir, revision=revision)
    except Exception as err:  # an invalid repo id and the like
        return f"{field_name}: {name!r} is neither a local directory nor a hub id ({err})"
    if isinstance(cached, str):
        return None
    if filename.lower().endswith(".gguf"):  # one file of a repository of several
        name = f"{name}/{filename}"
    if hub_offline():
        return (
            f"{field_name}: {name!r} is not in the HF cache and HF_HUB_OFFLINE is set; download "
            "it first on a machine with network access, or pass a local directory"
        )
    reason = probe_hub()
    if reason is None:
        return None
    return (
        f"{field_name}: {name!r} is not in the HF cache and the HF hub is unreachable: "
        f"{reason}. Hint: {OFFLINE_HINT}"
    )
