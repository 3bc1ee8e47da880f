"""Stable content hashes of configurations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.secrets import drop_secrets
from llenergymeasure.redaction import redact


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def _hash_payload(config: ExperimentConfig) -> dict[str, Any]:
    # Offline configs hash as they did before online mode existed (results and resumable
    # studies keep their identity): the default `mode`/`online` pair is left out.
    data = config.model_dump(mode="json")
    # Credentials are not part of what is measured (and are redacted in every dump anyway).
    if data.get("passthrough_kwargs") is not None:
        data["passthrough_kwargs"] = drop_secrets(data["passthrough_kwargs"])
    if data.get("mode") == "offline" and data.get("online") is None:
        data.pop("mode", None)
        data.pop("online", None)
    # Online configs written before `continuous_usage` existed keep their hash when it is unset.
    online = data.get("online")
    if isinstance(online, dict) and online.get("continuous_usage") is None:
        online.pop("continuous_usage", None)
    # Likewise the default `measurement:` section (nothing extra measured): configs written
    # before it existed keep their hash; `phase_split: true` changes the hash.
    if data.get("measurement") == {"phase_split": False}:
        data.pop("measurement", None)
    # And `chat_template: false` (prompts as written), the only behaviour before it existed.
    if data.get("chat_template") is False:
        data.pop("chat_template", None)
    # No credential enters the hash (URL userinfo, credential flags in server arguments): a
    # config read back from a written (redacted) file keeps its identity.
    redacted: dict[str, Any] = redact(data)
    return redacted


def measurement_config_hash(config: ExperimentConfig) -> str:
    """16-hex SHA-256 of the resolved experiment config (its measurement identity).

    Independent of key order and process; machine facts (carbon intensity, PUE, environment)
    are not part of ``ExperimentConfig`` and so never enter it.
    """
    canonical = _canonical_json(_hash_payload(config))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def study_design_hash(experiments: Iterable[ExperimentConfig]) -> str:
    """16-hex SHA-256 of the ordered, resolved experiment list (the execution block excluded)."""
    canonical = _canonical_json([_hash_payload(e) for e in experiments])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
