"""Harness overhead: tokens/s and J/token through llem vs a bare ``model.generate`` loop.

Same model object, same prompts, same generate arguments, same process; runs interleaved
(bare, llem, bare, llem, ...) so drift affects both alike. The llem side is the full
orchestrator (background sampler thread, energy window, per-token streamer timing); the bare
side is a plain loop timed with ``cuda.synchronize`` + ``perf_counter`` and measured with the
same NVML counter. Run on a GPU machine:

    python benchmarks/make_llama8b_shaped.py --out .devout/llama8b
    python benchmarks/harness_overhead.py --model .devout/llama8b --out .devout/overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.base import LoadInfo


class PreloadedEngine:
    """Wraps a loaded engine so that each orchestrator run reuses the same model object."""

    def __init__(self, engine: Any, info: LoadInfo) -> None:
        self._engine, self._info = engine, info
        self.name = engine.name

    def __getattr__(self, item: str) -> Any:
        return getattr(self._engine, item)

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    def load(self, config: ExperimentConfig) -> LoadInfo:
        return self._info

    def unload(self) -> None:
        pass


def experiment(
    model: str, batch: int, n: int, input_len: int, output_len: int, compile_: bool = False
) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "pytorch",
            "precision": "bf16",
            "dataset": {"n": n, "input_len": input_len, "output_len": output_len},
            "n": n,
            "decoder": {"ignore_eos": True},
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            "pytorch": {"batch_size": batch, "torch_compile": compile_},
        }
    )


def bare_run(
    model: Any, batches: list[tuple[Any, Any]], output_len: int, energy: Any, compile_: bool
) -> dict[str, float]:
    """Plain generate loop over pre-tokenised, on-device batches."""
    import torch

    kw: dict[str, Any] = dict(
        max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0
    )
    if compile_:  # transformers' own compile path, as llem uses it
        kw["cache_implementation"] = "static"
    else:
        kw["disable_compile"] = True
    model.generate(input_ids=batches[0][0], attention_mask=batches[0][1], **kw)  # warmup
    torch.cuda.synchronize()
    energy.begin()
    t0 = time.perf_counter()
    tokens = 0
    for ids, mask in batches:
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    torch.cuda.synchronize()
    duration = time.perf_counter() - t0
    measured = energy.end()
    return {
        "tokens_per_second": tokens / duration,
        "energy_per_output_token_j": measured.total_energy_j / tokens,
        "duration_s": duration,
        "output_tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cases", default="1:4,8:16", help="batch:n pairs")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(".devout/overhead"))
    parser.add_argument("--compile", action="store_true", help="torch_compile + static cache")
    args = parser.parse_args()

    import torch
    import transformers

    from llenergymeasure.datasets import load_prompts
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.energy.sensors import NvmlSensor
    from llenergymeasure.engines.pytorch import PyTorchBackend
    from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings

    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    sensor = NvmlSensor()
    engine = PyTorchBackend()
    first = experiment(
        args.model, cases[0][0], cases[0][1], args.input_len, args.output_len, args.compile
    )
    info = engine.load(first)
    model, tokenizer = engine._model, engine.tokenizer  # the very same objects llem uses
    rows: list[dict[str, Any]] = []
    for batch, n in cases:
        config = experiment(args.model, batch, n, args.input_len, args.output_len, args.compile)
        prompts = load_prompts(config.dataset, n, tokenizer=tokenizer)
        batches = []
        for i in range(0, n, batch):
            enc = tokenizer(
                [p.text for p in prompts[i : i + batch]], padding=True, return_tensors="pt"
            )
            batches.append((enc["input_ids"].to("cuda"), enc["attention_mask"].to("cuda")))
        bare: list[dict[str, float]] = []
        llem: list[dict[str, float]] = []
        for rep in range(args.reps):
            sampler = EnergySampler(sensor, interval_ms=100)
            with sampler:
                bare.append(
                    bare_run(
                        model,
                        batches,
                        args.output_len,
                        NvmlEnergyBackend(sensor, sampler),
                        args.compile,
                    )
                )
            sampler = EnergySampler(sensor, interval_ms=100)
            orch = ExperimentOrchestrator(
                engine=PreloadedEngine(engine, info),  # type: ignore[arg-type]
                energy_backend=NvmlEnergyBackend(sensor=sensor, sampler=sampler),
                sensor=sensor,
                settings=MeasurementSettings(),
            )
            result = orch.run(config).result
            llem.append(
                {
                    "tokens_per_second": result.tokens_per_second,
                    "energy_per_output_token_j": result.energy_per_output_token_j or float("nan"),
                    "duration_s": result.duration_s,
                    "output_tokens": result.output_tokens,
                    "counter_vs_poll_diff_pct": result.energy.counter_vs_poll_diff_pct or 0.0,
                }
            )
            print(
                f"batch {batch} rep {rep}: bare {bare[-1]['tokens_per_second']:.2f} tok/s, "
                f"llem {llem[-1]['tokens_per_second']:.2f} tok/s",
                flush=True,
            )
        med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
        # Paired ratios (each llem run against the bare run just before it) cancel slow drift.
        tps_ratios = [
            ll["tokens_per_second"] / b["tokens_per_second"]
            for b, ll in zip(bare, llem, strict=True)
        ]
        jpt_ratios = [
            ll["energy_per_output_token_j"] / b["energy_per_output_token_j"]
            for b, ll in zip(bare, llem, strict=True)
        ]
        rows.append(
            {
                "batch": batch,
                "n": n,
                "bare_tps": med(bare, "tokens_per_second"),
                "llem_tps": med(llem, "tokens_per_second"),
                "bare_jpt": med(bare, "energy_per_output_token_j"),
                "llem_jpt": med(llem, "energy_per_output_token_j"),
                "window_s": med(llem, "duration_s"),
                "tps_ratio": statistics.median(tps_ratios),
                "tps_ratio_range": (min(tps_ratios), max(tps_ratios)),
                "jpt_ratio": statistics.median(jpt_ratios),
                "bare_tps_range": (
                    min(r["tokens_per_second"] for r in bare),
                    max(r["tokens_per_second"] for r in bare),
                ),
                "bare_runs": bare,
                "llem_runs": llem,
            }
        )
    gpu = sensor.device_info(0).name
    sensor.close()
    lines = [
        "| batch | prompts | bare tok/s (min-max) | llem tok/s | llem/bare tok/s, paired "
        "median (min-max) | bare J/tok | llem J/tok | llem/bare J/tok | window s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["bare_tps_range"]
        rlo, rhi = r["tps_ratio_range"]
        lines.append(
            f"| {r['batch']} | {r['n']} | {r['bare_tps']:.2f} ({lo:.1f}-{hi:.1f}) | "
            f"{r['llem_tps']:.2f} | {r['tps_ratio']:.3f} ({rlo:.3f}-{rhi:.3f}) | "
            f"{r['bare_jpt']:.3f} | {r['llem_jpt']:.3f} | {r['jpt_ratio']:.3f} | "
            f"{r['window_s']:.1f} |"
        )
    meta = (
        f"- GPU: {gpu}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"- Model: Llama-3.1-8B-shaped, random weights, bf16, {args.input_len}-token synthetic "
        f"prompts, {args.output_len} forced new tokens, "
        f"{'torch_compile + static KV cache' if args.compile else 'dynamic KV cache (eager)'}, "
        f"medians of {args.reps} interleaved runs each\n"
        "- Reproduce: `python benchmarks/make_llama8b_shaped.py --out .devout/llama8b && "
        f"python benchmarks/harness_overhead.py --model .devout/llama8b --cases {args.cases} "
        f"--reps {args.reps}{' --compile' if args.compile else ''}`"
    )
    table = "\n".join(lines) + "\n\n" + meta + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "compiled" if args.compile else "eager"
    (args.out / f"harness_overhead_{tag}.md").write_text(table)
    (args.out / f"harness_overhead_{tag}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
