"""vLLM on one loaded engine: the prefix-cache reset, and llem's step loop vs bare ``LLM.generate``.

One engine start, then, on the same prompts (Llama-3.1-8B-shaped model, 512-token synthetic
prompts, 128 forced new tokens), each pass measured with the NVML energy counter:

1. prefix cache: pass A after ``clear_run_state()`` (the reset llem does before every window),
   pass B right after it with no reset (the same prompts again: vLLM's prefix cache hits),
   pass C after a reset again. B skipping prefill is what a reused engine would report without
   the reset.
2. harness overhead: llem's step-driven ``generate`` (per-token timestamps) vs a bare
   ``LLM.generate`` of the same prompts and sampling parameters, interleaved in pairs, each
   after a reset; ratios of tokens/s and J/token per pair, and their medians.

    python benchmarks/vllm_engine_checks.py --model .devout/llama8b --out .devout/vllm_checks.json
    python benchmarks/vllm_engine_checks.py --table .devout/vllm_checks.json   # Markdown only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _measure(energy: Any, engine: Any, run: tuple[Any, Any, Any]) -> dict[str, Any]:
    """One window as llem opens it (``MeasurementWindow``) around ``inside``; ``before`` runs
    before it opens, ``after`` (which counts the output tokens) after it closes."""
    from llenergymeasure.energy.window import MeasurementWindow

    before, inside, after = run
    state = before()
    window = MeasurementWindow(energy, device=engine)
    with window:
        raw = inside(state)
    tokens = after(raw)
    seconds, m = window.reading.duration_s, window.reading.energy
    joules = m.total_energy_j
    return {
        "seconds": seconds,
        "output_tokens": tokens,
        "energy_j": joules,
        "tokens_per_s": tokens / seconds,
        "j_per_token": joules / tokens if joules else None,
        "counter_vs_poll_pct": m.counter_vs_poll_diff_pct,
    }


def prefix_table(out: dict[str, Any]) -> str:
    """The prefix-cache passes A, B, C of this script's JSON output, as a Markdown table."""
    rows = [
        "| pass (same engine, same 256 prompts) | J/output-token | tok/s | window s "
        "| counter vs poll |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "prefix_A_after_reset": "A: after `clear_run_state()` (prefix cache reset)",
        "prefix_B_no_reset": "B: right after A, no reset (prefix cache warm)",
        "prefix_C_after_reset": "C: after a reset again",
    }
    for key, name in names.items():
        r = out[key]
        rows.append(
            f"| {name} | {r['j_per_token']:.4f} | {r['tokens_per_s']:.0f} | {r['seconds']:.1f} "
            f"| {r['counter_vs_poll_pct']:+.2f} % |"
        )
    return "\n".join(rows)


