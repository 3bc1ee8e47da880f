"""``llem run`` habits of the field: ``--set`` for any field, the common workload flags, ``-q``,
``-V``, shell completion, and a synthetic dataset's ``n`` given once.

Most checks read the resolved config from ``--dry-run --json`` (nothing runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.cli.completion import complete_backend, complete_dataset, complete_precision
from llenergymeasure.config.catalogue import engine_names, engine_spec
from llenergymeasure.config.models import ExperimentConfig

cli = CliRunner()

EXPERIMENT = """\
model: builtin:tiny
backend: pytorch
precision: fp32
dataset: {n: 20, input_len: 64, output_len: 32}
warmup: {n_warmup: 1, thermal_floor_seconds: 0}
"""

STUDY = """\
name: s
model: builtin:tiny
backend: pytorch
dataset: {n: 4, input_len: 8, output_len: 4}
sweep:
  pytorch.batch_size: [1, 2]
experiments:
  - precision: bf16
    decoder: {temperature: 0.5, decoding_strategy: sampling}
"""


def llem(*args: str, env: dict[str, str] | None = None) -> Any:
    return cli.invoke(app, list(args), env=env)


def resolved(*args: str) -> list[dict[str, Any]]:
    """The experiments ``llem run ARGS --dry-run --json`` resolves to."""
    result = llem("run", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["experiments"])


def one(*args: str) -> dict[str, Any]:
    (experiment,) = resolved(*args)
    return experiment


def error_of(*args: str) -> str:
    result = llem("run", *args, "--dry-run")
    assert result.exit_code == 2, result.output
    return str(result.output)


@pytest.fixture
def experiment(write_yaml: Any) -> str:
    return str(write_yaml(EXPERIMENT, "experiment.yaml"))


# --- --set key.path=value ----------------------------------------------------------------------


def test_set_values_are_typed_by_the_schema(experiment: str):
    config = one(
        experiment,
        "--set", "warmup.n_warmup=4",
        "--set", "decoder.temperature=0.7",
        "--set", "decoder.decoding_strategy=sampling",
        "--set", "pytorch.torch_compile=true",
        "--set", "model=1234",
        "--set", "passthrough_kwargs={low_cpu_mem_usage: true}",
    )  # fmt: skip
    assert config["warmup"]["n_warmup"] == 4
    assert config["decoder"]["temperature"] == 0.7
    assert config["pytorch"]["torch_compile"] is True
    assert config["model"] == "1234"  # a text field keeps the text as written
    assert config["passthrough_kwargs"] == {"low_cpu_mem_usage": True}


def test_set_takes_yaml_flow_mappings_and_null(experiment: str, tmp_path: Path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n' * 3)
    config = one(experiment, "--set", f"dataset={jsonl}", "--set", "n=2", "--set", "pytorch=null")
    assert config["dataset"] == str(jsonl) and config["n"] == 2 and config["pytorch"] is None
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"q": ["a", "b"]})}).save_to_disk(
        str(folder)
    )
    # a mapping of the other kind replaces the YAML's synthetic dataset (never mixes with it)
    config = one(
        experiment, "--set", f"dataset={{hf: {folder}, split: test, column: q}}", "-n", "2"
    )
    assert config["dataset"] == {
        "hf": str(folder),
        "split": "test",
        "column": "q",
        "config": None,
        "revision": None,
    }


def test_set_works_without_a_config_file():
    config = one("--set", "model=builtin:tiny", "--set", "dataset.input_len=16", "-n", "3")
    assert config["model"] == "builtin:tiny" and config["dataset"]["input_len"] == 16
    assert config["n"] == config["dataset"]["n"] == 3


def test_an_unknown_set_key_gets_the_same_did_you_mean_as_yaml(experiment: str, write_yaml: Any):
    output = error_of(experiment, "--set", "pytorch.bach_size=4")
    assert "--set pytorch.bach_size=4: unknown key 'bach_size' in pytorch: did you mean " in output
    assert "'batch_size'?" in output
    in_yaml = error_of(str(write_yaml(EXPERIMENT + "pytorch: {bach_size: 4}\n", "typo.yaml")))
    assert "unknown key 'bach_size' in pytorch (line 6): did you mean 'batch_size'?" in in_yaml


def test_a_set_key_in_the_wrong_place_says_where_it_belongs(experiment: str):
    output = error_of(experiment, "--set", "n_warmup=2")
    assert "did you mean 'warmup'? ('n_warmup' belongs under warmup.n_warmup)" in output


def test_a_set_value_is_validated_like_yaml(experiment: str):
    assert "allowed [1, " in error_of(experiment, "--set", "warmup.max_prompts=0")
    output = error_of(experiment, "--set", "precision=fp61")
    assert "precision" in output and "did you mean 'fp16'?" in output
    assert "should be a valid number" in error_of(experiment, "--set", "decoder.top_p=high")


def test_set_errors_name_the_option(experiment: str):
    assert "expected key.path=value" in error_of(experiment, "--set", "n")
    assert "--set n is given twice" in error_of(experiment, "--set", "n=2", "--set", "n=3")
    assert "'model' has no sub-fields" in error_of(experiment, "--set", "model.name=x")
    assert "is not valid YAML" in error_of(experiment, "--set", "n=[1")
    assert "--set n and -n both set n" in error_of(experiment, "--set", "n=2", "-n", "3")


def test_set_on_a_study_applies_to_its_base(write_yaml: Any):
    study = str(write_yaml(STUDY, "study.yaml"))
    experiments = resolved(study, "--set", "decoder.temperature=0.9", "--set", "precision=fp16")
    assert [(e["pytorch"] or {}).get("batch_size") for e in experiments] == [1, 2, None]
    assert [e["precision"] for e in experiments] == ["fp16", "fp16", "bf16"]
    # the experiments: entry sets its own temperature: it wins over the base
    assert [e["decoder"]["temperature"] for e in experiments] == [0.9, 0.9, 0.5]


def test_set_of_a_key_the_study_sweeps_is_refused(write_yaml: Any):
    study = str(write_yaml(STUDY, "study.yaml"))
    output = error_of(study, "--set", "pytorch.batch_size=4")
    assert "sweeps pytorch.batch_size" in output


def test_resume_checks_the_design_with_the_set_values_it_was_started_with(
    write_yaml: Any, tmp_path: Path
):
    from llenergymeasure.study.design import check_design, expand_study_file
    from llenergymeasure.study.runner import StudyRunner

    path = write_yaml(STUDY, "study.yaml")
    sets = {"decoder": {"temperature": 0.9}, "passthrough_kwargs": {"hf_token": "hf_secret"}}
    study = expand_study_file(path, base_overrides=sets)
    runner = StudyRunner.create(study, tmp_path / "out", base_overrides=sets)
    written = (runner.study_dir / "study_manifest.json").read_text()
    assert "hf_secret" not in written  # credentials are redacted in the manifest
    manifest = runner.manifest.model_validate_json(written)
    assert check_design(manifest, runner.study_dir) is None  # same design from the stored --set
    with pytest.raises(Exception, match="design mismatch"):
        check_design(manifest, runner.study_dir, expand_study_file(path))


def test_resume_without_a_study_file_takes_no_set(tmp_path: Path):
    result = llem("run", "--resume", str(tmp_path), "--set", "n=2")
    assert result.exit_code == 2 and "--set" in result.output


# --- the workload flags --------------------------------------------------------------------------


def test_max_new_tokens_and_seed_flags(tmp_path: Path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n' * 3)
    config = one("-m", "builtin:tiny", "-d", str(jsonl), "-n", "2", "--max-new-tokens", "9",
                 "--seed", "7")  # fmt: skip
    assert config["max_new_tokens"] == 9 and config["random_seed"] == 7


def test_input_and_output_len_make_a_synthetic_dataset():
    config = one("-m", "builtin:tiny", "-n", "5", "--input-len", "32", "--output-len", "4")
    assert config["dataset"] == {"n": 5, "input_len": 32, "output_len": 4, "seed": 42}
    assert config["n"] == 5


def test_max_new_tokens_over_a_yaml_output_len_sets_both(experiment: str, write_yaml: Any):
    config = one(experiment, "--max-new-tokens", "16")
    assert config["max_new_tokens"] == 16 and config["dataset"]["output_len"] == 16
    yaml_max = str(write_yaml(EXPERIMENT.replace("output_len: 32", "") + "max_new_tokens: 32\n"))
    config = one(yaml_max, "--output-len", "8")
    assert config["max_new_tokens"] == 8 and config["dataset"]["output_len"] == 8


def test_input_len_does_not_silently_replace_a_dataset_file(write_yaml: Any, tmp_path: Path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n')
    path = str(write_yaml(f"model: builtin:tiny\nbackend: pytorch\nn: 1\ndataset: {jsonl}\n"))
    assert "describe a synthetic dataset" in error_of(path, "--input-len", "8")
    assert "describe a synthetic dataset" in error_of(
        "-m", "builtin:tiny", "-d", "aienergyscore", "--output-len", "8"
    )
    config = one(path, "--input-len", "8", "-d", "synthetic")
    assert config["dataset"]["input_len"] == 8


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-new-tokens", "0", "--max-new-tokens must be at least 1"),
        ("--input-len", "0", "--input-len must be at least 1"),
        ("--output-len", "0", "--output-len must be at least 1"),
        ("--seed", "-1", "--seed must be at least 0"),
    ],
)
def test_workload_flags_have_the_fields_bounds(flag: str, value: str, expected: str):
    assert expected in error_of("-m", "builtin:tiny", flag, value)


def test_q_is_quiet_and_big_v_is_verbose(tmp_path: Path):
    args = ["run", "-m", "builtin:tiny", "-n", "1", "--input-len", "4", "--max-new-tokens", "1"]
    args += ["--set", "warmup.n_warmup=0", "--set", "baseline.enabled=false"]
    loud = cli.invoke(app, [*args, "-o", str(tmp_path / "a")])
    quiet = cli.invoke(app, [*args, "-q", "-o", str(tmp_path / "b")])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "loading builtin:tiny" in loud.stderr and "loading" not in quiet.stderr
    assert "result.json" in quiet.stdout  # the summary stays
    failing = cli.invoke(app, ["run", str(tmp_path / "missing.yaml"), "-V"])
    assert failing.exit_code == 2 and "Traceback" in failing.stderr
    assert "Traceback" not in cli.invoke(app, ["run", str(tmp_path / "missing.yaml")]).stderr


# --- n given once --------------------------------------------------------------------------------


def test_a_synthetic_datasets_n_alone_sets_the_prompts_measured(write_yaml: Any):
    path = write_yaml("model: builtin:tiny\nbackend: pytorch\ndataset: {n: 64, input_len: 8}\n")
    config = ExperimentConfig.from_yaml(path)
    assert config.n == 64 and config.dataset.n == 64  # type: ignore[union-attr]


def test_a_top_level_n_alone_sets_the_prompts_generated(write_yaml: Any):
    path = write_yaml("model: builtin:tiny\nbackend: pytorch\nn: 12\ndataset: {input_len: 8}\n")
    config = ExperimentConfig.from_yaml(path)
    assert config.n == 12 and config.dataset.n == 12  # type: ignore[union-attr]


def test_n_on_the_command_line_raises_a_smaller_dataset_n(experiment: str):
    config = one(experiment, "-n", "50")
    assert config["n"] == 50 and config["dataset"]["n"] == 50
    config = one(experiment, "-n", "5")  # fewer than generated: the first 5 of 20
    assert config["n"] == 5 and config["dataset"]["n"] == 20
    config = one(experiment, "--set", "dataset.n=8")
    assert config["n"] == 8 and config["dataset"]["n"] == 8


def test_both_n_given_and_disagreeing_in_yaml_is_still_an_error(write_yaml: Any):
    path = write_yaml(EXPERIMENT + "n: 30\n")
    output = error_of(str(path))
    assert "n=30 prompts requested but the synthetic dataset generates only dataset.n=20" in output


# --- shell completion ----------------------------------------------------------------------------


class Ctx:
    def __init__(self, **params: Any) -> None:
        self.params = params


def test_backend_completion_comes_from_the_engine_catalogue():
    assert complete_backend("") == list(engine_names())
    assert complete_backend("v") == ["vllm"]


def test_precision_completion_narrows_to_the_engine_given():
    assert "fp32" in complete_precision(Ctx(), "")
    assert complete_precision(Ctx(backend="tensorrt"), "") == list(
        engine_spec("tensorrt").precisions
    )
    assert complete_precision(Ctx(backend="pytorch"), "bf") == ["bf16"]


def test_dataset_completion_offers_builtin_names_and_jsonl_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "prompts.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert complete_dataset("") == ["aienergyscore", "synthetic", "data/", "prompts.jsonl"]
    assert complete_dataset("s") == ["synthetic"]
    assert complete_dataset(f"{tmp_path}/pro") == [f"{tmp_path}/prompts.jsonl"]


def test_the_shell_gets_the_values_through_typers_completion():
    def complete(words: str) -> list[str]:
        env = {"_LLEM_COMPLETE": "complete_bash", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        result = cli.invoke(app, [], env=env, prog_name="llem")
        assert result.exit_code == 0, result.output
        return result.output.split()

    assert complete("llem run -b v") == ["vllm"]
    assert complete("llem run -b tensorrt --precision ") == list(engine_spec("tensorrt").precisions)
    assert complete("llem run -d a") == ["aienergyscore"]
