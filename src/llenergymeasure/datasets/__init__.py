"""Prompt datasets: the AI Energy Score set, JSONL files and seeded synthetic prompts.

``load_prompts(dataset, n)`` returns the first ``n`` prompts of a dataset, in a fixed order;
``describe_dataset(dataset)`` returns a small provenance record for results.
Importing this package does not import torch, transformers or huggingface_hub.
"""

from __future__ import annotations

from llenergymeasure.datasets.aienergyscore import (
    AIENERGYSCORE,
    AIENERGYSCORE_REPO_ID,
    AIENERGYSCORE_REVISION,
    Downloader,
)
from llenergymeasure.datasets.loader import DatasetSpec, describe_dataset, load_prompts
from llenergymeasure.datasets.prompt import Prompt, SyntheticSpec, TokenizerLike
from llenergymeasure.datasets.synthetic import SYNTHETIC, SyntheticParams

__all__ = [
    "AIENERGYSCORE",
    "AIENERGYSCORE_REPO_ID",
    "AIENERGYSCORE_REVISION",
    "SYNTHETIC",
    "DatasetSpec",
    "Downloader",
    "Prompt",
    "SyntheticParams",
    "SyntheticSpec",
    "TokenizerLike",
    "describe_dataset",
    "load_prompts",
]
