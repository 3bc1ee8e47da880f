"""Experiment configuration: one ``ExperimentConfig`` type with optional engine sections.

Engine-section fields default to ``None`` meaning "the engine's own default"; the engine
resolves them at run time and the result records the effective value.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from llenergymeasure.config import bounds as B
from llenergymeasure.config.catalogue import engine_names, engine_spec
from llenergymeasure.config.engine_sections import (
    EngineSection,
    PyTorchConfig,
    TensorRTConfig,
    VLLMConfig,
)
from llenergymeasure.config.experiment_parts import (
    BaselineConfig,
    DecoderConfig,
    HFDatasetConfig,
    LoRAConfig,
    MeasurementConfig,
    SyntheticDatasetConfig,
    WarmupConfig,
)
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.config.secrets import drop_redacted, redact_secrets
from llenergymeasure.config.strict import STRICT_CONFIG
from llenergymeasure.gguf_files import gguf_naming_problem

#: Validation context for configs a user wrote (YAML, CLI, study grid): enables the checks
#: that only make sense on user input, e.g. max_new_tokens vs a synthetic output_len.
USER_INPUT: dict[str, Any] = {"user_input": True}

#: Dataset names that need no file.
BUILTIN_DATASETS: tuple[str, ...] = ("aienergyscore", "synthetic")

#: An engine name from the catalogue (``config.catalogue.engine_names()``).
Backend = str
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8", "int4"]

_FORBID = STRICT_CONFIG


def _non_finite_path(value: Any, path: str) -> str | None:
    """The dotted path of the first inf/nan float inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _dataset_kind(value: Any) -> str:
    if isinstance(value, HFDatasetConfig) or (isinstance(value, dict) and "hf" in value):
        return "hf"
    return "synthetic" if isinstance(value, (dict, SyntheticDatasetConfig)) else "name"


def _is_synthetic_mapping(value: Any) -> bool:
    return isinstance(value, dict) and "hf" not in value


def _default_n() -> int:
    return int(ExperimentConfig.model_fields["n"].default)


def _one_n(data: dict[str, Any], dataset: dict[str, Any]) -> None:
    """A synthetic dataset's ``n`` given once (the rule, in place): the top-level ``n`` and
    ``dataset.n`` each take the other's value when left out; both left out, the default ``n``.
    Both given, they stay as written (``dataset.n >= n`` is checked after validation)."""
    if "n" in data and "n" not in dataset:
        # an invalid n is reported once, against n, not again against dataset.n
        dataset["n"] = data["n"] if _valid_count(data["n"]) else 1
    elif "n" in dataset and "n" not in data:
        if _valid_count(dataset["n"]):
            data["n"] = dataset["n"]
    elif "n" not in data:
        dataset["n"] = _default_n()


def _valid_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and B.PROMPTS.contains(value)


# A dataset is a name/path string or a synthetic mapping; the discriminator keeps validation
# errors about one branch from being reported against the other.
DatasetSpec = Annotated[
    Annotated[str, Tag("name")]
    | Annotated[SyntheticDatasetConfig, Tag("synthetic")]
    | Annotated[HFDatasetConfig, Tag("hf")],
    Discriminator(_dataset_kind),
]