def pairs_table(out: dict[str, Any]) -> str:
    """The llem vs bare ``LLM.generate`` pairs of this script's JSON output, with the medians."""
    pairs = [
        "| pair | llem tok/s | bare tok/s | llem/bare tok/s | llem J/token | bare J/token "
        "| llem/bare J/token |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, p in enumerate(out["pairs"], 1):
        a, b = p["llem"], p["bare"]
        pairs.append(
            f"| {i} | {a['tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | "
            f"{a['tokens_per_s'] / b['tokens_per_s']:.3f} | {a['j_per_token']:.4f} | "
            f"{b['j_per_token']:.4f} | {a['j_per_token'] / b['j_per_token']:.3f} |"
        )
    pairs.append(
        f"| median | | | **{out['median_llem_over_bare_tokens_per_s']:.3f}** | | | "
        f"**{out['median_llem_over_bare_j_per_token']:.3f}** |"
    )
    return "\n".join(pairs)


def markdown(out: dict[str, Any]) -> str:
    """The two tables of BENCHMARKS.md from this script's JSON output."""
    return prefix_table(out) + "\n\n" + pairs_table(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", type=Path, help="print the Markdown tables of a JSON output")
    parser.add_argument("--model")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.table is not None:
        print(markdown(json.loads(args.table.read_text())))
        return
    if args.model is None or args.out is None:
        parser.error("--model and --out are required to run the checks")

    from vllm import SamplingParams

    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import load_prompts
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.energy.sensors import NvmlSensor
    from llenergymeasure.engines.factory import create_engine
    from llenergymeasure.harness.environment import capture_environment

    config = ExperimentConfig(
        model=args.model,
        backend="vllm",
        precision="bf16",
        n=args.n,
        dataset={"n": args.n, "input_len": 512, "output_len": 128, "seed": 42},
        decoder={"ignore_eos": True},
        vllm={"max_num_seqs": args.max_num_seqs},
    )
    engine = create_engine("vllm", config)
    t0 = time.perf_counter()
    engine.load(config)
    start_s = time.perf_counter() - t0
    prompts = list(load_prompts(config.dataset, config.n, tokenizer=engine.tokenizer))
    warm = list(
        load_prompts(
            config.dataset.model_copy(update={"seed": 7}),
            args.max_num_seqs,
            tokenizer=engine.tokenizer,
        )
    )
    sensor = NvmlSensor()
    sampler = EnergySampler(sensor, interval_ms=100)
    energy = NvmlEnergyBackend(sensor=sensor, sampler=sampler)
    llm = engine.handle  # the loaded vllm.LLM
    max_tokens = config.effective_max_new_tokens
    params = SamplingParams(
        max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True, temperature=0.0
    )

    # llem as its measurement window runs it: prepared before, records after
    llem_pass = (
        lambda: engine.prepare(prompts, config, phase="measurement"),
        engine.execute,
        lambda raw: sum(r.output_tokens for r in engine.records(raw)),
    )
    bare_pass = (
        lambda: [p.text for p in prompts],
        lambda texts: llm.generate(texts, params, use_tqdm=False),
        lambda outs: sum(len(o.outputs[0].token_ids) for o in outs),
    )

    env = capture_environment("vllm", sensor)
    out: dict[str, Any] = {
        "engine_start_s": start_s,
        "n": args.n,
        "max_num_seqs": args.max_num_seqs,
        # the machine, as a result's environment names it (benchmarks/_studies.machine)
        "environment": {
            "gpus": [{"name": g.get("name")} for g in env.gpus],
            "driver_version": env.driver_version,
            "engine_version": env.engine_version,
        },
        "measured_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with sampler:
        engine.generate(warm, config, phase="warmup")
        engine.clear_run_state()
        out["prefix_A_after_reset"] = _measure(energy, engine, llem_pass)
        out["prefix_B_no_reset"] = _measure(energy, engine, llem_pass)
        out["reset_notes"] = engine.clear_run_state()
        out["prefix_C_after_reset"] = _measure(energy, engine, llem_pass)
        pairs = []
        for i in range(args.pairs):
            order = [("llem", llem_pass), ("bare", bare_pass)]
            if i % 2:
                order.reverse()
            pair: dict[str, Any] = {}
            for name, fn in order:
                engine.clear_run_state()
                pair[name] = _measure(energy, engine, fn)
            pairs.append(pair)
        out["pairs"] = pairs
    engine.unload()
    sensor.close()
    ratios_tps = [p["llem"]["tokens_per_s"] / p["bare"]["tokens_per_s"] for p in pairs]
    ratios_j = [p["llem"]["j_per_token"] / p["bare"]["j_per_token"] for p in pairs]
    out["median_llem_over_bare_tokens_per_s"] = statistics.median(ratios_tps)
    out["median_llem_over_bare_j_per_token"] = statistics.median(ratios_j)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for key in ("prefix_A_after_reset", "prefix_B_no_reset", "prefix_C_after_reset"):
        r = out[key]
        print(
            f"{key}: {r['j_per_token']:.4f} J/token, {r['tokens_per_s']:.0f} tok/s, "
            f"{r['seconds']:.1f} s, counter vs poll {r['counter_vs_poll_pct']}"
        )
    for i, p in enumerate(pairs):
        print(
            f"pair {i}: llem {p['llem']['tokens_per_s']:.0f} tok/s "
            f"{p['llem']['j_per_token']:.4f} J/tok | bare {p['bare']['tokens_per_s']:.0f} tok/s "
            f"{p['bare']['j_per_token']:.4f} J/tok"
        )
    print(
        f"median llem/bare: tok/s {out['median_llem_over_bare_tokens_per_s']:.4f}, "
        f"J/token {out['median_llem_over_bare_j_per_token']:.4f}"
    )


if __name__ == "__main__":
    main()
