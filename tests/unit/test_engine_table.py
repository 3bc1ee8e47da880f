"""``benchmarks/engine_table.py``: the BENCHMARKS.md engines-side-by-side section (issue 15).

The study directories are hand-made: each result.json holds only the fields the script reads, in
the nesting of a recorded H200 run (``benchmarks/results/reuse_pytorch_b1-64``), which one test
checks. The figures are chosen so that the engines, the cycle means, the ratios to PyTorch eager
and the counter-vs-poll verdicts are easy to follow.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import benchmark_scripts
import pytest
from benchmark_scripts import (
    BENCHMARKS,
    assert_tables_well_formed,
    load_benchmark_script,
    redirect_sections,
    refuse_writes,
)

from llenergymeasure.config.models import ExperimentConfig

RECORDED = BENCHMARKS / "results" / "reuse_pytorch_b1-64" / "reuse"
VLLM_CHECKS = BENCHMARKS / "results" / "wave2" / "vllm_checks.json"

et = load_benchmark_script("engine_table")


def fake_result(
    backend: str = "pytorch",
    *,
    batch_size: int | None = None,
    torch_compile: bool | None = None,
    max_num_seqs: int | None = None,
    effective: dict[str, Any] | None = None,
    j: float = 0.5,
    adjusted: float | None = None,
    tok_s: float = 1000.0,
    watts: float = 400.0,
    ttft_s: tuple[float, float] = (0.1, 0.2),
    itl_s: tuple[float, float] = (0.01, 0.02),
    window_s: float = 12.0,
    prompts: int = 64,
    counter_vs_poll: float | None = 0.5,
    new_tokens: int = 128,
    reused: bool = False,
) -> dict[str, Any]:
    """A result.json with only what the script reads (``effective``: effective_parameters)."""
    config: dict[str, Any] = {
        "model": ".devout/llama8b",
        "backend": backend,
        "precision": "bf16",
        "dataset": {"n": 192, "input_len": 512, "output_len": new_tokens, "seed": 42},
        "n": prompts,
        "max_new_tokens": 128,
        "decoder": {"decoding_strategy": "greedy", "ignore_eos": True},
        "mode": "offline",
    }
    if backend == "pytorch":
        config["pytorch"] = {"batch_size": batch_size, "torch_compile": torch_compile}
    if backend == "vllm":
        config["vllm"] = {"max_num_seqs": max_num_seqs}
    return {
        "config": config,
        "effective_parameters": effective or {},
        "dataset": {"kind": "synthetic", "n": 192, "input_len": 512, "output_len": new_tokens},
        "energy_per_output_token_j": j,
        "energy_per_output_token_adjusted_j": adjusted if adjusted is not None else j * 0.8,
        "mean_power_w": watts,
        "tokens_per_second": tok_s,
        "n_requests": prompts,
        "duration_s": window_s,
        "ttft": {"p50": ttft_s[0], "p99": ttft_s[1]},
        "itl": {"p50": itl_s[0], "p99": itl_s[1]},
        "energy": {"counter_vs_poll_diff_pct": counter_vs_poll},
        "environment": {"gpus": [{"name": "NVIDIA H200"}], "driver_version": "580.159.04"},
        "measurement_warnings": ["thermal_floor_below_recommended"],
        "engine_reused": reused,
    }


def write_study(directory: Path, runs: list[tuple[int, dict[str, Any] | None]]) -> Path:
    """A study directory as ``llem run`` leaves it; a None result is a failed run."""
    texts = [(cycle, None if r is None else json.dumps(r)) for cycle, r in runs]
    return benchmark_scripts.write_study(directory, texts)


@pytest.fixture
def studies(tmp_path: Path) -> list[Path]:
    """Eager (batch 1, and batch 8 over two cycles plus a failed run), compiled (8 and 32, one
    with a +2.5 % counter-vs-poll gap on an 11 s window) and vLLM (8, 64 and the default 256,
    one 6 s window with a +3 % gap) studies; and a 256-token run of another workload."""
    eager = write_study(
        tmp_path / "eager",
        [
            (1, fake_result(batch_size=None, j=6.0, tok_s=30, prompts=8)),
            (1, fake_result(batch_size=8, j=0.8, ttft_s=(0.10, 0.30), counter_vs_poll=-1.0)),
            (2, fake_result(batch_size=8, j=0.9, ttft_s=(0.12, 0.34), reused=True)),
            (3, None),
        ],
    )
    compiled = write_study(
        tmp_path / "compiled",
        [
            (1, fake_result(batch_size=8, torch_compile=True, j=0.6)),
            (
                1,
                fake_result(
                    batch_size=32, torch_compile=True, j=0.35, window_s=11.0, counter_vs_poll=2.5
                ),
            ),
            (1, fake_result(batch_size=8, torch_compile=True, j=1.2, new_tokens=256)),
        ],
    )
    vllm = write_study(
        tmp_path / "vllm",
        [
            (1, fake_result("vllm", max_num_seqs=8, j=0.17)),
            (1, fake_result("vllm", max_num_seqs=64, j=0.12)),
            (
                1,
                fake_result(
                    "vllm",
                    effective={"max_num_seqs": 256},
                    j=0.08,
                    window_s=6.0,
                    counter_vs_poll=3.0,
                ),
            ),
        ],
    )
    return [eager, compiled, vllm]


def all_runs(studies: list[Path]) -> list[Any]:
    return [r for d in studies for r in et.load_runs(d)]


def tabulated_rows(studies: list[Path]) -> list[Any]:
    kept, _ = et.main_workload(all_runs(studies))
    return et.rows_of(kept)


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The body rows of the first Markdown table in ``text``, by their first two cells."""
    lines = text.split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {(cells[0], cells[1]): cells for cells in rows}


