"""Configuration: experiment and study schemas, YAML loading, user config, hashes."""

from llenergymeasure.config.catalogue import ENGINES, EngineSpec
from llenergymeasure.config.hashing import measurement_config_hash, study_design_hash
from llenergymeasure.config.models import (
    BaselineConfig,
    DecoderConfig,
    ExperimentConfig,
    HFDatasetConfig,
    LoRAConfig,
    MeasurementConfig,
    PyTorchConfig,
    SyntheticDatasetConfig,
    TensorRTConfig,
    VLLMConfig,
    WarmupConfig,
)
from llenergymeasure.config.online import OnlineConfig, ServerConfig, SLOConfig
from llenergymeasure.config.study import ExecutionConfig, SkippedExperiment, StudyConfig

__all__ = [
    "ENGINES",
    "BaselineConfig",
    "DecoderConfig",
    "EngineSpec",
    "ExecutionConfig",
    "ExperimentConfig",
    "HFDatasetConfig",
    "LoRAConfig",
    "MeasurementConfig",
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
