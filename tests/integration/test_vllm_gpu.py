"""GPU integration tests of the vLLM engine (``pytest -m "gpu and vllm" tests/integration``).

They run where vLLM imports and a CUDA GPU is visible. The model is ``LLEM_TEST_VLLM_MODEL`` (a
local Hugging Face folder, e.g. the Llama-3.1-8B-shaped one ``benchmarks/make_llama8b_shaped.py``
builds), else ``builtin:tiny``; with the 8B-shaped model the window lasts over 10 s, long enough
for the counter-vs-poll check. (Not ``VLLM_*``: vLLM warns about every unknown variable of its
own prefix.)
"""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]

MODEL = os.environ.get("LLEM_TEST_VLLM_MODEL", "builtin:tiny")
N = int(os.environ.get("LLEM_TEST_VLLM_N", "512"))


@pytest.fixture(scope="module")
def vllm_result():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import llenergymeasure as llem

    return llem.run_experiment(
        model=MODEL,
        backend="vllm",
        precision="bf16",
        n=N,
        dataset={"n": N, "input_len": 512, "output_len": 128, "seed": 3},
        decoder={"ignore_eos": True},
        warmup={"n_warmup": 1, "thermal_floor_seconds": 0},
        baseline={"duration_seconds": 3},
        vllm={"max_num_seqs": 64},
    )


def test_a_vllm_run_measures_energy_with_the_counter(vllm_result) -> None:
    assert vllm_result.energy.available
    # auto picks Zeus when it is installed; both read the same NVML counter
    assert vllm_result.energy.method in {"nvml_counter", "zeus"}
    assert vllm_result.energy_total_j is not None and vllm_result.energy_total_j > 0
    assert vllm_result.output_tokens == N * 128


def test_every_generated_token_is_timed(vllm_result) -> None:
    """Per-token timing from the step loop: one TTFT per request, one ITL per later token."""
    assert vllm_result.ttft.n == N
    assert vllm_result.itl.n == sum(r.output_tokens - 1 for r in vllm_result.requests)
    assert vllm_result.itl.p50 is not None and vllm_result.itl.p50 > 0
    assert vllm_result.itl.p99 is not None and vllm_result.itl.p99 >= vllm_result.itl.p50


def test_token_times_are_the_engine_cores_iteration_stamps(vllm_result) -> None:
    """The step loop read EngineCoreOutputs (not the DELTA fallback) and the split has steps."""
    notes = vllm_result.effective_parameters.get("notes", [])
    assert any("engine core's iterations" in n for n in notes), notes
    attribution = vllm_result.energy_attribution
    assert attribution is not None, vllm_result.energy_attribution_unavailable
    # max_num_seqs 64: each iteration serves up to 64 requests, so far fewer steps than tokens
    assert attribution.n_steps < vllm_result.output_tokens / 8, attribution.n_steps


def test_counter_and_poll_agree_within_2_percent_on_a_long_window(vllm_result) -> None:
    if vllm_result.duration_s < 10:
        pytest.skip(f"window {vllm_result.duration_s:.1f} s < 10 s (set LLEM_TEST_VLLM_MODEL)")
    if vllm_result.energy.method != "nvml_counter":
        pytest.skip("the cross-check belongs to the NVML backend")
    diff = vllm_result.energy.counter_vs_poll_diff_pct
    assert diff is not None and abs(diff) < 2.0, diff
