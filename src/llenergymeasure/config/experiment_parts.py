"""The parts of an experiment config that every engine shares: decoding, warmup, idle baseline,
the dataset forms (synthetic, HF), LoRA and extra measurements. ``ExperimentConfig``
(``config/models.py``) puts them together."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from llenergymeasure.config import bounds as B
from llenergymeasure.config.strict import STRICT_CONFIG

__all__ = [
    "BaselineConfig",
    "DecoderConfig",
    "HFDatasetConfig",
    "LoRAConfig",
    "MeasurementConfig",
    "SyntheticDatasetConfig",
    "WarmupConfig",
]

_FORBID = STRICT_CONFIG


class DecoderConfig(BaseModel):
    """How tokens are chosen. ``ignore_eos`` forces full-length generation."""

    model_config = _FORBID

    temperature: Annotated[float, B.TEMPERATURE] = Field(
        1.0, description="Sampling temperature (0 = greedy). All engines."
    )
    top_p: Annotated[float, B.TOP_P] = Field(
        1.0,
        description="Nucleus-sampling probability mass, in (0, 1]. All engines.",
    )
    top_k: Annotated[int, B.TOP_K] | None = Field(
        None,
        description="Sample from the k most likely tokens (0 = off). None = no top-k limit.",
    )
    repetition_penalty: Annotated[float, B.PENALTY] = Field(
        1.0, description="Penalty on repeated tokens (1.0 = none). All engines."
    )
    decoding_strategy: Literal["greedy", "sampling", "beam"] = Field(
        "greedy",
        description=(
            "greedy, sampling or beam; engines that do not support a strategy reject it at "
            "validation."
        ),
    )
    num_beams: Annotated[int, B.BEAMS] | None = Field(
        None,
        description=(
            "Beams for beam search; only with decoding_strategy='beam'. None = the engine's "
            "default."
        ),
    )
    speculative_decoding: bool = Field(
        False,
        description=(
            "Speculative decoding with draft_model (PyTorch: assisted generation, batch_size 1; "
            "vLLM; not TensorRT-LLM)."
        ),
    )
    draft_model: str | None = Field(
        None, description="HF id or path of the draft model for speculative_decoding."
    )
    ignore_eos: bool = Field(
        False,
        description=(
            "Generate exactly max_new_tokens, ignoring end-of-sequence tokens (fixed output "
            "lengths for fair comparisons)."
        ),
    )

    @model_validator(mode="after")
    def validate_decoder(self) -> DecoderConfig:
        if self.num_beams is not None and self.decoding_strategy != "beam":
            raise ValueError("num_beams requires decoding_strategy='beam'")
        if self.speculative_decoding and not self.draft_model:
            raise ValueError("speculative_decoding=True requires draft_model to be set")
        if self.decoding_strategy == "sampling" and self.temperature == 0:
            raise ValueError(
                "temperature=0 with decoding_strategy='sampling' is not a distribution to sample "
                "from: use decoding_strategy: greedy, or a temperature > 0"
            )
        return self


class WarmupConfig(BaseModel):
    """Warmup before the measurement window (excluded from every metric)."""

    model_config = _FORBID

    n_warmup: Annotated[int, B.WARMUP_RUNS] = Field(
        3,
        description=(
            "Warmup runs before the window, each over as many prompts as the run keeps in flight; "
            "warmup prompts are never the measured prompts."
        ),
    )
    thermal_floor_seconds: Annotated[float, B.GAP_SECONDS] = Field(
        60.0,
        description=(
            "Seconds to wait after warmup before the window opens, so the GPU reaches a steady "
            "temperature; below 30 s the result gets a warning."
        ),
    )
    convergence_detection: bool = Field(
        False,
        description=(
            "Repeat warmup runs (up to max_prompts) until the CV of the last three run latencies "
            "is at most cv_target."
        ),
    )
    cv_target: Annotated[float, B.CV_TARGET] = Field(
        0.05,
        description=(
            "Coefficient of variation of the last three warmup latencies that ends warmup "
            "(convergence_detection only)."
        ),
    )
    max_prompts: Annotated[int, B.WARMUP_MAX_RUNS] = Field(
        20, description="Most warmup runs with convergence_detection."
    )


class BaselineConfig(BaseModel):
    """Idle-power baseline measured before the model is loaded."""

    model_config = _FORBID

    enabled: bool = Field(
        True,
        description=(
            "Measure idle GPU power before the model is loaded and report baseline-adjusted energy."
        ),
    )
    duration_seconds: Annotated[float, B.BASELINE_SECONDS] = Field(
        30.0, description="Seconds of idle power polling for the baseline."
    )


class SyntheticDatasetConfig(BaseModel):
    """``n`` generated prompts of exactly ``input_len`` tokens; ``output_len`` = max_new_tokens.

    ``n`` is given once: in an experiment, ``dataset.n`` and the top-level ``n`` each take the
    other's value when left out (both out: the default ``n``); both given, ``dataset.n`` must be
    at least ``n``. Unset, ``output_len`` takes the experiment's ``max_new_tokens`` when that is
    given; both set to different values is a config error.
    """

    model_config = _FORBID

    n: Annotated[int, B.PROMPTS] = Field(
        description=("Prompts generated (the first n are measured); unset, the experiment's n.")
    )
    input_len: Annotated[int, B.TOKENS] = Field(
        512, description="Tokens per prompt (exact, in the model's tokenizer)."
    )
    output_len: Annotated[int, B.TOKENS] = Field(
        128, description="Output tokens per prompt; replaces max_new_tokens."
    )
    seed: Annotated[int, B.SEED] = Field(
        42, description="Seed of the prompt generator (warmup prompts use another seed)."
    )


class HFDatasetConfig(BaseModel):
    """A dataset read with the ``datasets`` library: a hub name or a local folder.

    The folder may be one written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` or
    any folder ``datasets.load_dataset`` reads. The hub is used through the library's cache, so
    ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) reads a cached copy without network.
    """

    model_config = _FORBID

    hf: str = Field(
        min_length=1,
        description=(
            "Hub dataset name (e.g. org/name) or a local folder (save_to_disk output or data "
            "files)."
        ),
    )
    split: str | None = Field(
        None,
        description="Split to read. None = the only split, else 'train' (an error lists them).",
    )
    column: str | None = Field(
        None,
        description=(
            "Column holding the prompts (strings). None = 'text', then 'prompt', then the only "
            "string column."
        ),
    )
    config: str | None = Field(
        None, description="Dataset configuration (subset) name, for hub datasets that have several."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) to pin. None = the default branch.",
    )


class LoRAConfig(BaseModel):
    """A LoRA adapter applied to the base model (``adapter_id`` or ``adapter_path``)."""

    model_config = _FORBID

    adapter_id: str | None = Field(
        None, description="HF hub id of the adapter (or give adapter_path)."
    )
    adapter_path: str | None = Field(
        None, description="Local path of the adapter (or give adapter_id)."
    )
    merge_weights: bool = Field(
        False,
        description=(
            "True merges the adapter into the weights (the deployed cost); False keeps it separate"
            " (measures adapter overhead). PyTorch only; vLLM applies adapters unmerged."
        ),
    )

    @model_validator(mode="after")
    def validate_adapter_source(self) -> LoRAConfig:
        if self.adapter_id is None and self.adapter_path is None:
            raise ValueError("LoRAConfig requires either adapter_id or adapter_path")
        if self.adapter_id is not None and self.adapter_path is not None:
            raise ValueError("Specify adapter_id OR adapter_path, not both")
        return self


class MeasurementConfig(BaseModel):
    """Extra measurements of a run beyond the headline window.

    ``phase_split``: after the measurement window, run a prefill-only window over the same
    prompts and batching (``max_new_tokens`` 1, its own warmup, the same thermal floor) and
    report the differential prefill/decode energy split (``ExperimentResult.phase_split``).
    It roughly adds one prefill pass of the whole workload to the run's wall time.
    """

    model_config = _FORBID

    phase_split: bool = Field(
        False,
        description=(
            "After the window, measure a prefill-only window (max_new_tokens 1) and report the "
            "differential prefill/decode split; adds about one prefill pass of the workload to the"
            " run."
        ),
    )
