"""The PyTorch engine's load, step by step: the passthrough keys and precision checked, the
device chosen, ``from_pretrained`` arguments built, tokenizer and model loaded (a GGUF file
through transformers' GGUF loader), the tokenizer set up for left padding, the LoRA adapter
applied and the draft model of speculative decoding loaded. ``PyTorchBackend.load`` runs them
in that order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.pytorch.engine_args import PRECISION_TO_DTYPE
from llenergymeasure.engines.pytorch.model_files import (
    GGUF_LOAD_HINT,
    offline_hint,
    resolve_source,
)
from llenergymeasure.engines.pytorch.passthrough import (
    TOKENIZER_PASSTHROUGH_KEYS,
    split_passthrough_kwargs,
)
from llenergymeasure.exceptions import BackendError
from llenergymeasure.gguf_files import GGUFError, GGUFModel, gguf_model, read_gguf_header

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig, LoRAConfig

__all__ = [
    "apply_lora",
    "checked_passthrough",
    "dtype_kwarg_name",
    "gguf_loaded",
    "load_draft_model",
    "load_model_and_tokenizer",
    "model_kwargs",
    "model_location",
    "parameter_count",
    "prepare_tokenizer",
    "select_device",
]


def checked_passthrough(
    config: ExperimentConfig, requested_device: str | None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(load, generate, engine) passthrough kwargs of ``config``; raises on a problem key, a
    precision this engine has no dtype for, or ``num_processes > 1`` on one process."""
    load_kw, gen_kw, engine_kw, problems = split_passthrough_kwargs(config.passthrough_kwargs)
    if problems:
        raise BackendError("; ".join(problems))
    if config.precision not in PRECISION_TO_DTYPE:
        raise BackendError(f"pytorch engine does not support precision={config.precision!r}")
    pt = config.pytorch
    if requested_device is None and pt is not None and (pt.num_processes or 1) > 1:
        raise BackendError(
            "PyTorchBackend runs one process; pytorch.num_processes > 1 needs the "
            "data-parallel engine",
            hint="build the engine with create_engine(config.backend, config)",
        )
    return load_kw, gen_kw, engine_kw


def select_device(requested: str | None) -> Any:
    """``requested`` (a data-parallel replica's device), else ``cuda:0``, else CPU; a GPU is
    made the current device so that stray allocations land on it, not on ``cuda:0``."""
    import torch

    if requested is not None:
        device = torch.device(requested)
    else:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # stray allocations land on this GPU, not cuda:0
    return device


def model_kwargs(
    config: ExperimentConfig, device: Any, dtype: Any, load_kw: dict[str, Any]
) -> dict[str, Any]:
    """The model's ``from_pretrained`` kwargs: device, dtype, attention, bitsandbytes
    quantisation, then the passthrough load keys."""
    import transformers

    pt = config.pytorch
    model_kw: dict[str, Any] = {"device_map": str(device)}
    model_kw[dtype_kwarg_name(transformers.__version__)] = dtype
    if pt is not None and pt.attn_implementation is not None:
        model_kw["attn_implementation"] = pt.attn_implementation
    if pt is not None and (pt.load_in_4bit or pt.load_in_8bit):
        from transformers import BitsAndBytesConfig

        if pt.load_in_4bit:
            model_kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=dtype
            )
        else:
            model_kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model_kw.update(load_kw)
    return model_kw


def model_location(
    config: ExperimentConfig, load_kw: dict[str, Any]
) -> tuple[str, str, GGUFModel | None]:
    """(what ``from_pretrained`` loads, the label results name it by, the GGUF file or None):
    a GGUF file loads as ``from_pretrained(folder or hub repo, gguf_file=name)``."""
    gguf = gguf_model(
        config.model,
        config.passthrough_kwargs,
        revision=load_kw.get("revision"),
        cache_dir=load_kw.get("cache_dir"),
    )
    if gguf is None:
        source = resolve_source(config.model)
        return source, source, None
    return gguf.source, gguf.label, gguf


