"""Configuration: experiment and study schemas, YAML loading, user config, hashes."""

from llenergymeasure.config.hashing import measurement_config_hash, study_design_hash
from llenergymeasure.config.models import (
    BaselineConfig,
    DecoderConfig,
    ExperimentConfig,
    LoRAConfig,
    PyTorchConfig,
    SyntheticDatasetConfig,
    TensorRTConfig,
    VLLMConfig,
    WarmupConfig,
)
from llenergymeasure.config.online import OnlineConfig, ServerConfig, SLOConfig
from llenergymeasure.config.ssot import DECODING_SUPPORT, PRECISION_SUPPORT
from llenergymeasure.config.study import ExecutionConfig, SkippedExperiment, StudyConfig

__all__ = [
    "DECODING_SUPPORT",
    "PRECISION_SUPPORT",
    "BaselineConfig",
    "DecoderConfig",
    "ExecutionConfig",
    "ExperimentConfig",
    "LoRAConfig",
    "OnlineConfig",
    "PyTorchConfig",
    "SLOConfig",
    "ServerConfig",
    "SkippedExperiment",
    "StudyConfig",
    "SyntheticDatasetConfig",
    "TensorRTConfig",
    "VLLMConfig",
    "WarmupConfig",
    "measurement_config_hash",
    "study_design_hash",
]
