"""Build a Llama-3.1-8B-shaped model with random weights for GPU measurements (no download).

Energy and speed depend on the shapes, not the weight values, as long as generation length is
forced (``ignore_eos``). The model is saved with ``save_pretrained`` (plus llem's byte-level
tokenizer) so that runs exercise the real ``from_pretrained`` loading path.

    python benchmarks/make_llama8b_shaped.py --out .devout/llama8b
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build(out: Path) -> Path:
    """Create the folder unless it already holds a complete model."""
    if (out / "llem_complete").exists():
        print(f"{out} already built")
        return out
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from llenergymeasure.engines.builtin import BOS_ID, EOS_ID, PAD_ID, build_tiny_tokenizer

    t0 = time.perf_counter()
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tiny_tokenizer().save_pretrained(out)  # type: ignore[attr-defined]
    (out / "llem_complete").write_text("ok\n")
    params = sum(p.numel() for p in model.parameters())
    print(f"built {out}: {params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".devout/llama8b"))
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
