"""A run's inputs, read and checked before anything expensive (pre-flight and ``--dry-run``).

``prepare_run_dataset`` is what a run's pre-flight calls: the dataset is read once (a JSONL file
streamed only as far as the run needs, an HF dataset's first rows) and the run then uses exactly
what was read; with ``chat_template: true`` the model's tokenizer is checked for a template here
when it can be opened without loading the model (else once the engine has loaded it).
``dataset_file_problems`` checks the JSONL files and HF datasets of one or many experiments the
same way, for ``llem run --dry-run`` and before a study starts, each read once;
``model_file_problems`` the GGUF model files. ``prompt_length_problems``: the second half of a
run's pre-flight, once the engine is loaded and its length limit known.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.config.models import ExperimentConfig, HFDatasetConfig
from llenergymeasure.datasets.chat import NO_TEMPLATE_HINT, chat_template_of
from llenergymeasure.datasets.hf import read_hf_dataset
from llenergymeasure.datasets.loader import PreparedDataset, prepare_dataset
from llenergymeasure.exceptions import ConfigError, PreFlightError
from llenergymeasure.gguf_files import GGUF_FILE_KEY, gguf_model, gguf_model_problem, names_gguf

if TYPE_CHECKING:
    from llenergymeasure.engines.base import InferenceBackend

__all__ = [
    "PreflightDataset",
    "chat_template_problem",
    "dataset_file_problems",
    "dataset_problem",
    "model_file_problems",
    "prepare_run_dataset",
    "prompt_length_problems",
    "warmup_rows",
]


def warmup_rows(config: ExperimentConfig) -> int:
    """Dataset rows after the measured ones a run may warm up on (one batch in flight; online
    runs warm up on their own prompts)."""
    if config.mode == "online":
        return 0
    return max(1, min(run_concurrency(config), config.n))


def prepare_run_dataset(config: ExperimentConfig) -> PreparedDataset:
    """The dataset of ``config`` read and checked for its run; ``ConfigError`` if it cannot be
    (or if ``chat_template`` is asked and the model's tokenizer has no template)."""
    dataset: Any = config.dataset
    prepared = prepare_dataset(
        dataset, config.n, extra=warmup_rows(config), chat_template=config.chat_template
    )
    problem = chat_template_problem(config)
    if problem is not None:
        raise ConfigError(problem, hint=NO_TEMPLATE_HINT)
    return prepared


def chat_template_problem(config: ExperimentConfig) -> str | None:
    """With ``chat_template: true``: the problem when the model's tokenizer, opened from local
    files only (a built-in model, a local folder, the HF cache), has no chat template. None when
    it has one, or when it cannot be opened so (the template is then checked after the load)."""
    if not config.chat_template:
        return None
    if names_gguf(config.model, config.passthrough_kwargs):
        from llenergymeasure.harness.vram import config_gguf_header

        header = config_gguf_header(config)  # the template is in the header's metadata
        if header is None or header.chat_template is not None:
            return None
        return f"chat_template: true, but the GGUF file of {config.model!r} has no chat template"
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            _tokenizer_source(config), **_local_kwargs(config)
        )
    except Exception:  # not local, not a tokenizer folder, no transformers: checked after load
        return None
    if chat_template_of(tokenizer) is not None:
        return None
    return f"chat_template: true, but the tokenizer of {config.model!r} has no chat template"


def _tokenizer_source(config: ExperimentConfig) -> str:
    from llenergymeasure.engines.builtin import is_builtin_model, resolve_builtin_model

    if is_builtin_model(config.model):
        return str(resolve_builtin_model(config.model))
    return os.path.expanduser(config.model)


def _local_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True}
    revision = (config.passthrough_kwargs or {}).get("revision")
    if isinstance(revision, str):
        kwargs["revision"] = revision
    return kwargs


def model_file_problems(configs: Iterable[ExperimentConfig]) -> list[str]:
    """Problems of the GGUF files ``configs`` name on this machine (missing, not GGUF, cut
    short), each file read once: for ``llem run --dry-run`` and before a study starts (a
    single run's engine pre-flight reads its own)."""
    problems: list[str] = []
    seen: set[tuple[str, str | None]] = set()
    for config in configs:
        named = (config.passthrough_kwargs or {}).get(GGUF_FILE_KEY)
        key = (config.model, named if isinstance(named, str) else None)
        if key in seen:
            continue
        seen.add(key)
        gguf = gguf_model(config.model, config.passthrough_kwargs)
        problem = gguf_model_problem(gguf) if gguf is not None else None
        if problem is not None:
            problems.append(problem)
    return problems


