"""GGUF files for the tests: ``builtin:tiny`` written as a GGUF file with the ``gguf`` package's
``GGUFWriter``, and hand-made files that are damaged in known ways.

``write_tiny_gguf`` converts the tiny random Llama (2 layers, hidden 64, 4 heads, 2 KV heads, a
259-token byte-level vocabulary) the way llama.cpp lays a Llama out: its tensor names, the
rotary halves of the q/k rows interleaved per head (transformers' GGUF loader undoes exactly
that), 2-D weights quantised to Q8_0 (norms stay F32), and the byte-level tokenizer as a
``gpt2`` GGUF vocabulary with the chat template. transformers loads it as a
``LlamaForCausalLM`` with the same logits up to Q8_0 rounding (``test_gguf_models.py`` checks).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

#: builtin:tiny's parameters: embedding and untied LM head 2 x 259 x 64; per layer q and o
#: 64 x 64 each, k and v 64 x 32 each (2 KV heads of 16), gate/up/down 3 x 64 x 128, two norms
#: of 64; the final norm 64.
TINY_PARAMETERS = 2 * 259 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.<i>.<rest>
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def _interleave_rotary_halves(weight: Any, n_head: int) -> Any:
    """q/k rows of each head from HF's [first half, second half] rotary layout to the
    interleaved pairs GGUF stores (the inverse of what transformers' loader applies)."""
    rows = weight.shape[0]
    per_head = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model_dir: Path, path: Path, *, quantize: bool = True) -> Path:
    """``builtin:tiny`` (its folder ``model_dir``) as the GGUF file ``path``."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from llenergymeasure.engines import builtin

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llem builtin tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    specials = [builtin.PAD_TOKEN, builtin.BOS_TOKEN, builtin.EOS_TOKEN]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(specials + builtin._byte_symbols())
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control] * len(specials) + [normal] * 256)
    writer.add_token_scores([0.0] * (len(specials) + 256))  # no merges: derived, none
    writer.add_bos_token_id(builtin.BOS_ID)
    writer.add_eos_token_id(builtin.EOS_ID)
    writer.add_pad_token_id(builtin.PAD_ID)
    writer.add_add_bos_token(True)
    writer.add_chat_template(builtin.TINY_CHAT_TEMPLATE)

    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, tensor in model.state_dict().items():
        data = tensor.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = _interleave_rotary_halves(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _interleave_rotary_halves(data, cfg.num_key_value_heads)
        if quantize and data.ndim == 2:
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(_gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_bytes(
    metadata: dict[str, tuple[int, bytes]] | None = None,
    tensors: list[tuple[str, tuple[int, ...], int, int]] | None = None,
    *,
    version: int = 3,
    data: bytes = b"",
) -> bytes:
    """A GGUF file written byte by byte (no ``gguf`` package): ``metadata`` maps a key to
    (value type, encoded value); ``tensors`` are (name, dims, ggml type, offset); ``data`` the
    tensor data after the 32-byte aligned header."""
    metadata = metadata or {}
    tensors = tensors or []

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, (kind, value) in metadata.items():
        out += s(key) + struct.pack("<I", kind) + value
    for name, dims, ggml_type, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


def u32(value: int) -> tuple[int, bytes]:
    return 4, struct.pack("<I", value)


def string(value: str) -> tuple[int, bytes]:
    raw = value.encode()
    return 8, struct.pack("<Q", len(raw)) + raw
