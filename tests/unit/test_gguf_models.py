"""A GGUF file as ``model:``: its header, the config rules, the VRAM estimate, the PyTorch engine
end to end and ``llem run`` (pre-flight and ``--dry-run``).

The model is ``builtin:tiny`` written as a GGUF file by the test itself (``gguf_models.py``,
with the ``gguf`` package's ``GGUFWriter``): 2-D weights in Q8_0, norms in F32, the byte-level
vocabulary and the chat template in the metadata. Damaged files are written byte by byte.
The vLLM side is in ``test_engine_vllm.py`` (against the fake ``vllm``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from gguf_models import TINY_PARAMETERS, gguf_bytes, string, u32, write_tiny_gguf
from pydantic import ValidationError
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.engines.pytorch.passthrough import split_passthrough_kwargs
from llenergymeasure.gguf_files import GGUFError, gguf_model, read_gguf_header
from llenergymeasure.harness.vram import (
    estimate_config_vram,
    model_max_positions,
    synthetic_length_problems,
)

cli = CliRunner()
GIB = 1024**3


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="writing the test's GGUF file needs the gguf package")
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-Q8_0.gguf")


def config(model: str, **kw: object) -> ExperimentConfig:
    data: dict[str, object] = {
        "model": model,
        "backend": "pytorch",
        "precision": "fp32",
        "dataset": {"n": 2, "input_len": 6, "output_len": 4},
        "warmup": {"n_warmup": 0, "thermal_floor_seconds": 0},
        "baseline": {"enabled": False},
    }
    data.update(kw)
    return ExperimentConfig.model_validate(data)


# --- the header --------------------------------------------------------------------------------


def test_the_header_counts_every_parameter_and_says_how_they_are_stored(tiny_gguf: Path):
    header = read_gguf_header(tiny_gguf)
    assert header.architecture == "llama" and header.version == 3
    assert header.parameter_count == TINY_PARAMETERS
    assert header.tensor_types() == {"Q8_0": 16, "F32": 5}  # 2-D weights in blocks, norms F32
    assert (header.layers, header.kv_heads, header.head_dim) == (2, 2, 16)
    assert header.context_length == 2048
    assert header.chat_template is not None and "add_generation_prompt" in header.chat_template
    # the tensor data is what follows the aligned header, to the end of the file
    assert header.data_offset % 32 == 0
    assert header.tensor_data_bytes == tiny_gguf.stat().st_size - header.data_offset


def test_the_header_reads_without_the_gguf_package(tiny_gguf: Path, monkeypatch):
    import sys

    from llenergymeasure import gguf_files

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    monkeypatch.setitem(sys.modules, "gguf.constants", None)
    gguf_files._ggml_block_sizes.cache_clear()
    gguf_files._read_header.cache_clear()
    try:
        header = read_gguf_header(tiny_gguf)
        assert header.parameter_count == TINY_PARAMETERS
        assert header.tensor_types()["F32"] == 5
    finally:
        gguf_files._ggml_block_sizes.cache_clear()
        gguf_files._read_header.cache_clear()


def _problem(path: Path) -> str:
    with pytest.raises(GGUFError) as err:
        read_gguf_header(path)
    return str(err.value)


def test_a_file_cut_short_inside_its_tensor_data_is_truncated(tiny_gguf: Path, tmp_path: Path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-100])
    message = _problem(cut)
    assert message.startswith("is truncated: tensor ")
    assert f"({cut.stat().st_size} bytes in all)" in message


def test_a_file_cut_inside_its_header_is_truncated(tiny_gguf: Path, tmp_path: Path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:1000])
    assert _problem(cut).startswith("is truncated or damaged: ")
    assert "runs past the end of the file (1000 bytes)" in _problem(cut)


def test_a_plain_tensor_past_the_end_is_caught_without_block_sizes(tmp_path: Path):
    # one F32 tensor of 64 values (256 bytes) but only 100 bytes of data
    path = tmp_path / "short.gguf"
    path.write_bytes(gguf_bytes({}, [("w", (64,), 0, 0)], data=b"\0" * 100))
    assert "is truncated: tensor 'w' needs bytes 0-256 of the tensor data" in _problem(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is truncated: 0 bytes, too short for the GGUF magic"),
        (b"PK\x03\x04" + b"\0" * 60, "is not a GGUF file: it starts with b'PK\\x03\\x04'"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 40, "is GGUF version 1; llem reads versions 2"),
        (b"GGUF" + struct.pack(">I", 3) + b"\0" * 40, "is a big-endian GGUF file"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), "is damaged: its header claims"),
    ],
)
def test_what_is_wrong_with_a_file_that_is_not_a_gguf_model(
    tmp_path: Path, content: bytes, expected: str
):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert _problem(path).startswith(expected)


def test_a_missing_file_and_a_folder_are_named_as_such(tmp_path: Path):
    assert _problem(tmp_path / "nope.gguf") == "does not exist"
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    assert _problem(folder) == "is not a file"


def test_per_layer_metadata_arrays_give_their_largest_value(tmp_path: Path):
    kv_heads = (9, struct.pack("<IQ", 4, 3) + struct.pack("<3I", 2, 8, 4))  # array of u32
    path = tmp_path / "m.gguf"
    path.write_bytes(
        gguf_bytes(
            {
                "general.architecture": string("qwen3"),
                "qwen3.attention.head_count_kv": kv_heads,
                "qwen3.block_count": u32(3),
            }
        )
    )
    header = read_gguf_header(path)
    assert header.kv_heads == 8 and header.layers == 3 and header.parameter_count == 0


# --- how a config names a GGUF file ----------------------------------------------------------


def test_a_gguf_file_or_a_folder_with_gguf_file_name_the_same_file(tiny_gguf: Path):
    by_path = gguf_model(str(tiny_gguf))
    by_folder = gguf_model(str(tiny_gguf.parent), {"gguf_file": tiny_gguf.name})
    assert by_path is not None and by_folder is not None
    assert (by_path.source, by_path.filename) == (by_folder.source, by_folder.filename)
    assert by_path.local_path == by_folder.local_path == tiny_gguf
    assert gguf_model("org/model") is None and gguf_model("builtin:tiny") is None
    on_hub = gguf_model("org/repo-GGUF", {"gguf_file": "m-Q4_K_M.gguf"})
    assert on_hub is not None and on_hub.on_hub and on_hub.local_path is None  # not cached


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("a.gguf", {"gguf_file": "b.gguf"}, "is a GGUF file and passthrough_kwargs.gguf_file"),
        ("org/repo", {"gguf_file": "weights.bin"}, "must be the relative path of a .gguf file"),
        ("org/repo", {"gguf_file": "/abs/m.gguf"}, "must be the relative path of a .gguf file"),
        ("builtin:tiny", {"gguf_file": "m.gguf"}, "cannot be used with the built-in"),
    ],
)
def test_a_gguf_file_must_be_named_once_and_as_a_gguf_file(model, extra, message):
    with pytest.raises(ValidationError, match=message):
        config(model, passthrough_kwargs=extra)


def test_tensorrt_cannot_build_from_gguf_and_vllm_takes_the_quantization_from_the_file():
    with pytest.raises(ValidationError, match="cannot be built into a TensorRT-LLM engine"):
        ExperimentConfig.model_validate(
            {"model": "m.gguf", "backend": "tensorrt", "precision": "fp16"}
        )
    for extra in ({"precision": "int4", "vllm": {"quantization": "awq"}}, {"precision": "int8"}):
        with pytest.raises(ValidationError, match="the file carries its own quantization"):
            ExperimentConfig.model_validate({"model": "m.gguf", "backend": "vllm", **extra})
    assert ExperimentConfig.model_validate({"model": "m.gguf", "backend": "vllm"}).model


def test_gguf_file_is_a_pytorch_load_option_for_model_and_tokenizer():
    load, gen, engine, problems = split_passthrough_kwargs({"gguf_file": "m.gguf"})
    assert load == {"gguf_file": "m.gguf"} and not (gen or engine or problems)


# --- the VRAM estimate and the sequence limit -------------------------------------------------


def test_pytorch_estimate_counts_the_parameters_dequantised_to_the_run_dtype(tiny_gguf: Path):
    est = estimate_config_vram(config(str(tiny_gguf), precision="bf16"))
    assert est is not None and est.parameters == TINY_PARAMETERS
    assert est.weights_gib == round(TINY_PARAMETERS * 2 / GIB, 3)
    # KV: 2 (k, v) x 2 layers x 2 KV heads x 16 x 2 bytes x (batch 1 x (6 + 4) tokens)
    assert est.kv_cache_gib == round(2 * 2 * 2 * 16 * 2 * 10 / GIB, 3)
    assert est.source == str(tiny_gguf.resolve())
    assert est.basis is not None and "dequantised to bf16" in est.basis


def test_vllm_estimate_counts_the_tensor_data_as_stored(tiny_gguf: Path):
    cfg = ExperimentConfig.model_validate(
        {"model": str(tiny_gguf), "backend": "vllm", "precision": "fp16"}
    )
    est = estimate_config_vram(cfg)
    assert est is not None and est.basis is not None and "as stored" in est.basis
    stored = read_gguf_header(tiny_gguf).tensor_data_bytes
    assert est.weights_gib == round(stored / GIB, 3)
    assert stored < TINY_PARAMETERS * 2  # Q8_0 blocks: ~1.06 bytes a weight


def test_the_folder_form_is_estimated_like_the_path(tiny_gguf: Path):
    by_folder = config(str(tiny_gguf.parent), passthrough_kwargs={"gguf_file": tiny_gguf.name})
    assert estimate_config_vram(by_folder) == estimate_config_vram(config(str(tiny_gguf)))


def test_synthetic_prompts_are_checked_against_the_context_length_in_the_header(tiny_gguf):
    assert model_max_positions(str(tiny_gguf)) == 2048
    too_long = config(str(tiny_gguf), dataset={"n": 1, "input_len": 2040, "output_len": 16}, n=1)
    (problem,) = synthetic_length_problems(too_long)
    assert "exceed the maximum sequence length 2048" in problem


# --- the PyTorch engine -----------------------------------------------------------------------


def test_pytorch_loads_model_and_tokenizer_from_the_gguf_file_and_says_what_ran(tiny_gguf):
    engine = PyTorchBackend()
    cfg = config(str(tiny_gguf), decoder={"ignore_eos": True})
    assert engine.preflight(cfg) == []
    info = engine.load(cfg)
    try:
        assert info.parameter_count == TINY_PARAMETERS  # the loaded model agrees with the header
        (note,) = [n for n in info.notes if n.startswith("GGUF file")]
        assert "16 Q8_0, 5 F32" in note and "dequantised to float32 by transformers" in note
        assert engine.tokenizer.chat_template  # the tokenizer came from the file too
        records = engine.generate([Prompt("hello world", index=0)], cfg)
        assert [r.output_tokens for r in records] == [4]
        assert records[0].input_tokens == len("hello world") + 1  # bytes + BOS
        effective = engine.effective_parameters(cfg)
        assert effective["model_source"] == str(tiny_gguf)
        assert effective["gguf"]["parameter_count"] == TINY_PARAMETERS
        assert effective["gguf"]["tensor_types"] == {"Q8_0": 16, "F32": 5}
        assert effective["gguf"]["weights"] == "dequantised to float32 by transformers"
    finally:
        engine.unload()


def test_the_gguf_model_generates_what_builtin_tiny_generates(tiny_gguf, tiny_model_dir):
    # The file holds builtin:tiny's weights (Q8_0-rounded): greedy decoding agrees.
    prompts = [Prompt("the quick brown fox", index=0), Prompt("energy", index=1)]
    outputs = []
    for model in (str(tiny_gguf), str(tiny_model_dir)):
        engine = PyTorchBackend()
        cfg = config(model, decoder={"ignore_eos": True}, max_new_tokens=6)
        engine.load(cfg)
        engine.generate(prompts, cfg)
        outputs.append(engine.last_output_token_ids())
        engine.unload()
    assert outputs[0] == outputs[1]


def test_pytorch_preflight_names_a_missing_a_foreign_and_a_truncated_file(
    tiny_gguf: Path, tmp_path: Path
):
    engine = PyTorchBackend()
    missing = tmp_path / "missing.gguf"
    assert engine.preflight(config(str(missing))) == [
        f"model: GGUF file {str(missing)!r} does not exist"
    ]
    foreign = tmp_path / "weights.gguf"
    foreign.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    (problem,) = engine.preflight(config(str(foreign)))
    assert problem.startswith(f"model: GGUF file {str(foreign)!r} is not a GGUF file")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-100])
    (problem,) = engine.preflight(config(str(cut)))
    assert problem.startswith(f"model: GGUF file {str(cut)!r} is truncated")
    folder_form = config(str(tmp_path), passthrough_kwargs={"gguf_file": "missing.gguf"})
    assert engine.preflight(folder_form) == [
        f"passthrough_kwargs.gguf_file: GGUF file {str(missing)!r} does not exist"
    ]


def test_pytorch_preflight_asks_for_the_gguf_package(tiny_gguf: Path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    (problem,) = PyTorchBackend().preflight(config(str(tiny_gguf)))
    assert "transformers reads GGUF files with the gguf package" in problem
    assert problem.endswith("pip install gguf")


def test_an_uncached_hub_gguf_is_probed_like_any_hub_model(monkeypatch):
    from llenergymeasure import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "probe_hub", lambda **_: "https://hf.test cannot be reached (x)")
    cfg = config("llem-test-org/tiny-GGUF", passthrough_kwargs={"gguf_file": "tiny-Q8_0.gguf"})
    problems = PyTorchBackend().preflight(cfg)
    assert problems == [
        "model: 'llem-test-org/tiny-GGUF/tiny-Q8_0.gguf' is not in the HF cache and the HF hub "
        f"is unreachable: https://hf.test cannot be reached (x). Hint: {hub.OFFLINE_HINT}"
    ]


# --- llem run ---------------------------------------------------------------------------------


def test_dry_run_of_a_gguf_model_shows_the_estimate_from_its_header(tiny_gguf: Path):
    args = ["run", "-m", str(tiny_gguf), "-d", "synthetic", "-n", "2", "--dry-run"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"model            {tiny_gguf}" in result.stdout
    assert "VRAM estimate    0.00 GiB" in result.stdout
    assert f"VRAM basis       {TINY_PARAMETERS:,} GGUF parameters dequantised to bf16" in (
        result.stdout
    )
    assert "HF cache" not in result.stdout  # a local file: nothing to download


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_broken_gguf_file_stops_llem_run_with_exit_2_before_any_load(
    tmp_path: Path, monkeypatch, dry_run: bool
):
    import transformers

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\0" * 8)  # cut inside the counts
    args = ["run", "-m", str(bad), "-d", "synthetic", "-n", "1", "-o", str(tmp_path / "out")]
    result = cli.invoke(app, args + (["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    assert "pre-flight checks failed" in result.output
    assert f"model: GGUF file {str(bad)!r} is truncated or damaged" in result.output
    assert "Traceback" not in result.output


def test_llem_run_measures_a_gguf_file_directly(tiny_gguf: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["run", "-m", str(tiny_gguf), "-d", "synthetic", "-n", "2", "--input-len", "8"]
    args += ["--max-new-tokens", "4", "--precision", "fp32", "-o", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    data = json.loads((run_dir / "result.json").read_text())
    assert data["config"]["model"] == str(tiny_gguf)
    assert data["effective_parameters"]["gguf"]["tensor_types"] == {"Q8_0": 16, "F32": 5}
    assert data["flops"]["parameter_count"] == TINY_PARAMETERS
    assert data["input_tokens"] == 2 * 9  # 8 synthetic tokens + BOS, tokenised by the file


def test_online_synthetic_prompts_are_sized_by_the_tokenizer_in_the_gguf_file(tiny_gguf: Path):
    from llenergymeasure.harness.inputs import prepare_run_dataset
    from llenergymeasure.harness.online import _prompts

    cfg = ExperimentConfig.model_validate(
        {
            "model": str(tiny_gguf),
            "backend": "vllm",
            "mode": "online",
            "online": {"endpoint": "http://127.0.0.1:9"},
            "dataset": {"n": 2, "input_len": 12, "output_len": 4},
        }
    )
    prompts = _prompts(cfg, prepare_run_dataset(cfg), None)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert [len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in prompts] == [
        12,
        12,
    ]


def test_a_gguf_draft_model_is_checked_under_its_own_field(tiny_gguf: Path, tmp_path: Path):
    missing = tmp_path / "draft.gguf"
    spec = {"speculative_decoding": True, "draft_model": str(missing)}
    cfg = config(str(tiny_gguf), decoder=spec, pytorch={"batch_size": 1})
    assert PyTorchBackend().preflight(cfg) == [
        f"decoder.draft_model: GGUF file {str(missing)!r} does not exist"
    ]
