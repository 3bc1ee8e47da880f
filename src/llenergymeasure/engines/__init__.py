"""Inference engines (PyTorch, vLLM, TensorRT-LLM) and the built-in tiny model."""
