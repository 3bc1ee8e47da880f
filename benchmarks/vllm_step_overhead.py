"""vLLM: llem's step-driven generate (per-token timestamps) vs a bare ``LLM.generate``.

Same ``LLM`` object, same prompts and sampling parameters, same process, interleaved
(bare, llem, bare, llem, ...); the prefix cache is reset before every run so that no run
reuses another's prefill. Reports the wall time of each run, the llem/bare ratio of the
medians, and what the step loop recorded (TTFT / ITL counts and percentiles, prefix-cache hit
rate). Needs a GPU machine with vLLM 0.26 on the path (not yet run there: written with the
step-driven engine, whose CPU tests use the fake ``vllm``):

    python benchmarks/vllm_step_overhead.py --model <hf folder> --out .devout/vllm-step
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.vllm import VLLMBackend


def _prompts(n: int, chars: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    return [Prompt("".join(rng.choice(letters) for _ in range(chars)), index=i) for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--input-chars", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()

    config = ExperimentConfig.model_validate(
        {
            "model": args.model,
            "backend": "vllm",
            "precision": "bf16",
            "max_new_tokens": args.output_tokens,
            "decoder": {"ignore_eos": True},
            "vllm": {"max_num_seqs": args.max_num_seqs},
        }
    )
    engine = VLLMBackend()
    info = engine.load(config)
    prompts = _prompts(args.n, args.input_chars, seed=1)
    texts = [p.text for p in prompts]
    llm: Any = engine._llm

    def bare() -> float:
        params = [engine._sampling_params(config, args.output_tokens) for _ in prompts]
        engine.clear_run_state()
        t0 = time.perf_counter()
        llm.generate(texts, params, use_tqdm=False)
        return time.perf_counter() - t0

    def stepped() -> tuple[float, list[Any]]:
        engine.clear_run_state()
        engine.reset_peak_memory()
        t0 = time.perf_counter()
        records = engine.generate(prompts, config)
        return time.perf_counter() - t0, records

    bare()  # warm both paths (CUDA graphs, allocator) before timing
    stepped()
    runs: dict[str, list[float]] = {"bare": [], "llem": []}
    records: list[Any] = []
    for _ in range(args.pairs):
        runs["bare"].append(bare())
        wall, records = stepped()
        runs["llem"].append(wall)
    itl = [gap for r in records for gap in r.itl_s]
    ttft = [r.ttft_s for r in records if r.ttft_s is not None]
    summary = {
        "model": args.model,
        "n": args.n,
        "output_tokens": args.output_tokens,
        "max_num_seqs": args.max_num_seqs,
        "load_time_s": info.load_time_s,
        "timing_parts": info.timing_parts,
        "wall_s": runs,
        "llem_over_bare_median": statistics.median(runs["llem"]) / statistics.median(runs["bare"]),
        "records": len(records),
        "output_tokens_total": sum(r.output_tokens for r in records),
        "itl_count": len(itl),
        "itl_expected": sum(r.output_tokens - 1 for r in records),
        "itl_p50_ms": 1000 * _pct(itl, 0.5) if itl else None,
        "itl_p99_ms": 1000 * _pct(itl, 0.99) if itl else None,
        "ttft_p50_ms": 1000 * _pct(ttft, 0.5) if ttft else None,
        "ttft_p99_ms": 1000 * _pct(ttft, 0.99) if ttft else None,
        "prefix_cache": engine.effective_parameters()["prefix_cache"],
        "notes": engine.effective_parameters()["notes"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    engine.unload()


if __name__ == "__main__":
    main()
