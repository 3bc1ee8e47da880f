"""The built-in ``builtin:tiny`` model: built once, offline, deterministic, tiny."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.datasets import SyntheticParams, load_prompts
from llenergymeasure.engines.builtin import (
    BUILTIN_MODELS,
    MARKER_FILE,
    is_builtin_model,
    resolve_builtin_model,
)
from llenergymeasure.exceptions import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_builtin_model("builtin:tiny", cache_dir=tmp_path_factory.mktemp("llem-cache"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)


def test_importing_the_module_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, llenergymeasure.engines.builtin\n"
        "bad = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_names_are_recognised_by_prefix() -> None:
    assert is_builtin_model("builtin:tiny")
    assert is_builtin_model("builtin:other")
    assert not is_builtin_model("meta-llama/Llama-3.1-8B")
    assert BUILTIN_MODELS == ("builtin:tiny",)


def test_an_unknown_builtin_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_builtin_model("builtin:huge", cache_dir=tmp_path)
    assert "builtin:huge" in str(err.value) and "builtin:tiny" in str(err.value)
    assert not (tmp_path / "models").exists()


def test_the_folder_lives_under_models_tiny_v1_of_the_cache(tmp_path: Path) -> None:
    folder = resolve_builtin_model("builtin:tiny", cache_dir=tmp_path)
    assert folder == tmp_path / "models" / "tiny-v1"
    assert (folder / MARKER_FILE).is_file()
    assert (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == ["tiny-v1"]  # no temp dirs


def test_the_cache_root_can_be_set_with_llem_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path / "from-env"))
    assert resolve_builtin_model("builtin:tiny") == tmp_path / "from-env" / "models" / "tiny-v1"


def test_the_folder_is_built_once_and_reused(tiny_dir: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()}
    dir_mtime = tiny_dir.stat().st_mtime_ns
    again = resolve_builtin_model("builtin:tiny", cache_dir=tiny_dir.parent.parent)
    assert again == tiny_dir
    assert {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()} == before
    assert tiny_dir.stat().st_mtime_ns == dir_mtime


def test_an_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "tiny-v1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    folder = resolve_builtin_model("builtin:tiny", cache_dir=tmp_path)
    assert (folder / MARKER_FILE).is_file()
    transformers.AutoConfig.from_pretrained(folder)


def test_it_loads_offline_with_the_auto_classes(tiny_dir: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert type(m).__name__ == 'LlamaForCausalLM', type(m)\n"
        "assert t.decode(t.encode('ok', add_special_tokens=False)) == 'ok'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tiny_dir)], check=True, env=env)


def test_model_and_tokenizer_agree_on_special_tokens(model: Any, tokenizer: Any) -> None:
    assert tokenizer.padding_side == "left"
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert None not in ids and len(set(ids)) == 3
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == ids
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == ids
    assert model.config.vocab_size == len(tokenizer)
    assert type(model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize(
    "text",
    ["hello world", "  leading and trailing  ", "héllo wörld — 日本語 🙂\n\ttab", "\x00\x7f", ""],
)
def test_the_tokenizer_round_trips_any_utf8_text_byte_by_byte(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_the_tokenizer_prepends_bos_and_has_a_chat_template(tokenizer: Any) -> None:
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in rendered and rendered.endswith("assistant: ")


def test_batched_generate_with_left_padding(model: Any, tokenizer: Any) -> None:
    batch = tokenizer(["hi", "a much longer prompt"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0].item() == tokenizer.pad_token_id  # left padded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (2, batch.input_ids.shape[1] + 5)


def test_weights_are_deterministic_across_fresh_caches(tmp_path: Path, tiny_dir: Path) -> None:
    other = resolve_builtin_model("builtin:tiny", cache_dir=tmp_path)
    a = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_building_does_not_disturb_the_global_torch_rng(tmp_path: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    resolve_builtin_model("builtin:tiny", cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_it_is_a_few_mb_at_most_on_disk(tiny_dir: Path) -> None:
    size = sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024


def test_synthetic_prompts_have_exactly_input_len_tiny_tokens(tokenizer: Any) -> None:
    spec = SyntheticParams(n=20, input_len=32, output_len=8)
    prompts = load_prompts(spec, 20, tokenizer=tokenizer)
    assert [len(tokenizer.encode(p.text, add_special_tokens=False)) for p in prompts] == [32] * 20


def test_concurrent_builders_both_end_with_one_complete_folder(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from llenergymeasure.engines.builtin import resolve_builtin_model\n"
        "print(resolve_builtin_model('builtin:tiny', cache_dir=sys.argv[1]))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate()[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(tmp_path / "models" / "tiny-v1")] * 2
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-v1"]
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "tiny-v1")
