"""Where the PyTorch engine's model comes from: a ``builtin:`` model, a local folder, a hub id,
or a GGUF file (of a folder or a hub repository); the pre-flight check that it can be
resolved without loading it, and the hints a failed load gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llenergymeasure.gguf_files import GGUFModel, gguf_model, gguf_model_problem

__all__ = [
    "GGUF_LOAD_HINT",
    "check_model_source",
    "gguf_problems",
    "looks_like_path",
    "offline_hint",
    "resolve_source",
]

GGUF_LOAD_HINT = (
    "transformers loads GGUF files of the architectures its GGUF loader knows (llama, mistral, "
    "qwen2, ...); for another one use backend vllm, or the original HF checkpoint"
)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is a filesystem path rather than a hub id."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().exists()


def offline_hint() -> str:
    """The hint of a model that could not be fetched."""
    return (
        "check the model id and network access; offline, put the model in the HF cache and set "
        "HF_HUB_OFFLINE=1, or pass a local directory as `model:`"
    )


def gguf_problems(gguf: GGUFModel, load_kw: dict[str, Any]) -> list[str]:
    """A GGUF model on this machine: the ``gguf`` package transformers reads it with, the file
    complete (local, or in the HF cache), else a hub that answers."""
    problems: list[str] = []
    if importlib.util.find_spec("gguf") is None:
        problems.append(
            f"{gguf.field}: transformers reads GGUF files with the gguf package, which is not "
            "installed: pip install gguf"
        )
    if gguf.on_hub and gguf.local_path is None:
        from llenergymeasure.hub import hub_model_problem

        problem = hub_model_problem(
            gguf.source,
            "model",
            revision=load_kw.get("revision"),
            cache_dir=load_kw.get("cache_dir"),
            filename=gguf.filename,
        )
    else:
        problem = gguf_model_problem(gguf)
    return [*problems, problem] if problem else problems


def check_model_source(
    name: str,
    field_name: str,
    load_kw: dict[str, Any] | None = None,
    passthrough: dict[str, Any] | None = None,
) -> list[str]:
    """Cheap check that ``name`` can be resolved (no download, no model load); a GGUF
    file (``name`` ending in ``.gguf``, or ``passthrough``'s ``gguf_file``) is read up to
    its tensor data."""
    load_kw = load_kw or {}
    gguf = gguf_model(
        name,
        passthrough,
        revision=load_kw.get("revision"),
        cache_dir=load_kw.get("cache_dir"),
        field=field_name,
    )
    if gguf is not None:
        return gguf_problems(gguf, load_kw)
    if name.startswith("builtin:"):
        try:
            from llenergymeasure.engines import builtin
        except ImportError:
            return [f"{field_name}: built-in models are not available in this install"]
        known = getattr(builtin, "BUILTIN_MODELS", None)
        if not builtin.is_builtin_model(name) or (known is not None and name not in known):
            valid = ", ".join(known) if known else "builtin:tiny"
            return [f"{field_name}: unknown built-in model {name!r}; valid: {valid}"]
        return []
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            return [f"{field_name}: local model directory {name!r} does not exist"]
        if not (path / "config.json").is_file():
            return [f"{field_name}: {name!r} has no config.json (not a HF model folder)"]
        return []
    # Hub id: fine if cached; else offline, or a hub that does not answer one bounded
    # probe, is a problem now (the hub client would retry for about a minute at load)
    from llenergymeasure.hub import hub_model_problem

    problem = hub_model_problem(
        name, field_name, revision=load_kw.get("revision"), cache_dir=load_kw.get("cache_dir")
    )
    return [problem] if problem else []


def resolve_source(name: str) -> str:
    """What ``from_pretrained`` gets for ``name``: a built-in model's folder, a local path
    expanded, a hub id unchanged."""
    if name.startswith("builtin:"):
        from llenergymeasure.engines.builtin import resolve_builtin_model

        return str(resolve_builtin_model(name))
    if looks_like_path(name):
        return str(Path(name).expanduser())
    return name
