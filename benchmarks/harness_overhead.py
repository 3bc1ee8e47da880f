"""Harness overhead: tokens/s and J/token through llem vs a bare ``model.generate`` loop.

Same model object, same prompts, same generate arguments, same process; runs interleaved
(bare, llem, bare, llem, ...) so drift affects both alike. The llem side is the full
orchestrator (background sampler thread, energy window, per-token streamer timing); the bare
side is a plain loop timed with ``cuda.synchronize`` + ``perf_counter`` and measured with the
same NVML counter. Run on a GPU machine:

    python benchmarks/make_llama8b_shaped.py --out .devout/llama8b
    python benchmarks/harness_overhead.py --model .devout/llama8b --out .devout/overhead

``--cpu`` runs the same comparison on a CPU machine (fp32, tokens/s only: a CPU has no energy
counter). The llem side keeps everything that runs on a GPU machine except the NVML reads: the
full orchestrator with its background sampler thread polling a fake sensor every 100 ms, the
energy window and the per-token streamer. ``--model builtin:tiny`` (0.5 MB) makes every decode
step almost pure Python overhead, the worst case for a per-step cost; ``--model small`` builds
a larger random Llama (hidden 256, 4 layers) where the forward pass dominates. It also times
what the window no longer holds: ``prepare`` (tokenise, pad, move) of ``--prepare-n`` prompts
of ``--prepare-len`` tokens.

    python benchmarks/harness_overhead.py --cpu --model builtin:tiny --cases 1:8,8:32 --reps 7
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
    parser.add_argument("--cpu", action="store_true", help="CPU comparison (tokens/s only)")
    parser.add_argument(
        "--threads", type=int, default=1, help="--cpu: torch threads (1: steadier on a busy box)"
    )
    parser.add_argument("--prepare-n", type=int, default=256)
    parser.add_argument("--prepare-len", type=int, default=512)
    args = parser.parse_args()
    if args.cpu:
        cpu_main(args)
        return

    import torch
    import transformers

    from llenergymeasure.datasets import load_prompts
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.energy.sensors import NvmlSensor
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend
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


def small_model(folder: Path) -> str:
    """A random Llama (hidden 256, 4 layers, the builtin byte tokenizer), built once."""
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llenergymeasure.engines.builtin import BOS_ID, EOS_ID, PAD_ID, build_tiny_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=8,
            vocab_size=259,
            max_position_embeddings=2048,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
    )
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    return str(folder)


def cpu_experiment(model: str, batch: int, n: int, input_len: int, output_len: int) -> Any:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "pytorch",
            "precision": "fp32",
            "dataset": {"n": n, "input_len": input_len, "output_len": output_len},
            "n": n,
            "decoder": {"ignore_eos": True},
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            "pytorch": {"batch_size": batch},
        }
    )


def cpu_bare_run(
    model: Any, batches: list[tuple[Any, Any]], kw: dict[str, Any]
) -> dict[str, float]:
    """A plain generate loop over pre-tokenised batches, timed with perf_counter."""
    model.generate(input_ids=batches[0][0], attention_mask=batches[0][1], **kw)  # warmup
    c0, t0 = time.process_time(), time.perf_counter()
    tokens = 0
    for ids, mask in batches:
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    duration, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "tokens_per_second": tokens / duration,
        "duration_s": duration,
        "output_tokens": tokens,
        "cpu_s_per_token": cpu / tokens,
    }


def cpu_main(args: argparse.Namespace) -> None:
    """Bare loop vs llem on CPU, interleaved; plus the cost of ``prepare`` (see the docstring)."""
    import os
    import platform

    import torch
    import transformers

    from llenergymeasure.datasets import load_prompts
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend
    from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
    from llenergymeasure.testing.energy import FakeGpuSensor

    torch.set_num_threads(args.threads)  # the same for both sides
    model_name = small_model(args.out / "small-model") if args.model == "small" else args.model
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    sensor = FakeGpuSensor(n_devices=1)
    engine = PyTorchBackend()
    orch = ExperimentOrchestrator(
        engine=engine,
        energy_backend=NvmlEnergyBackend(sensor=sensor),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=100),
        keep_engine_loaded=True,  # one loaded model for every llem run and the bare loop
    )
    # CPU time of the process (both threads: the engine's and the sampler's) while the window's
    # work runs: less disturbed than wall time by other processes on a shared machine
    executed: list[float] = []
    plain_execute = engine.execute

    def timed_execute(prepared: Any, *, on_batch: Any = None) -> Any:
        c0 = time.process_time()
        raw = plain_execute(prepared, on_batch=on_batch)
        executed.append(time.process_time() - c0)
        return raw

    engine.execute = timed_execute  # type: ignore[method-assign]
    rows: list[dict[str, Any]] = []
    load_avg: list[float] = []
    for batch, n in cases:
        config = cpu_experiment(model_name, batch, n, args.input_len, args.output_len)
        orch.energy_backend = NvmlEnergyBackend(sensor, EnergySampler(sensor, interval_ms=100))
        orch.run(config)  # loads once (first case), warms every path; not counted
        tokenizer, model = engine.tokenizer, engine._model  # the very objects llem uses
        kw = dict(engine._decoding_kwargs(config), max_new_tokens=args.output_len)
        kw["min_new_tokens"] = args.output_len
        prompts = load_prompts(config.dataset, n, tokenizer=tokenizer)
        batches = []
        for i in range(0, n, batch):
            enc = tokenizer(
                [p.text for p in prompts[i : i + batch]], padding=True, return_tensors="pt"
            )
            batches.append((enc["input_ids"], enc["attention_mask"]))
        bare: list[dict[str, float]] = []
        llem: list[dict[str, float]] = []
        for rep in range(args.reps):
            load_avg.append(os.getloadavg()[0])
            bare.append(cpu_bare_run(model, batches, kw))
            orch.energy_backend = NvmlEnergyBackend(sensor, EnergySampler(sensor, interval_ms=100))
            result = orch.run(config).result
            llem.append(
                {
                    "tokens_per_second": result.tokens_per_second,
                    "duration_s": result.duration_s,
                    "output_tokens": result.output_tokens,
                    "cpu_s_per_token": executed[-1] / result.output_tokens,
                }
            )
            print(
                f"batch {batch} rep {rep}: bare {bare[-1]['tokens_per_second']:.1f} tok/s, "
                f"llem {llem[-1]['tokens_per_second']:.1f} tok/s",
                flush=True,
            )
        ratios = [
            ll["tokens_per_second"] / b["tokens_per_second"]
            for b, ll in zip(bare, llem, strict=True)
        ]
        cpu_ratios = [
            ll["cpu_s_per_token"] / b["cpu_s_per_token"] for b, ll in zip(bare, llem, strict=True)
        ]
        rows.append(
            {
                "batch": batch,
                "n": n,
                "bare_tps": statistics.median(r["tokens_per_second"] for r in bare),
                "llem_tps": statistics.median(r["tokens_per_second"] for r in llem),
                "tps_ratio": statistics.median(ratios),
                "tps_ratio_range": (min(ratios), max(ratios)),
                "cpu_ratio": statistics.median(cpu_ratios),
                "cpu_ratio_range": (min(cpu_ratios), max(cpu_ratios)),
                "window_s": statistics.median(r["duration_s"] for r in llem),
                "bare_runs": bare,
                "llem_runs": llem,
            }
        )
    # what no longer runs inside the window: preparing (tokenise, pad, move) a large run
    big = cpu_experiment(model_name, 8, args.prepare_n, args.prepare_len, 1)
    big_prompts = load_prompts(big.dataset, args.prepare_n, tokenizer=engine.tokenizer)
    prepare_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        engine.prepare(big_prompts, big)
        prepare_s.append(time.perf_counter() - t0)
    orch.close()

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "| model | batch | prompts | bare tok/s | llem tok/s | llem/bare tok/s, paired median "
        "(min-max) | llem/bare CPU s per token, paired median (min-max) | window s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["tps_ratio_range"]
        clo, chi = r["cpu_ratio_range"]
        lines.append(
            f"| {args.model} | {r['batch']} | {r['n']} | {r['bare_tps']:.1f} | "
            f"{r['llem_tps']:.1f} | {r['tps_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{r['cpu_ratio']:.3f} ({clo:.3f}-{chi:.3f}) | {r['window_s']:.2f} |"
        )
    meta = (
        f"- CPU: {cpu}, {os.cpu_count()} cores, torch threads {args.threads}, load average "
        "during the runs "
        f"{min(load_avg):.1f}-{max(load_avg):.1f}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"- {args.input_len}-token synthetic prompts, {args.output_len} forced new tokens, fp32, "
        f"medians of {args.reps} interleaved pairs (bare, llem, bare, llem, ...)\n"
        f"- prepare (tokenise, pad, move) of {args.prepare_n} x {args.prepare_len}-token prompts, "
        f"now before the window: median {statistics.median(prepare_s) * 1000:.1f} ms "
        f"(min {min(prepare_s) * 1000:.1f}, max {max(prepare_s) * 1000:.1f}, 5 runs)\n"
        f"- Reproduce: `python benchmarks/harness_overhead.py --cpu --model {args.model} "
        f"--cases {args.cases} --reps {args.reps} --input-len {args.input_len} "
        f"--output-len {args.output_len} --threads {args.threads}`"
    )
    table = "\n".join(lines) + "\n\n" + meta + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.model.replace(":", "_").replace("/", "_")
    (args.out / f"harness_overhead_cpu_{tag}.md").write_text(table)
    (args.out / f"harness_overhead_cpu_{tag}.json").write_text(
        json.dumps({"rows": rows, "prepare_s": prepare_s, "load_avg": load_avg}, indent=2)
    )


if __name__ == "__main__":
    main()
