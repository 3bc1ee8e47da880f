"""Fake ``vllm_gguf_plugin`` (the ``vllm-gguf-plugin`` package, 0.0.5) for llem's tests.

From vLLM 0.24 on, GGUF support lives out of tree: vLLM loads a ``.gguf`` model only with this
plugin installed, which registers itself through the ``vllm.general_plugins`` entry point
``gguf = "vllm_gguf_plugin:register"``. llem's pre-flight only asks whether it is importable.
"""

from __future__ import annotations

registered = False


def register() -> None:
    """What vLLM's plugin loader calls at start-up."""
    global registered
    registered = True
