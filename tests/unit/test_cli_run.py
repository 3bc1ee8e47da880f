"""``llem run``: dry-run previews, CLI flags over YAML, and errors as a new user meets them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPERIMENT = str(EXAMPLES / "experiment.yaml")
STUDY = str(EXAMPLES / "study.yaml")

runner = CliRunner()


def llem(*args: str):
    return runner.invoke(app, list(args))


def field(output: str, name: str) -> str:
    """Value of ``name`` in the single-experiment preview."""
    match = re.search(rf"^\s+{re.escape(name)}\s+(.+?)\s*$", output, re.MULTILINE)
    assert match, f"{name} not in preview:\n{output}"
    return match.group(1)


def table_rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if re.match(r"^\d+\s{2}", line)]


# --- single experiment ------------------------------------------------------------------------


def test_dry_run_of_the_example_experiment_shows_the_resolved_config():
    result = llem("run", EXPERIMENT, "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "configuration is valid; nothing was run" in out
    assert field(out, "model") == "builtin:tiny"
    assert field(out, "backend") == "pytorch"
    assert field(out, "precision") == "fp32"
    assert field(out, "dataset") == "synthetic(64->32)  (n=20)"
    assert field(out, "max_new_tokens") == "32"
    assert field(out, "batch") == "4"
    expected = measurement_config_hash(ExperimentConfig.from_yaml(EXPERIMENT))
    assert field(out, "config hash") == expected
    assert field(out, "VRAM estimate") == "n/a"  # builtin:tiny not built in the isolated cache
    assert result.stderr == ""


def test_n_flag_overrides_the_yaml():
    result = llem("run", EXPERIMENT, "--dry-run", "-n", "7")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "dataset").endswith("(n=7)")
    config = ExperimentConfig.from_yaml(EXPERIMENT).model_copy(update={"n": 7})
    assert field(result.stdout, "config hash") == measurement_config_hash(config)


def test_precision_flag_overrides_the_yaml():
    result = llem("run", EXPERIMENT, "--dry-run", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "precision") == "fp16"


def test_batch_size_flag_overrides_pytorch_batch_size():
    result = llem("run", EXPERIMENT, "--dry-run", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "batch") == "2"


def test_backend_flag_replaces_the_yaml_engine_section():
    result = llem("run", EXPERIMENT, "--dry-run", "--backend", "vllm", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "backend") == "vllm"
    # pytorch.batch_size no longer applies: vLLM runs max_num_seqs at once (None -> 256)
    assert field(result.stdout, "batch") == "256"


def test_batch_size_flag_sets_the_concurrency_field_of_each_engine(write_yaml):
    path = write_yaml("model: m\nbackend: vllm\nprecision: fp16\n")
    result = llem("run", str(path), "--dry-run", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "batch") == "4"  # vllm.max_num_seqs
    result = llem(
        "run", EXPERIMENT, "--dry-run", "--backend", "tensorrt", "--precision", "fp16",
        "--batch-size", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "batch") == "8"  # tensorrt.max_batch_size, the YAML's section gone


def test_batch_size_flag_on_a_study_sets_each_points_own_engine_field(write_yaml):
    import json

    path = write_yaml("model: m\nbackend: [pytorch, vllm]\nprecision: fp16\n")
    result = llem("run", str(path), "--dry-run", "--json", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    points = {e["backend"]: e for e in json.loads(result.stdout)["experiments"]}
    assert points["pytorch"]["pytorch"]["batch_size"] == 4 and points["pytorch"]["vllm"] is None
    assert points["vllm"]["vllm"]["max_num_seqs"] == 4 and points["vllm"]["pytorch"] is None


def test_batch_size_flag_and_a_set_of_the_same_field_conflict():
    result = llem(
        "run", "--model", "m", "--backend", "vllm", "--batch-size", "4",
        "--set", "vllm.max_num_seqs=8", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--set vllm.max_num_seqs and --batch-size both set vllm.max_num_seqs" in result.stderr


def test_model_flag_alone_builds_an_experiment():
    result = llem(
        "run", "--model", "builtin:tiny", "--dataset", "synthetic", "-n", "5", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "model") == "builtin:tiny"
    assert field(result.stdout, "dataset") == "synthetic(512->128)  (n=5)"


def test_run_without_config_or_model_exits_2_with_a_hint():
    result = llem("run", "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: nothing to run")
    assert "hint: llem run --model" in result.stderr


@pytest.mark.parametrize("flag", [["--cycles", "2"], ["--order", "shuffled"]])
def test_study_only_flags_on_a_single_experiment_are_errors(flag):
    result = llem("run", EXPERIMENT, "--dry-run", *flag)
    assert result.exit_code == 2
    assert "applies to studies" in result.stderr


def test_error_about_a_flag_value_does_not_point_at_a_yaml_line():
    result = llem("run", EXPERIMENT, "--dry-run", "--backend", "pytorhc")
    assert result.exit_code == 2
    assert "did you mean 'pytorch'" in result.stderr
    # no "line N" (the checkout's own path may contain the word, e.g. a folder "wt-online2")
    assert re.search(r"\bline \d|\.yaml:\d", result.stderr) is None


def test_resume_together_with_a_config_file_is_an_error(tmp_path):
    result = llem("run", EXPERIMENT, "--resume", str(tmp_path))
    assert result.exit_code == 2
    assert "--resume takes the study directory" in result.stderr


# --- studies ----------------------------------------------------------------------------------


def test_dry_run_of_the_example_study_lists_every_experiment_and_the_counts():
    result = llem("run", STUDY, "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Dry run of study 'tiny-batch-precision'" in out
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split() == [
        "#",
        "backend",
        "model",
        "precision",
        "pytorch.batch_size",
        "VRAM",
        "est.",
    ]
    rows = table_rows(out)
    assert [(r[3], r[4]) for r in rows] == [
        ("fp32", "1"),
        ("fp32", "4"),
        ("fp32", "8"),
        ("bf16", "1"),
        ("bf16", "4"),
        ("bf16", "8"),
        ("fp16", "16"),
    ]
    assert "7 experiments x 3 cycles (interleaved) = 21 runs; 0 skipped" in out
    assert "gaps: between experiments 10 s, between cycles 30 s" in out


def test_cycles_order_and_no_gaps_flags_are_reflected_in_the_preview():
    result = llem("run", STUDY, "--dry-run", "--cycles", "5", "--order", "shuffled", "--no-gaps")
    assert result.exit_code == 0, result.output
    assert "7 experiments x 5 cycles (shuffled) = 35 runs" in result.stdout
    assert "gaps: between experiments 0 s, between cycles 0 s" in result.stdout


def test_cli_defaults_to_3_cycles_when_the_yaml_does_not_set_n_cycles(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\n")
    result = llem("run", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 experiments x 3 cycles (sequential) = 6 runs; 0 skipped" in result.stdout
    assert "from user config" in result.stdout


def test_cli_keeps_n_cycles_set_in_the_yaml(write_yaml):
    path = write_yaml(
        "model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\nexecution:\n  n_cycles: 1\n"
    )
    result = llem("run", str(path), "--dry-run")
    assert "2 experiments x 1 cycles (sequential) = 2 runs" in result.stdout


def test_study_preview_shows_skipped_points_and_their_reasons(write_yaml):
    path = write_yaml("model: m\nbackend: [pytorch, vllm]\nsweep:\n  precision: [fp32, fp16]\n")
    result = llem("run", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert [(r[1], r[3]) for r in table_rows(out)] == [
        ("pytorch", "fp32"),
        ("pytorch", "fp16"),
        ("vllm", "fp16"),
    ]
    assert "Skipped (1):" in out
    assert "sweep [backend=vllm, precision=fp32]: vllm does not support precision='fp32'" in out
    assert "3 experiments x 3 cycles (sequential) = 9 runs; 1 skipped" in out


def test_flag_overrides_apply_to_every_study_point(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\nsweep:\n  precision: [fp32, bf16]\n")
    result = llem("run", str(path), "--dry-run", "-n", "5", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 2
    header = next(line for line in result.stdout.splitlines() if line.startswith("#")).split()
    assert "n" not in header  # n=5 everywhere, so it does not vary
    study_out = llem("run", str(path), "--dry-run", "--model", "org/other").stdout
    assert {r[2] for r in table_rows(study_out)} == {"org/other"}


def test_study_where_every_point_is_invalid_exits_2(write_yaml):
    path = write_yaml("model: m\nbackend: vllm\nsweep:\n  precision: [fp32]\n")
    result = llem("run", str(path), "--dry-run")
    assert result.exit_code == 2
    assert "every experiment of the study is invalid" in result.stderr
    assert "Traceback" not in result.output


# --- errors a new user meets ------------------------------------------------------------------

BAD_INPUTS = [
    ("typo-key", "model: m\nbackend: pytorch\npresicion: fp16\n", [], "did you mean 'precision'?"),
    ("wrong-type", "model: m\nbackend: pytorch\nn: lots\n", [], "n (line 3)"),
    ("bad-yaml", "model: m\nbackend: pytorch\n  n: [1\n", [], "invalid YAML in"),
    ("negative-n-yaml", "model: m\nbackend: pytorch\nn: -3\n", [], "greater than or equal to 1"),
    ("negative-n-flag", "model: m\nbackend: pytorch\n", ["-n", "-1"], "-n must be at least 1"),
    (
        "zero-batch-flag",
        "model: m\nbackend: pytorch\n",
        ["--batch-size", "0"],
        "--batch-size must be at least 1",
    ),
    (
        "zero-cycles-flag",
        "model: m\nbackend: pytorch\nsweep: {n: [1]}\n",
        ["--cycles", "0"],
        "--cycles must be at least 1",
    ),
    ("unknown-backend", "model: m\nbackend: onnx\n", [], "backend (line 2)"),
    (
        "section-mismatch",
        "model: m\nbackend: pytorch\nvllm:\n  max_num_seqs: 4\n",
        [],
        "vllm: config section provided but backend='pytorch'",
    ),
    (
        "belongs-in-section",
        "model: m\nbackend: pytorch\nbatch_size: 4\n",
        [],
        "belongs under pytorch.batch_size",
    ),
    ("empty-file", "", [], "config file is empty"),
    ("list-file", "- model: m\n", [], "top level must be a mapping"),
    (
        "study-typo",
        "model: m\nbackend: pytorch\nsweep:\n  precison: [fp16]\n",
        [],
        "did you mean 'precision'?",
    ),
    (
        "unsupported-precision",
        "model: m\nbackend: vllm\nprecision: fp32\n",
        [],
        "vllm does not support precision='fp32'",
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "flags", "needle"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_exits_2_with_a_short_error_and_no_traceback(
    write_yaml, name, text, flags, needle
):
    path = write_yaml(text, name=f"{name}.yaml")
    result = llem("run", str(path), "--dry-run", *flags)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 3
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path):
    result = llem("run", str(tmp_path / "nope.yaml"), "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: config file not found")
    assert "Traceback" not in result.output


def test_directory_as_config_exits_2(tmp_path):
    result = llem("run", str(tmp_path), "--dry-run")
    assert result.exit_code == 2
    assert "directory" in result.stderr


def test_verbose_shows_the_traceback_as_well_as_the_message(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\npresicion: fp16\n")
    result = llem("run", str(path), "--dry-run", "--verbose")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "error: " in result.stderr and "did you mean 'precision'?" in result.stderr


def test_invalid_cycle_order_is_a_usage_error():
    result = llem("run", STUDY, "--dry-run", "--order", "random")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