def load_model_and_tokenizer(
    config: ExperimentConfig,
    source: str,
    label: str,
    gguf: GGUFModel | None,
    model_kw: dict[str, Any],
    load_kw: dict[str, Any],
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from ``source``; a failure names the damaged file, the
    disk, or the model with a hint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_kw = {k: v for k, v in load_kw.items() if k in TOKENIZER_PASSTHROUGH_KEYS}
    if gguf is not None:
        tok_kw["gguf_file"] = model_kw["gguf_file"] = gguf.filename
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kw)
        model = AutoModelForCausalLM.from_pretrained(source, **model_kw)
    except Exception as e:
        from llenergymeasure.os_errors import damaged_model_error, environment_error

        damaged = damaged_model_error(e, model=config.model)
        if damaged is not None:
            raise damaged from e
        if isinstance(e, OSError) and e.errno is not None:  # the disk, not the model id
            raise environment_error(e, doing=f"loading {config.model!r}") from e
        raise BackendError(
            f"could not load model {label or config.model!r}: {type(e).__name__}: {e}",
            hint=GGUF_LOAD_HINT if gguf is not None else offline_hint(),
        ) from e
    model.eval()
    return model, tokenizer


def gguf_loaded(
    config: ExperimentConfig, load_kw: dict[str, Any], model: Any, label: str
) -> tuple[dict[str, Any], str]:
    """What the result records about a GGUF model just loaded, and a load note saying
    what ran: transformers dequantises GGUF weights to the torch dtype (or, for the few
    architectures it has GGUF kernels for, keeps them in blocks)."""
    gguf = gguf_model(  # a hub file is in the HF cache now
        config.model,
        config.passthrough_kwargs,
        revision=load_kw.get("revision"),
        cache_dir=load_kw.get("cache_dir"),
    )
    header = None
    if gguf is not None and gguf.local_path is not None:
        try:
            header = read_gguf_header(gguf.local_path)
        except GGUFError:
            header = None
    dtype = str(model.dtype).removeprefix("torch.")
    packed = len(getattr(getattr(model, "hf_quantizer", None), "packed_modules", None) or {})
    weights = (
        f"{packed} weight matrices kept in GGUF blocks (transformers' GGUF kernels), the "
        f"rest dequantised to {dtype}"
        if packed
        else f"dequantised to {dtype} by transformers"
    )
    types = header.tensor_types() if header is not None else {}
    shown = ", ".join(f"{n} {t}" for t, n in types.items()) or "tensor types unknown"
    note = f"GGUF file {gguf.label if gguf else config.model} ({shown}): weights {weights}" + (
        "" if packed else f"; the run measures {dtype} matmuls, not quantised kernels"
    )
    summary = header.summary() if header is not None else {"file": label}
    return {**summary, "weights": weights}, note


def prepare_tokenizer(tokenizer: Any, model_name: str) -> None:
    """Left padding, and a pad token (the EOS token where the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackendError(
                f"tokenizer of {model_name!r} has neither a pad nor an eos token",
                hint="set a pad token in the tokenizer config",
            )
        tokenizer.pad_token = tokenizer.eos_token


def apply_lora(model: Any, lora: LoRAConfig) -> Any:
    """``model`` with the LoRA adapter applied (merged into the weights if asked), in eval
    mode."""
    from peft import PeftModel

    adapter = lora.adapter_path or lora.adapter_id
    if adapter is None:
        raise BackendError("lora: needs adapter_path or adapter_id")
    try:
        model = PeftModel.from_pretrained(model, adapter)
    except Exception as e:
        raise BackendError(
            f"could not load LoRA adapter {adapter!r}: {type(e).__name__}: {e}"
        ) from e
    if lora.merge_weights:
        model = model.merge_and_unload()
    model.eval()
    return model


def load_draft_model(config: ExperimentConfig, device: Any, dtype: Any) -> Any:
    """The draft model of speculative decoding on ``device`` in eval mode; None without one."""
    if not (config.decoder.speculative_decoding and config.decoder.draft_model):
        return None
    import transformers
    from transformers import AutoModelForCausalLM

    draft_kw: dict[str, Any] = {"device_map": str(device)}
    draft_kw[dtype_kwarg_name(transformers.__version__)] = dtype
    draft_source = resolve_source(config.decoder.draft_model)
    draft_gguf = gguf_model(config.decoder.draft_model)
    if draft_gguf is not None:
        draft_source, draft_kw["gguf_file"] = draft_gguf.source, draft_gguf.filename
    try:
        draft = AutoModelForCausalLM.from_pretrained(draft_source, **draft_kw)
    except Exception as e:
        raise BackendError(
            f"could not load draft model {config.decoder.draft_model!r}: {type(e).__name__}: {e}",
            hint=offline_hint(),
        ) from e
    draft.eval()
    return draft


def parameter_count(model: Any) -> int:
    """Parameters of a loaded model."""
    return int(sum(p.numel() for p in model.parameters()))


def dtype_kwarg_name(transformers_version: str) -> str:
    """``dtype`` (transformers >= 4.56) or the older ``torch_dtype``."""
    try:
        major, minor = (int(x) for x in transformers_version.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