# -- classification ------------------------------------------------------------------------


def test_engine_columns_follow_backend_and_torch_compile() -> None:
    assert et.engine_of(fake_result(torch_compile=None)) == "PyTorch eager"  # the default
    assert et.engine_of(fake_result(torch_compile=False)) == "PyTorch eager"
    assert et.engine_of(fake_result(torch_compile=True)) == "PyTorch compiled"
    assert et.engine_of(fake_result("vllm")) == "vLLM"
    tensorrt = fake_result("tensorrt")
    assert et.engine_of(tensorrt) == "TensorRT-LLM"


def test_what_the_engine_applied_wins_over_the_config() -> None:
    # asked for torch.compile, but the engine did not apply it (not on CUDA): eager decode ran
    not_applied = fake_result(
        torch_compile=True, effective={"torch_compile": True, "torch_compile_applied": False}
    )
    assert et.engine_of(not_applied) == "PyTorch eager"
    assert et.concurrency_of(fake_result(batch_size=8, effective={"batch_size": 4})) == 4


def test_concurrency_is_the_batch_size_or_max_num_seqs_with_none_resolved() -> None:
    assert et.concurrency_of(fake_result(batch_size=None)) == 1
    assert et.concurrency_of(fake_result(batch_size=32)) == 32
    assert et.concurrency_of(fake_result("vllm", max_num_seqs=64)) == 64
    assert et.concurrency_of(fake_result("vllm", max_num_seqs=None)) == 256  # vLLM's default
    tensorrt = fake_result("tensorrt")
    tensorrt["config"]["tensorrt"] = {"max_batch_size": 16}
    assert et.concurrency_of(tensorrt) == 16


def test_the_fake_results_have_the_recorded_results_shape() -> None:
    """Every field the fakes hold is where a recorded result keeps it, and the configs validate."""
    recorded = json.loads(next(RECORDED.glob("*/result.json")).read_text())
    keys = set(et.flat(recorded))
    fake = fake_result(batch_size=8, torch_compile=True)
    assert set(et.flat(fake)) <= keys
    assert recorded["environment"]["gpus"][0]["name"] == fake["environment"]["gpus"][0]["name"]
    for backend in ("pytorch", "vllm"):
        ExperimentConfig.model_validate(fake_result(backend)["config"])


# -- rows ----------------------------------------------------------------------------------


def test_rows_are_ordered_by_engine_then_concurrency(studies: list[Path]) -> None:
    assert [(r.engine, r.concurrency, len(r.runs)) for r in tabulated_rows(studies)] == [
        ("PyTorch eager", 1, 1),
        ("PyTorch eager", 8, 2),  # two cycles; the failed run is not read
        ("PyTorch compiled", 8, 1),  # its 256-token run is another workload
        ("PyTorch compiled", 32, 1),
        ("vLLM", 8, 1),
        ("vLLM", 64, 1),
        ("vLLM", 256, 1),
    ]