class ExperimentConfig(BaseModel):
    """One measurement: a model, an engine, a workload and how to measure it."""

    model_config = ConfigDict(**STRICT_CONFIG, protected_namespaces=())

    model: str = Field(
        min_length=1,
        description=(
            "HF hub id, local path, a .gguf file (PyTorch, vLLM), or builtin:tiny (a small "
            "random-weight model generated offline). A folder or hub repository holding "
            "several GGUF files takes passthrough_kwargs.gguf_file: NAME."
        ),
    )
    backend: Backend = Field(
        description="Inference engine: pytorch, vllm or tensorrt (the engine catalogue)."
    )
    precision: Precision = Field(
        "bf16",
        description=(
            "Weight/compute precision; each engine accepts a subset (validation says which)."
        ),
    )
    dataset: DatasetSpec = Field(
        "aienergyscore",
        description=(
            "aienergyscore, synthetic, a path to a .jsonl file, a synthetic mapping {n, "
            "input_len, output_len, seed}, or an HF dataset {hf, split, column, config, "
            "revision} (needs the datasets extra)."
        ),
    )
    n: Annotated[int, B.PROMPTS] = Field(
        100,
        description=(
            "Prompts measured (taken from the dataset in order); in online mode, requests sent. "
            "Unset with a synthetic mapping: its n."
        ),
    )
    max_new_tokens: Annotated[int, B.TOKENS] = Field(
        128,
        description=(
            "Most tokens generated per prompt (a synthetic dataset's output_len replaces it)."
        ),
    )
    random_seed: Annotated[int, B.SEED] = Field(
        42, description="Seed for sampling and any engine randomness."
    )
    chat_template: bool = Field(
        False,
        description=(
            "Wrap each prompt (any dataset) in the tokenizer's chat template as one user message "
            "with the generation prompt, before warmup and the window; a tokenizer without a "
            "template is a pre-flight error."
        ),
    )

    decoder: DecoderConfig = Field(
        default_factory=DecoderConfig, description="How tokens are chosen."
    )
    warmup: WarmupConfig = Field(
        default_factory=WarmupConfig, description="Warmup and thermal floor before the window."
    )
    baseline: BaselineConfig = Field(
        default_factory=BaselineConfig, description="Idle-power baseline."
    )
    measurement: MeasurementConfig = Field(
        default_factory=MeasurementConfig,
        description="Extra measurements beyond the headline window (the prefill/decode split).",
    )

    pytorch: PyTorchConfig | None = Field(
        None, description="transformers engine settings (backend: pytorch only)."
    )
    vllm: VLLMConfig | None = Field(None, description="vLLM engine settings (backend: vllm only).")
    tensorrt: TensorRTConfig | None = Field(
        None, description="TensorRT-LLM engine settings (backend: tensorrt only)."
    )

    lora: LoRAConfig | None = Field(
        None, description="A LoRA adapter on the base model (PyTorch, vLLM)."
    )
    passthrough_kwargs: dict[str, Any] | None = Field(
        None,
        description=(
            "Engine options without a config field of their own (PyTorch: from_pretrained and "
            "GenerationConfig keys; vLLM/TensorRT-LLM: engine arguments); a key that has a "
            "config field is an error. Part of the config hash."
        ),
    )

    # Online mode (issue 20): measure a server under load instead of an offline batch.
    mode: Literal["offline", "online"] = Field(
        "offline",
        description=(
            "offline: the engine generates a fixed batch of prompts; online: a server is measured "
            "under a request load."
        ),
    )
    online: OnlineConfig | None = Field(
        None, description="Server and load of an online run (required with mode: online)."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_synthetic_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # `dataset: synthetic` is shorthand for a synthetic set of `n` prompts with defaults.
        if data.get("dataset") == "synthetic":
            data = {**data, "dataset": {}}
        if isinstance(data.get("dataset"), SyntheticDatasetConfig):
            data = {**data, "dataset": data["dataset"].model_dump(exclude_unset=True)}
        dataset = data.get("dataset")
        if _is_synthetic_mapping(dataset):
            data = {**data, "dataset": dict(dataset)}
            _one_n(data, data["dataset"])
            # Synthetic output_len and max_new_tokens are one quantity: whichever is given fills
            # the other, so the config records what runs; both set and different is an error
            # for user input (_check_output_len_agrees).
            if "output_len" not in data["dataset"] and "max_new_tokens" in data:
                data["dataset"]["output_len"] = data["max_new_tokens"]
            elif "output_len" in data["dataset"] and "max_new_tokens" not in data:
                data["max_new_tokens"] = data["dataset"]["output_len"]
        return data

    @field_validator("passthrough_kwargs")
    @classmethod
    def _check_passthrough_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            bad = _non_finite_path(value, "passthrough_kwargs")
            if bad is not None:
                raise ValueError(f"{bad} is not a finite number (inf and nan are not allowed)")
            # A config read back from a written file carries placeholders, not credentials.
            value = drop_redacted(value)
        return value

    @field_serializer("passthrough_kwargs")
    def _redact_passthrough(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Every dump (result.json, manifest, report, tables) hides credentials.
        return None if value is None else redact_secrets(value)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        known = engine_names()
        if value not in known:
            guess = difflib.get_close_matches(value, known, n=1)
            hint = f": did you mean '{guess[0]}'?" if guess else ""
            raise ValueError(f"unknown backend {value!r}{hint} (known engines: {', '.join(known)})")
        return value

    @field_validator("dataset", mode="before")
    @classmethod
    def _check_dataset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("dataset must not be empty")
            if value not in BUILTIN_DATASETS and not value.endswith(".jsonl"):
                raise ValueError(
                    f"dataset {value!r} is not known: use 'aienergyscore', 'synthetic', "
                    "a mapping {n, input_len, output_len, seed}, a path to a .jsonl file, or "
                    f"an HF dataset {{hf: {value}, split: ..., column: ...}}"
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _check_output_len_agrees(cls, data: Any, info: ValidationInfo) -> Any:
        # Only for what a user wrote (USER_INPUT context): a stored config's dump carries both
        # fields and must stay readable whatever its values.
        if not (info.context or {}).get("user_input") or not isinstance(data, dict):
            return data
        dataset = data.get("dataset")
        if (
            isinstance(dataset, dict)
            and "max_new_tokens" in data
            and "output_len" in dataset
            and dataset["output_len"] != data["max_new_tokens"]
        ):
            raise ValueError(
                f"max_new_tokens={data['max_new_tokens']!r} and dataset.output_len="
                f"{dataset['output_len']!r} disagree: a synthetic dataset's output_len is "
                "the number of new tokens; set only one of them, or both to the same value"
            )
        return data

    @model_validator(mode="after")
    def validate_backend_compatibility(self) -> ExperimentConfig:
        spec = engine_spec(self.backend)
        if self.precision not in spec.precisions:
            raise ValueError(
                f"{self.backend} does not support precision={self.precision!r}. "
                f"Valid: {list(spec.precisions)}"
            )
        if self.decoder.decoding_strategy not in spec.decoding_strategies:
            raise ValueError(
                f"{self.backend} does not support decoding_strategy="
                f"{self.decoder.decoding_strategy!r}. Valid: {list(spec.decoding_strategies)}"
            )
        for section in ENGINE_SECTION_MODELS:
            if getattr(self, section) is not None and spec.config_section != section:
                raise ValueError(
                    f"{section}: config section provided but backend={self.backend!r}. "
                    f"Remove the {section}: section or set backend: {section}."
                )
        problem = gguf_naming_problem(self.model, self.passthrough_kwargs)
        if problem is not None:
            raise ValueError(problem)
        section_model = ENGINE_SECTION_MODELS.get(spec.config_section or "")
        if section_model is not None:
            section_model.check_experiment(self)
        self._check_mode_section()
        if isinstance(self.dataset, SyntheticDatasetConfig) and self.dataset.n < self.n:
            raise ValueError(
                f"n={self.n} prompts requested but the synthetic dataset generates only "
                f"dataset.n={self.dataset.n} (give n once: either one alone sets both)"
            )
        return self

    def _check_mode_section(self) -> None:
        # Online mode needs its section; offline mode must not carry one (it would be ignored).
        if self.mode == "online" and self.online is None:
            raise ValueError(
                "mode: online requires an online: section (at least `online: {}` to start the "
                "engine's server, or `online: {endpoint: http://host:port}`)"
            )
        if self.mode == "offline" and self.online is not None:
            raise ValueError(
                "online: section given but mode is 'offline'. Set mode: online or remove online:"
            )
        if self.online is not None and self.online.request_rate != "inf":
            # the arrival schedule spans (n - 1) / rate seconds: a tiny rate must not make
            # the load last for years
            span = (self.n - 1) / float(self.online.request_rate)
            if span > B.MAX_LOAD_SECONDS:
                raise ValueError(
                    f"n={self.n} requests at online.request_rate={self.online.request_rate} "
                    f"req/s take {span / 86_400:,.1f} days to send, more than the limit of "
                    f"{B.MAX_LOAD_SECONDS / 86_400:g} days: raise request_rate or lower n"
                )

    @property
    def effective_max_new_tokens(self) -> int:
        """The run's new-token limit: a synthetic dataset's ``output_len``, else
        ``max_new_tokens``. The two agree in every config built by this version; a stored
        config of an older one may carry the default 128 beside its ``output_len``."""
        if isinstance(self.dataset, SyntheticDatasetConfig):
            return self.dataset.output_len
        return self.max_new_tokens

    def max_new_tokens_for(self, prompt_limit: int | None) -> int:
        """The new-token limit of one prompt: its own ``max_new_tokens`` (a JSONL row's),
        else the run's (``effective_max_new_tokens``). The one place this rule lives."""
        return self.effective_max_new_tokens if prompt_limit is None else int(prompt_limit)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load and validate an experiment YAML file; errors are ``ConfigError``."""
        from llenergymeasure.config.loading import load_experiment_config

        return load_experiment_config(path)


#: The ``ExperimentConfig`` fields that are engine sections, with their models (each belongs to
#: the one engine whose catalogue record names it as ``config_section``).
ENGINE_SECTION_MODELS: dict[str, type[EngineSection]] = {
    name: model
    for name, info in ExperimentConfig.model_fields.items()
    for model in get_args(info.annotation)
    if isinstance(model, type) and issubclass(model, EngineSection)
}