def dataset_problem(exc: ConfigError) -> str:
    """A pre-flight problem line for a dataset error."""
    return f"dataset: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def _jsonl_path(config: ExperimentConfig) -> Path | None:
    dataset = config.dataset
    if isinstance(dataset, str) and dataset.endswith(".jsonl"):
        return Path(os.path.expanduser(dataset))
    return None


def dataset_file_problems(configs: Iterable[ExperimentConfig]) -> list[str]:
    """Problems of the JSONL files and HF datasets of ``configs``, each read once as far as the
    largest run needs (aienergyscore and synthetic datasets are checked by each run's
    pre-flight)."""
    from llenergymeasure.datasets.jsonl import scan_jsonl

    sources: dict[Any, Path | HFDatasetConfig] = {}
    by_source: dict[Any, list[ExperimentConfig]] = {}
    for config in configs:
        path = _jsonl_path(config)
        dataset = config.dataset
        if path is not None:
            key: Any = path
            sources[key] = path
        elif isinstance(dataset, HFDatasetConfig):
            key = tuple(dataset.model_dump().items())
            sources[key] = dataset
        else:
            continue
        by_source.setdefault(key, []).append(config)
    problems: list[str] = []
    for key, users in by_source.items():
        source = sources[key]
        want = max(c.n + warmup_rows(c) for c in users)
        try:
            if isinstance(source, Path):
                available = len(scan_jsonl(source, limit=want).prompts)
                name = str(source)
            else:
                available = read_hf_dataset(source, limit=want).n_available
                name = f"HF dataset {source.hf!r}"
        except ConfigError as exc:
            problems.append(dataset_problem(exc))
            continue
        short = sorted({c.n for c in users if c.n > available})
        if short:
            problems.append(
                f"dataset: {name} has {available} prompts but n={short[-1]} were asked "
                f"for (use n <= {available})"
            )
    return problems


def prompt_length_problems(
    engine: InferenceBackend, config: ExperimentConfig, prompts: Sequence[Any]
) -> list[str]:
    """Prompts whose tokens + new tokens exceed the loaded engine's maximum length.

    Engines report their limit with ``max_sequence_length()``; where it is unknown (or the
    engine has no tokenizer) nothing is checked.
    """
    limit = engine.max_sequence_length()
    tokenizer = engine.tokenizer
    if limit is None or tokenizer is None:
        return []
    problems: list[str] = []
    over = 0
    for prompt in prompts:
        n_in = len(tokenizer.encode(prompt.text))
        n_new = config.max_new_tokens_for(prompt.max_new_tokens)
        if n_in + n_new > limit:
            over += 1
            if len(problems) < 5:
                problems.append(
                    f"prompt {prompt.index}: {n_in} prompt tokens + {n_new} new tokens = "
                    f"{n_in + n_new} exceeds the maximum sequence length {limit} of "
                    f"{config.model}"
                )
    if over > len(problems):
        problems.append(f"... and {over - len(problems)} more prompts over the limit")
    return problems


class PreflightDataset:
    """The dataset a run's pre-flight read, kept for the run: its file is read once per run."""

    def __init__(self) -> None:
        self._read: tuple[ExperimentConfig, PreparedDataset] | None = None

    def clear(self) -> None:
        self._read = None

    def check(self, config: ExperimentConfig) -> list[str]:
        """Read and check the dataset of ``config`` now and keep it; its problems (none when
        fine)."""
        self._read = None
        try:
            self._read = (config, prepare_run_dataset(config))
        except ConfigError as exc:
            return [dataset_problem(exc)]
        return []

    def prepared(self, config: ExperimentConfig) -> PreparedDataset:
        """What was read for ``config`` (read now if pre-flight did not run)."""
        if self._read is None or self._read[0] is not config:
            problems = self.check(config)
            if problems:
                raise PreFlightError(problems)
        assert self._read is not None
        return self._read[1]

    def provenance(self) -> dict[str, Any] | None:
        """The provenance pre-flight recorded, with the chat template when one was applied
        (None: nothing read, e.g. an injected loader, described from the config instead)."""
        if self._read is None:
            return None
        return dict(self._read[1].provenance)