def test_a_row_of_cycles_shows_their_mean_and_the_cv_of_j_per_token(
    studies: list[Path],
) -> None:
    row = next(r for r in tabulated_rows(studies) if (r.engine, r.concurrency) == (et.EAGER, 8))
    assert row.j_per_token == pytest.approx(0.85)
    assert row.j_per_token_cv == pytest.approx(statistics.stdev([0.8, 0.9]) / 0.85)
    assert row.mean("ttft.p99", 1e3) == pytest.approx(320.0)
    cells = table_rows(et.main_table([row]))["PyTorch eager", "8"]
    assert cells[2:5] == ["2", "64", "0.8500 (8.3 %)"]
    assert cells[8] == "110.0 / 320.0"  # TTFT p50 / p99, ms
    assert cells[11] == "-1.00 to +0.50 %"  # counter vs poll over the two cycles


def test_ml_energy_is_shown_beside_vllm_rows_only(studies: list[Path]) -> None:
    rows = table_rows(et.main_table(tabulated_rows(studies)))
    published = {key: cells[-1] for key, cells in rows.items()}
    assert published == {
        ("PyTorch eager", "1"): "",
        ("PyTorch eager", "8"): "",  # the same concurrency as a published figure, not vLLM
        ("PyTorch compiled", "8"): "",
        ("PyTorch compiled", "32"): "",
        ("vLLM", "8"): "0.455",
        ("vLLM", "64"): "",  # no published figure at 64
        ("vLLM", "256"): "0.077",
    }


def test_the_side_by_side_view_gives_each_engines_ratio_to_eager(studies: list[Path]) -> None:
    table = et.side_by_side(tabulated_rows(studies))
    header = table.splitlines()[0]
    assert header == (
        "| concurrency | PyTorch eager | PyTorch compiled | vLLM "
        "| ML.ENERGY vLLM (H100, published) |"
    )
    by_concurrency = {cells[0]: cells[1:] for (_, _), cells in table_rows(table).items()}
    assert by_concurrency["8"] == [
        "0.8500",
        f"0.6000 ({0.6 / 0.85:.2f}x)",
        f"0.1700 ({0.17 / 0.85:.2f}x)",
        "0.455",
    ]
    assert by_concurrency["32"] == ["not run", "0.3500", "not run", "0.165"]  # no eager: no ratio
    assert by_concurrency["256"] == ["not run", "not run", "0.0800", "0.077"]


def test_without_eager_runs_the_side_by_side_view_says_there_are_no_ratios(
    studies: list[Path],
) -> None:
    rows = [r for r in tabulated_rows(studies) if r.engine != et.EAGER]
    assert "No PyTorch eager run among the inputs, so no ratios." in et.side_by_side(rows)


# -- checks --------------------------------------------------------------------------------


def test_counter_vs_poll_is_held_to_2_percent_on_windows_of_10_s_or_more(
    studies: list[Path],
) -> None:
    kept, _ = et.main_workload(all_runs(studies))
    line = et.counter_poll_line(kept)
    assert "**6 of 7 runs within** (largest gap +2.50 %, compiled/002_llama8b_pytorch_c1" in line
    assert "Outside: compiled/002_llama8b_pytorch_c1 (PyTorch compiled 32) +2.50 %." in line
    assert "Not held to it: 1 run with shorter windows (6.0-6.0 s; gaps +3.00 %)." in line


def test_runs_of_another_workload_are_left_out_and_named(studies: list[Path]) -> None:
    kept, left_out = et.main_workload(all_runs(studies))
    assert [(r.study, r.run_id) for r in left_out] == [("compiled", "003_llama8b_pytorch_c1")]
    line = et.workload_line(kept, left_out)
    assert "GPU NVIDIA H200, model .devout/llama8b, precision bf16, mode offline" in line
    assert "new tokens 128" in line
    left = "another GPU, model or workload:** compiled/003_llama8b_pytorch_c1 (new tokens 256)."
    assert left in line


