"""Data-parallel check on a multi-GPU machine: ``pytorch.num_processes`` N, energy per device.

Runs one experiment through the real path (``harness.measure.measure`` -> ``default_components`` ->
``DataParallelEngine`` + an NVML sensor over exactly the N GPUs in use), then prints each
device's energy next to the process that ran on it, and checks that:

- the energy window covered exactly N devices, in process order (UUIDs match);
- every device drew energy (> 0 J) and the total is their sum;
- the processes together ran every prompt, in contiguous shards, and started together;
- with ``--compare-single``, the one-process run measured one GPU only.

    python benchmarks/data_parallel_check.py                       # builtin:tiny, 2 GPUs
    python benchmarks/make_llama8b_shaped.py --out .devout/llama8b
    python benchmarks/data_parallel_check.py --model .devout/llama8b --n 64 --output-len 128
    CUDA_VISIBLE_DEVICES=1,0 python benchmarks/data_parallel_check.py   # order follows CUDA

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def build_config(args: argparse.Namespace, num_processes: int) -> Any:
    from llenergymeasure.config.models import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "model": args.model,
            "backend": "pytorch",
            "precision": args.precision,
            "dataset": {"n": args.n, "input_len": args.input_len, "output_len": args.output_len},
            "n": args.n,
            "decoder": {"ignore_eos": True},
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": args.thermal_floor},
            "baseline": {"duration_seconds": args.baseline},
            "pytorch": {
                "batch_size": args.batch_size,
                "torch_compile": True if args.torch_compile else None,
                "num_processes": num_processes if num_processes > 1 else None,
            },
        }
    )


def report(result: Any) -> list[str]:
    """Print per-device energy and per-process results; return failed checks."""
    energy = result.energy
    procs = result.process_results
    print(f"\nmodel {result.config.model}  precision {result.config.precision}")
    print(f"energy backend {energy.backend} ({energy.method}), window {result.duration_s:.2f} s")
    print(f"{'dev':>4} {'uuid':<42} {'energy J':>10} {'counter J':>10} {'poll J':>10}")
    for d in energy.per_device:
        print(
            f"{d.device_index:>4} {d.device_uuid or '?':<42} {_f(d.energy_j):>10} "
            f"{_f(d.counter_energy_j):>10} {_f(d.poll_energy_j):>10}"
        )
    print(
        f"total {_f(result.energy_total_j)} J, adjusted {_f(result.energy_adjusted_j)} J, "
        f"{_f(result.energy_per_output_token_j, 4)} J/token, "
        f"{result.tokens_per_second:.1f} tokens/s"
    )
    if procs:
        print(
            f"\n{'proc':>4} {'device':<8} {'prompts':>8} {'range':>10} {'out tok':>8} "
            f"{'dur s':>7} {'tok/s':>8} {'start +s':>8}"
        )
        for p in procs:
            span = f"{p['first_prompt_index']}-{p['last_prompt_index']}"
            print(
                f"{p['process_index']:>4} {p['device']:<8} {p['n_prompts']:>8} {span:>10} "
                f"{p['output_tokens']:>8} {p['duration_s']:>7.2f} {p['tokens_per_second']:>8.1f} "
                f"{p['start_offset_s']:>8.3f}"
            )
    print(
        f"latency mean {_f(result.latency.mean, 3)} s p50 {_f(result.latency.p50, 3)} s "
        f"p99 {_f(result.latency.p99, 3)} s over {result.latency.n} requests"
    )
    print("warnings:", ", ".join(result.measurement_warnings) or "none")
    if result.timing.compile_s is not None:
        print(
            f"compile_s {result.timing.compile_s:.2f} (warmup latencies "
            f"{[round(x, 2) for x in result.warmup.latencies_s]})"
        )

    failed: list[str] = []
    n_proc = result.effective_parameters.get("num_processes", 1)
    if n_proc > 1:
        if len(energy.per_device) != n_proc:
            failed.append(f"{len(energy.per_device)} devices measured for {n_proc} processes")
        if [d.device_uuid for d in energy.per_device] != [p["device_uuid"] for p in procs]:
            failed.append("measured devices do not match the processes' devices (by UUID)")
        if sum(p["n_prompts"] for p in procs) != result.n_requests:
            failed.append("processes did not run every prompt")
        if max(p["start_offset_s"] for p in procs) > 0.5:
            failed.append("processes did not start generating together (> 0.5 s apart)")
    elif len(energy.per_device) != 1:
        failed.append(f"single process, but {len(energy.per_device)} devices measured")
    if not all((d.energy_j or 0) > 0 for d in energy.per_device):
        failed.append("a device reported no energy")
    parts = [d.energy_j or 0.0 for d in energy.per_device]
    if result.energy_total_j is None or not math.isclose(result.energy_total_j, sum(parts)):
        failed.append("total energy is not the sum of the devices")
    return failed


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--baseline", type=float, default=5.0, help="idle baseline seconds")
    parser.add_argument("--thermal-floor", type=float, default=0.0)
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--compare-single", action="store_true", help="also run 1 process")
    parser.add_argument("--out", type=Path, default=None, help="folder for result JSON files")
    args = parser.parse_args()

    from llenergymeasure.harness.measure import measure

    failed: list[str] = []
    runs = [args.num_processes] + ([1] if args.compare_single else [])
    for n_proc in runs:
        print(f"\n=== num_processes = {n_proc} ===", flush=True)
        measured = measure(build_config(args, n_proc), progress=lambda m: print("  " + m))
        result = measured.result
        failed += [f"num_processes={n_proc}: {f}" for f in report(result)]
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"data_parallel_{n_proc}.json"
            path.write_text(result.to_json())
            summary = {
                "num_processes": n_proc,
                "per_device_j": [d.energy_j for d in result.energy.per_device],
                "total_j": result.energy_total_j,
                "tokens_per_second": result.tokens_per_second,
            }
            print(json.dumps(summary))
    print("\nchecks:", "all passed" if not failed else "FAILED")
    for f in failed:
        print("  -", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
