"""The PyTorch engine's pre-flight: what on this machine would stop a config from running
(libraries, model and adapter files, GPUs for data parallelism, passthrough keys). Static
config rules are the config model's; nothing here loads a model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure.engines.pytorch.model_files import check_model_source
from llenergymeasure.engines.pytorch.passthrough import split_passthrough_kwargs
from llenergymeasure.exceptions import BackendError
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = ["data_parallel_problems", "preflight_problems"]


def preflight_problems(config: ExperimentConfig) -> list[str]:
    """Libraries installed (torch, transformers, bitsandbytes, flash-attn, peft), model and
    adapter files, GPUs for data parallelism, passthrough keys; one message per problem."""
    problems: list[str] = []
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(
            f"pytorch engine needs {', '.join(missing)}: {extra_install_hint('pytorch')}"
        )
        return problems

    load_kw, _gen_kw, _engine_kw, pt_problems = split_passthrough_kwargs(config.passthrough_kwargs)
    problems.extend(pt_problems)
    problems.extend(check_model_source(config.model, "model", load_kw, config.passthrough_kwargs))

    pt = config.pytorch
    if pt is not None:
        if (pt.load_in_4bit or pt.load_in_8bit) and importlib.util.find_spec(
            "bitsandbytes"
        ) is None:
            problems.append(
                "pytorch.load_in_4bit/load_in_8bit need bitsandbytes: pip install bitsandbytes"
            )
        if (pt.num_processes or 1) > 1:
            problems.extend(data_parallel_problems(config))
        if pt.attn_implementation == "flash_attention_2" and (
            importlib.util.find_spec("flash_attn") is None
        ):
            problems.append(
                "pytorch.attn_implementation=flash_attention_2 needs flash-attn: "
                "pip install flash-attn (or use sdpa)"
            )

    dec = config.decoder
    if dec.speculative_decoding and dec.draft_model:
        problems.extend(check_model_source(dec.draft_model, "decoder.draft_model"))

    if config.lora is not None:
        if importlib.util.find_spec("peft") is None:
            problems.append("lora: needs peft: pip install peft")
        path = config.lora.adapter_path
        if path is not None and not Path(path).expanduser().is_dir():
            problems.append(f"lora.adapter_path {path!r} is not a directory")
        if config.lora.adapter_id is not None:
            from llenergymeasure.hub import hub_model_problem

            problem = hub_model_problem(
                config.lora.adapter_id, "lora.adapter_id", filename="adapter_config.json"
            )
            problems.extend([problem] if problem else [])
    return problems


def data_parallel_problems(config: ExperimentConfig) -> list[str]:
    """num_processes > 1 on this single-process engine: the device problem, else a pointer."""
    from llenergymeasure.energy.devices import visible_gpu_slots
    from llenergymeasure.engines.process_plan import device_problems

    try:
        slots = visible_gpu_slots()
    except BackendError as e:
        return [f"pytorch.num_processes: cannot map the visible GPUs: {e}"]
    problems = device_problems(config, slots)
    if problems:
        return problems
    return [
        "pytorch.num_processes > 1 runs through the data-parallel engine "
        "(create_engine(backend, config) or engines.data_parallel.DataParallelEngine); "
        "PyTorchBackend itself runs one process"
    ]