def test_runs_on_another_gpu_are_left_out_counted_per_study(tmp_path: Path) -> None:
    h100 = fake_result(batch_size=8)
    h100["environment"]["gpus"][0]["name"] = "NVIDIA H100 80GB HBM3"
    older = fake_result(batch_size=8)
    del older["config"]["mode"]  # written before online mode existed: it ran offline
    ours = write_study(tmp_path / "h200", [(1, fake_result(batch_size=8)), (2, older)])
    theirs = write_study(tmp_path / "h100", [(1, h100), (2, h100)])
    kept, left_out = et.main_workload(et.load_runs(ours) + et.load_runs(theirs))
    assert [r.study for r in kept] == ["h200", "h200"]
    assert "h100: 2 runs (GPU NVIDIA H100 80GB HBM3)." in et.workload_line(kept, left_out)


def test_the_bare_vllm_ratio_comes_from_vllm_engine_checks_json() -> None:
    block = et.bare_ratio_block(VLLM_CHECKS)
    assert "**median llem / bare tok/s 0.986, J/output-token 0.995**" in block
    assert "interleaved in 3 pairs" in block and "max_num_seqs 64, 256 prompts" in block
    assert "| median | | | **0.986** | | | **0.995** |" in block
    assert block.startswith("### llem vs bare vLLM (machine not recorded)")


def test_the_bare_ratio_names_its_machine_from_the_file_or_the_flag(tmp_path: Path) -> None:
    labelled = et.bare_ratio_block(VLLM_CHECKS, "NVIDIA H100 80GB HBM3; 2026-12-07")
    assert labelled.startswith("### llem vs bare vLLM (NVIDIA H100 80GB HBM3; 2026-12-07)")
    data = json.loads(VLLM_CHECKS.read_text())
    data["environment"] = {"gpus": [{"name": "NVIDIA H200"}], "driver_version": "580.159.04"}
    data["measured_at_utc"] = "2026-12-08T01:02:03+00:00"
    recorded = tmp_path / "checks.json"
    recorded.write_text(json.dumps(data))
    block = et.bare_ratio_block(recorded, "ignored: the file says")
    assert block.startswith("### llem vs bare vLLM (NVIDIA H200, driver 580.159.04; 2026-12-08)")


# -- the section ---------------------------------------------------------------------------


def test_the_section_printed_and_written(
    studies: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    md = redirect_sections(et, monkeypatch, tmp_path / "BENCHMARKS.md")
    extra = tmp_path / "extra.md"
    extra.write_text("Commands: made by hand.\n")
    args = [a for d in studies for a in ("--study", str(d))]
    et.main([*args, "--bare-ratio", str(VLLM_CHECKS), "--extra", str(extra)])
    out = capsys.readouterr().out
    assert "### J per output token by engine and concurrency (NVIDIA H200" in out
    assert "NVIDIA H200, a random-weight Llama-3.1-8B-shaped model, 512-token synthetic " in out
    assert "128 forced new tokens" in out and "compare the trends" in out
    assert "### llem vs bare vLLM" in out and out.rstrip().endswith("Commands: made by hand.")
    assert_tables_well_formed(out, [et.MAIN_HEADER[:20], "| concurrency | PyTorch eager"])
    text = md.read_text()
    assert "## Other\n\nkept" in text and "## Engines side by side (issue 15)" in text


def test_no_write_only_prints(
    studies: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refuse_writes(et, monkeypatch)
    benchmarks_md = BENCHMARKS.parent / "BENCHMARKS.md"
    before = benchmarks_md.read_bytes()
    et.main(["--study", str(studies[0]), "--no-write"])
    assert "| PyTorch eager | 8 | 2 |" in capsys.readouterr().out
    assert benchmarks_md.read_bytes() == before


def test_the_recorded_compiled_study_gives_four_rows_of_three_cycles() -> None:
    rows = et.rows_of(et.load_runs(RECORDED))
    assert [(r.engine, r.concurrency, len(r.runs)) for r in rows] == [
        ("PyTorch compiled", b, 3) for b in (1, 8, 32, 64)
    ]
    # the same means as the reuse table of issue 14 (BENCHMARKS.md, "Engine reuse")
    assert [round(r.j_per_token, 4) for r in rows] == [3.0819, 0.5767, 0.3186, 0.2738]
