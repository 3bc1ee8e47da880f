"""Stable content hashes of configurations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from llenergymeasure.config.models import ExperimentConfig


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def measurement_config_hash(config: ExperimentConfig) -> str:
    """16-hex SHA-256 of the resolved experiment config (its measurement identity).

    Independent of key order and process; machine facts (carbon intensity, PUE, environment)
    are not part of ``ExperimentConfig`` and so never enter it.
    """
    canonical = _canonical_json(config.model_dump(mode="json"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def study_design_hash(experiments: Iterable[ExperimentConfig]) -> str:
    """16-hex SHA-256 of the ordered, resolved experiment list (the execution block excluded)."""
    canonical = _canonical_json([e.model_dump(mode="json") for e in experiments])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
