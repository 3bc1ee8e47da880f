"""Where does eager decode's run-to-run spread come from? Bare ``generate`` loops, interleaved.

Issue 7 found tokens/s of one eager config moving 5-13 % between cycles, with the bare loop
just as noisy. This script runs the same bare eager loop (one loaded model, one process) under
variants that remove one suspected host-side cause each, interleaved round by round:

- ``default``: as llem runs it;
- ``gc_off``: Python's cyclic GC collected, frozen and disabled for the window;
- ``pinned``: process pinned to one CPU core, torch intra-op threads 1;
- ``compiled``: transformers' static-cache compiled decode (CUDA graphs, little host work).

Prints a table (median, min, max, CV of tokens/s per variant; mean SM clock and power) and
writes ``decode_noise.json`` under ``--out``. Run on the GPU machine:

    python benchmarks/decode_noise.py --model .devout/llama8b --out .devout/noise
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def _clock_watch(stop: threading.Event, out: list[tuple[float, float]]) -> None:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.wait(0.1):
        out.append(
            (
                float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            )
        )


def run_once(model: Any, ids: Any, mask: Any, new: int, variant: str) -> dict[str, float]:
    import torch

    kw: dict[str, Any] = dict(
        max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
    )
    if variant == "compiled":
        kw["cache_implementation"] = "static"
    else:
        kw["disable_compile"] = True
    cpus = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    if variant == "pinned":
        os.sched_setaffinity(0, {min(cpus)})
        torch.set_num_threads(1)
    if variant == "gc_off":
        gc.collect()
        gc.freeze()
        gc.disable()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_clock_watch, args=(stop, samples), daemon=True)
    watcher.start()
    try:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    finally:
        stop.set()
        watcher.join()
        if variant == "gc_off":
            gc.enable()
            gc.unfreeze()
        if variant == "pinned":
            os.sched_setaffinity(0, cpus)
            torch.set_num_threads(threads)
    return {
        "tokens_per_s": ids.shape[0] * new / dt,
        "sm_clock_mhz": statistics.fmean(c for c, _ in samples) if samples else float("nan"),
        "power_w": statistics.fmean(p for _, p in samples) if samples else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--variants", default="default,gc_off,pinned,compiled")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16, device_map="cuda"
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 30000, (args.batch, args.input_len), generator=g).cuda()
    mask = torch.ones_like(ids)
    variants = args.variants.split(",")
    for v in variants:  # warm each path (compile, cuBLAS handles) outside the rounds
        run_once(model, ids, mask, args.new, v)
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            rows[v].append(run_once(model, ids, mask, args.new, v))

    lines = [
        "| variant | runs | tok/s median | min | max | CV tok/s | mean SM MHz | mean W |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v, rs in rows.items():
        tps = [r["tokens_per_s"] for r in rs]
        cv = statistics.stdev(tps) / statistics.fmean(tps) * 100 if len(tps) > 1 else 0.0
        lines.append(
            f"| {v} | {len(tps)} | {statistics.median(tps):.1f} | {min(tps):.1f} | "
            f"{max(tps):.1f} | {cv:.1f} % | "
            f"{statistics.fmean(r['sm_clock_mhz'] for r in rs):.0f} | "
            f"{statistics.fmean(r['power_w'] for r in rs):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_noise.json").write_text(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(0),
                "batch": args.batch,
                "input_len": args.input_len,
                "new_tokens": args.new,
                "cpus": len(os.sched_getaffinity(0)),
                "runs": rows,
                "table": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
