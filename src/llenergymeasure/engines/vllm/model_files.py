"""The model files the vLLM engine gives ``vllm.LLM``: the source path (a built-in model's
folder, a GGUF file downloaded into the HF cache), the GGUF header, vLLM's GGUF plugin, and
the parameter count read from file headers (no tensor load)."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.exceptions import BackendError
from llenergymeasure.gguf_files import (
    GGUFError,
    GGUFHeader,
    GGUFModel,
    gguf_model,
    gguf_model_problem,
    names_gguf,
    read_gguf_header,
)

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = [
    "GGUF_PLUGIN_HINT",
    "GGUF_PLUGIN_MODULE",
    "count_safetensors_params",
    "gguf_header",
    "gguf_problems",
    "model_source",
    "needs_gguf_plugin",
]

#: vLLM releases from 0.24 load GGUF files only with this plugin installed (vLLM's GGUF page).
GGUF_PLUGIN_MODULE = "vllm_gguf_plugin"
GGUF_PLUGIN_HINT = "pip install vllm-gguf-plugin"


def model_source(config: ExperimentConfig) -> str:
    """What ``LLM(model=...)`` gets: the local folder of a ``builtin:`` model; the path of a
    GGUF file (a hub repository's file downloaded into the HF cache first, outside any
    window); anything else unchanged."""
    from llenergymeasure.engines import builtin

    name = config.model
    if builtin.is_builtin_model(name):
        return str(builtin.resolve_builtin_model(name))
    extra = config.passthrough_kwargs or {}
    gguf = gguf_model(
        name, extra, revision=extra.get("revision"), cache_dir=extra.get("download_dir")
    )
    if gguf is None:
        return name
    if gguf.local_path is not None:
        return str(gguf.local_path)
    from huggingface_hub import hf_hub_download

    return str(
        hf_hub_download(
            gguf.source,
            gguf.filename,
            revision=extra.get("revision"),
            cache_dir=extra.get("download_dir"),
        )
    )


def gguf_header(config: ExperimentConfig, source: str) -> GGUFHeader | None:
    """The header of the GGUF file vLLM is given (``source``), None for other models."""
    if not names_gguf(config.model, config.passthrough_kwargs):
        return None
    try:
        return read_gguf_header(source)
    except GGUFError as e:
        raise BackendError(f"vllm: GGUF file {source!r} {e}") from e


def needs_gguf_plugin(version: str) -> bool:
    """Whether this vLLM release loads GGUF only through vllm-gguf-plugin (0.24 and later;
    an unreadable version counts as the 0.26 this engine targets)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is None or (int(match[1]), int(match[2])) >= (0, 24)


def gguf_problems(gguf: GGUFModel, version: str, revision: Any, download_dir: Any) -> list[str]:
    """A GGUF model on vLLM ``version``: vLLM's GGUF plugin installed (vLLM >= 0.24), the file
    complete, or a hub file not downloaded yet on a hub that answers."""
    problems: list[str] = []
    if needs_gguf_plugin(version) and importlib.util.find_spec(GGUF_PLUGIN_MODULE) is None:
        problems.append(
            f"{gguf.field}: vLLM {version} loads GGUF files only with the "
            f"vllm-gguf-plugin package, which is not installed: {GGUF_PLUGIN_HINT}"
        )
    if gguf.on_hub and gguf.local_path is None:
        from llenergymeasure.hub import hub_model_problem

        problem = hub_model_problem(
            gguf.source,
            "model",
            revision=revision if isinstance(revision, str) else None,
            cache_dir=download_dir if isinstance(download_dir, str) else None,
            filename=gguf.filename,
        )
    else:
        problem = gguf_model_problem(gguf)
    return [*problems, problem] if problem else problems


def count_safetensors_params(folder: Path) -> int:
    """Parameters in a folder's ``*.safetensors`` files, from their headers (no tensor load)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for dim in info.get("shape", []):
                n *= int(dim)
            total += n
    return total
