"""BENCHMARKS.md tables for issue 15: the engines side by side on one model and workload.

Reads any number of study directories (``--study DIR``, repeatable; a DIR may be the study
directory or the ``-o`` folder holding it) produced by ``llem run`` on one machine. Each completed
run goes to an engine (PyTorch eager, PyTorch compiled, vLLM, TensorRT-LLM) and a concurrency (the
batch size / ``max_num_seqs`` / ``max_batch_size`` the engine ran with); runs that share both
(cycles, or the same config in several studies) make one row, their mean. The script writes the
"Engines side by side (issue 15)" section of BENCHMARKS.md:

1. per engine and concurrency: runs, prompts, J/output-token raw (CV over the runs) and
   baseline-adjusted, tok/s, mean W, TTFT and ITL p50 / p99, window length, counter vs poll, and
   beside the vLLM rows ML.ENERGY's published figure (H100, vLLM 0.11);
2. side by side: J/output-token per concurrency (rows) and engine (columns), with each engine's
   ratio to PyTorch eager at the same concurrency;
3. the NVML counter vs the 100 ms power poll on the windows of 10 s or more (issue 7's 2 %);
4. with ``--bare-ratio JSON [MACHINE]`` (written by ``benchmarks/vllm_engine_checks.py
   --out``; repeatable): llem's step loop vs bare ``LLM.generate`` on one vLLM engine, median
   ratios of tok/s and J/token, headed by the machine and date (from the file where it records
   them, else ``MACHINE``).

    python benchmarks/engine_table.py --study PT_EAGER --study PT_COMPILED --study VLLM \\
        --bare-ratio VLLM_CHECKS_JSON --extra EXTRA_MD
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _markdown import add_section_options, num, num_pair, publish
from _studies import Run, flat, load_runs, machine, mean_cv
from vllm_engine_checks import pairs_table

from llenergymeasure.config.catalogue import engine_spec, run_concurrency
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.pytorch.engine_args import DEFAULT_TORCH_COMPILE
from llenergymeasure.harness.metrics import POLL_DISAGREEMENT_TIGHT_PCT, POLL_TIGHT_WINDOW_S

TITLE = "Engines side by side (issue 15)"
EAGER, COMPILED, VLLM, TENSORRT = "PyTorch eager", "PyTorch compiled", "vLLM", "TensorRT-LLM"
ENGINE_ORDER = (EAGER, COMPILED, VLLM, TENSORRT)  # others (a new backend) after these, by name
BACKEND_ENGINES = {"vllm": VLLM, "tensorrt": TENSORRT}
# ML.ENERGY's published J per output token for Llama-3.1-8B on one H100 with vLLM 0.11, by
# max_num_seqs, quoted as published (not measured here). (fidelity_tables.py, issue 7, quotes
# 0.119 at 64 as well; this table uses the four figures given for issue 15.)
ML_ENERGY_J_PER_TOKEN = {8: 0.455, 32: 0.165, 128: 0.095, 256: 0.077}


# -- classification ------------------------------------------------------------------------


def _dig(result: dict[str, Any], dotted: str) -> Any:
    """``result["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    value: Any = result
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compiled(result: dict[str, Any]) -> bool:
    """Whether a PyTorch run decoded through torch.compile: as the engine applied it (recorded in
    ``effective_parameters``), else as configured (None: the engine's default)."""
    effective = result.get("effective_parameters") or {}
    for key in ("torch_compile_applied", "torch_compile"):
        if effective.get(key) is not None:
            return bool(effective[key])
    value = (result["config"].get("pytorch") or {}).get("torch_compile")
    return DEFAULT_TORCH_COMPILE if value is None else bool(value)


def engine_of(result: dict[str, Any]) -> str:
    """The engine column of a run: PyTorch eager or compiled, vLLM, TensorRT-LLM (or the backend)."""
    backend = result["config"]["backend"]
    if backend == "pytorch":
        return COMPILED if compiled(result) else EAGER
    return BACKEND_ENGINES.get(backend, backend)


def _attributes(data: dict[str, Any]) -> Any:
    """A config dict with attribute access, as ``run_concurrency`` reads a config."""
    return json.loads(json.dumps(data), object_hook=lambda d: SimpleNamespace(**d))


def concurrency_of(result: dict[str, Any]) -> int:
    """How many requests the engine ran at once: its effective value (``batch_size``,
    ``max_num_seqs``, ``max_batch_size``), else the config's with None resolved as llem does."""
    config = result["config"]
    field = engine_spec(config["backend"]).concurrency_field
    value = (result.get("effective_parameters") or {}).get(field) if field else None
    if value is not None:
        return int(value)
    return run_concurrency(_attributes(config))


def new_tokens(result: dict[str, Any]) -> Any:
    """Most new tokens per prompt as the engine ran it: a synthetic dataset's ``output_len``
    replaces the config's ``max_new_tokens`` (``ExperimentConfig.effective_max_new_tokens``)."""
    effective = (result.get("effective_parameters") or {}).get("max_new_tokens")
    if effective is not None:
        return effective
    config = result["config"]
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and dataset.get("output_len") is not None:
        return dataset["output_len"]
    return config.get("max_new_tokens")


def gpu_of(result: dict[str, Any]) -> str | None:
    gpus = _dig(result, "environment.gpus") or [{}]
    return gpus[0].get("name") if isinstance(gpus[0], dict) else None


def workload(result: dict[str, Any]) -> dict[str, Any]:
    """What must agree for runs to stand side by side: GPU, model and workload (the prompt count
    scales with the concurrency in these studies, so it is shown, not compared)."""
    config = flat(result["config"])
    return {
        "GPU": gpu_of(result),
        "model": config.get("model"),
        "precision": config.get("precision"),
        # results written before online mode existed have no mode: they ran the default
        "mode": config.get("mode") or ExperimentConfig.model_fields["mode"].default,
        "prompts": _dig(result, "dataset.kind") or config.get("dataset"),
        "input_len": config.get("dataset.input_len"),
        "new tokens": new_tokens(result),
        "ignore_eos": config.get("decoder.ignore_eos"),
        "decoding": config.get("decoder.decoding_strategy"),
    }


def main_workload(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """The runs of the most common workload (the first seen on a tie), and the others."""
    keyed = [(json.dumps(workload(r.result), sort_keys=True), r) for r in runs]
    top = Counter(k for k, _ in keyed).most_common(1)[0][0]  # ties: the first seen
    return [r for k, r in keyed if k == top], [r for k, r in keyed if k != top]


# -- figures -------------------------------------------------------------------------------


def _engine_rank(engine: str) -> tuple[int, str]:
    return (ENGINE_ORDER.index(engine) if engine in ENGINE_ORDER else len(ENGINE_ORDER), engine)


@dataclass
class Row:
    """The runs of one engine at one concurrency and their figures (means over the runs)."""

    engine: str
    concurrency: int
    runs: list[Run]

    def values(self, dotted: str) -> list[float | None]:
        return [_dig(r.result, dotted) for r in self.runs]

    def mean(self, dotted: str, scale: float = 1.0) -> float | None:
        """Mean over the runs, or None when any run lacks the figure."""
        values = self.values(dotted)
        known = [v for v in values if v is not None]
        if not known or len(known) < len(values):
            return None
        return statistics.fmean(known) * scale

    @property
    def j_per_token(self) -> float | None:
        return self.mean("energy_per_output_token_j")

    @property
    def j_per_token_cv(self) -> float | None:
        values = self.values("energy_per_output_token_j")
        if len(values) < 2 or any(v is None for v in values):
            return None
        return mean_cv([v for v in values if v is not None])[1]

    @property
    def counter_vs_poll(self) -> list[float]:
        return [v for v in self.values("energy.counter_vs_poll_diff_pct") if v is not None]

    @property
    def ml_energy(self) -> float | None:
        return ML_ENERGY_J_PER_TOKEN.get(self.concurrency) if self.engine == VLLM else None


def rows_of(runs: Sequence[Run]) -> list[Row]:
    """Runs grouped by engine and concurrency, ordered by engine then concurrency."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((engine_of(run.result), concurrency_of(run.result)), []).append(run)
    keys = sorted(groups, key=lambda k: (_engine_rank(k[0]), k[1]))
    return [Row(engine, concurrency, groups[engine, concurrency]) for engine, concurrency in keys]


# -- rendering -----------------------------------------------------------------------------


def _pct_range(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:+.2f} %" if lo == hi else f"{lo:+.2f} to {hi:+.2f} %"


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


MAIN_HEADER = (
    "| engine | concurrency | runs | prompts | J/output-token raw (CV) | J/output-token adjusted "
    "| tok/s | mean W | TTFT p50 / p99 ms | ITL p50 / p99 ms | window s | counter vs poll "
    "| ML.ENERGY (published) J/token |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main_table(rows: Sequence[Row]) -> str:
    lines = [MAIN_HEADER]
    for row in rows:
        prompts = sorted({r.result.get("n_requests") for r in row.runs}, key=str)
        cv = row.j_per_token_cv
        raw = num(row.j_per_token, ".4f") + (f" ({cv * 100:.1f} %)" if cv is not None else "")
        lines.append(
            f"| {row.engine} | {row.concurrency} | {len(row.runs)} | "
            f"{' / '.join(str(p) for p in prompts)} | {raw} | "
            f"{num(row.mean('energy_per_output_token_adjusted_j'), '.4f')} | "
            f"{num(row.mean('tokens_per_second'), '.0f')} | {num(row.mean('mean_power_w'), '.0f')} | "
            f"{num_pair(row.mean('ttft.p50', 1e3), row.mean('ttft.p99', 1e3), '.1f')} | "
            f"{num_pair(row.mean('itl.p50', 1e3), row.mean('itl.p99', 1e3), '.2f')} | "
            f"{num(row.mean('duration_s'), '.1f')} | {_pct_range(row.counter_vs_poll)} | "
            f"{num(row.ml_energy, '.3f') if row.ml_energy is not None else ''} |"
        )
    return "\n".join(lines)


def side_by_side(rows: Sequence[Row]) -> str:
    """J/output-token raw: concurrency down, engines across, each with its ratio to eager."""
    engines = sorted({r.engine for r in rows}, key=_engine_rank)
    by_key = {(r.engine, r.concurrency): r for r in rows}
    concurrencies = sorted({r.concurrency for r in rows})
    show_ml = any(c in ML_ENERGY_J_PER_TOKEN for c in concurrencies)
    head = ["concurrency", *engines] + (["ML.ENERGY vLLM (H100, published)"] if show_ml else [])
    lines = ["| " + " | ".join(head) + " |", "|---:" + "|---:" * (len(head) - 1) + "|"]
    for c in concurrencies:
        eager = by_key.get((EAGER, c))
        eager_j = eager.j_per_token if eager is not None else None
        cells = [str(c)]
        for engine in engines:
            row = by_key.get((engine, c))
            if row is None:
                cells.append("not run")
                continue
            cell = num(row.j_per_token, ".4f")
            if engine != EAGER and eager_j and row.j_per_token is not None:
                cell += f" ({row.j_per_token / eager_j:.2f}x)"
            cells.append(cell)
        if show_ml:
            ml = ML_ENERGY_J_PER_TOKEN.get(c)
            cells.append(num(ml, ".3f") if ml is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "J per output token, raw (mean over the runs); in brackets: the ratio to PyTorch eager "
        "at the same concurrency (below 1x: fewer joules per token than eager)."
    )
    if not any(r.engine == EAGER for r in rows):
        note += " No PyTorch eager run among the inputs, so no ratios."
    return "\n".join(lines) + "\n\n" + note


def counter_poll_line(runs: Sequence[Run]) -> str:
    """Issue 7's criterion, counter vs poll within 2 % on windows of 10 s or more, over the runs."""

    def gap(run: Run) -> float | None:
        return _dig(run.result, "energy.counter_vs_poll_diff_pct")

    checked = [r for r in runs if gap(r) is not None]
    long = [r for r in checked if r.result["duration_s"] >= POLL_TIGHT_WINDOW_S]
    short = [r for r in checked if r.result["duration_s"] < POLL_TIGHT_WINDOW_S]
    head = (
        f"Counter vs poll ((poll - counter) / counter; criterion: within "
        f"{POLL_DISAGREEMENT_TIGHT_PCT:g} % on windows of {POLL_TIGHT_WINDOW_S:g} s or more): "
    )
    parts = []
    if long:
        within = [r for r in long if abs(gap(r) or 0.0) <= POLL_DISAGREEMENT_TIGHT_PCT]
        worst = max(long, key=lambda r: abs(gap(r) or 0.0))
        parts.append(
            f"**{len(within)} of {len(long)} runs within** (largest gap {gap(worst):+.2f} %, "
            f"{worst.study}/{worst.run_id}, {engine_of(worst.result)} "
            f"{concurrency_of(worst.result)})."
        )
        outside = [r for r in long if r not in within]
        if outside:
            parts.append(
                "Outside: "
                + "; ".join(
                    f"{r.study}/{r.run_id} ({engine_of(r.result)} {concurrency_of(r.result)}) "
                    f"{gap(r):+.2f} %"
                    for r in outside
                )
                + "."
            )
    else:
        parts.append(f"no run had a window of {POLL_TIGHT_WINDOW_S:g} s or more.")
    if short:
        windows = [r.result["duration_s"] for r in short]
        gaps = [g for r in short if (g := gap(r)) is not None]
        parts.append(
            f"Not held to it: {_runs(len(short))} with shorter windows "
            f"({min(windows):.1f}-{max(windows):.1f} s; gaps {_pct_range(gaps)})."
        )
    missing = len(runs) - len(checked)
    if missing:
        parts.append(f"No cross-check (no counter or no poll): {_runs(missing)}.")
    return head + " ".join(parts)


def _distinct(values: Iterable[Any]) -> list[Any]:
    """The values in order of first appearance, each once."""
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def workload_line(kept: Sequence[Run], left_out: Sequence[Run]) -> str:
    """The GPU, model and workload of the tabulated runs, and the runs left out for another
    (named one by one, or counted per study and difference)."""
    ours = workload(kept[0].result)
    line = "GPU, model and workload: " + ", ".join(f"{k} {v}" for k, v in ours.items()) + "."
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in left_out:
        theirs = workload(run.result)
        diff = ", ".join(f"{k} {theirs[k]}" for k in ours if theirs[k] != ours[k])
        groups.setdefault((run.study, diff), []).append(run)
    named = [
        f"{runs[0].study}/{runs[0].run_id} ({diff})"
        if len(runs) == 1
        else f"{study}: {_runs(len(runs))} ({diff})"
        for (study, diff), runs in groups.items()
    ]
    if named:
        line += f" **Left out, another GPU, model or workload:** {'; '.join(named)}."
    return line


def software_line(rows: Sequence[Row]) -> str:
    parts = []
    for engine in sorted({r.engine for r in rows}, key=_engine_rank):
        runs = [run for r in rows if r.engine == engine for run in r.runs]

        def version(run: Run) -> str:
            # engine_version is the version of the engine's distribution (transformers for
            # the pytorch engine)
            e = run.result.get("effective_parameters") or {}
            package = engine_spec(run.config["backend"]).distribution
            torch = f", torch {e['torch_version']}" if e.get("torch_version") else ""
            return f"{package} {e.get('engine_version') or '(version not recorded)'}{torch}"

        parts.append(f"{engine}: {' / '.join(_distinct(version(r) for r in runs))}")
    return "Software: " + "; ".join(parts) + "."


def notes_line(runs: Sequence[Run]) -> str:
    reused = sum(1 for r in runs if r.result.get("engine_reused"))
    warnings = Counter(w for r in runs for w in r.result.get("measurement_warnings") or [])
    text = f"{reused} of {len(runs)} runs ran on an engine loaded by an earlier run of their study."
    if warnings:
        text += " Measurement warnings: " + ", ".join(
            f"`{w}` ({_runs(n)})" for w, n in sorted(warnings.items())
        )
        text += "."
    return text


def caveat(runs: Sequence[Run]) -> str:
    """ML.ENERGY's figures against ours: different GPU, software and workload."""
    ours = workload(runs[0].result)  # the same for all (main_workload)
    length = f"{ours['input_len']}-token " if ours["input_len"] is not None else ""
    forced = "forced " if ours["ignore_eos"] else ""
    return (
        "**ML.ENERGY (published)** is their figure for Llama-3.1-8B on one NVIDIA H100 with vLLM "
        "0.11, on their own dataset and workload, quoted as published (not measured here); it "
        f"exists for max_num_seqs {' / '.join(str(c) for c in ML_ENERGY_J_PER_TOKEN)}. Ours: "
        f"{ours['GPU'] or 'unknown GPU'}, a random-weight Llama-3.1-8B-shaped "
        f"model, {length}{ours['prompts']} prompts, {ours['new tokens']} {forced}new tokens. "
        "Different GPU, vLLM version and workload: "
        "**compare the trends across concurrency, not the absolute values.**"
    )


READING = """### Reading these tables

- Engine: PyTorch with `torch_compile` as the engine applied it (eager otherwise), vLLM,
  TensorRT-LLM. Concurrency: PyTorch `batch_size`, vLLM `max_num_seqs`, TensorRT-LLM
  `max_batch_size`, as the engine ran with it (`effective_parameters`; None resolved as llem
  does). Runs with the same engine and concurrency (cycles, or several studies) form one row:
  means over the runs; CV = standard deviation / mean of J/output-token over them.
- Only runs on one GPU, model and workload stand side by side: those of the most common
  combination among the inputs; the others are left out and named above the tables.
- J/output-token raw = GPU energy of the measurement window / output tokens; adjusted = minus the
  idle baseline power x window. TTFT and ITL: the mean over the runs of each run's percentile.
- Counter vs poll: (energy from 100 ms power polling - NVML energy counter) / counter, per run;
  a range where a row has several runs."""


def bare_ratio_machine(out: dict[str, Any], label: str | None) -> str:
    """The machine (and date) of a ``vllm_engine_checks.py`` output: from the file where it
    records them, else ``label`` (given with ``--bare-ratio``), else "machine not recorded"."""
    if "environment" in out:
        when = str(out.get("measured_at_utc") or "")[:10]
        return machine([out]) + (f"; {when}" if when else "")
    return label or "machine not recorded"


def bare_ratio_block(path: Path, label: str | None = None) -> str:
    """llem's step loop vs bare ``LLM.generate`` from ``vllm_engine_checks.py``'s JSON."""
    out = json.loads(path.read_text())
    windows = [p[side]["seconds"] for p in out["pairs"] for side in ("llem", "bare")]
    return (
        f"### llem vs bare vLLM ({bare_ratio_machine(out, label)})\n\n"
        f"`benchmarks/vllm_engine_checks.py` (`{path}`): one loaded vLLM engine, "
        f"max_num_seqs {out.get('max_num_seqs', '?')}, {out.get('n', '?')} prompts; llem's "
        "step-driven `generate` (per-token timestamps) and a bare `LLM.generate` of the same "
        f"prompts, interleaved in {len(out['pairs'])} pairs, each after a prefix-cache reset "
        f"({min(windows):.1f}-{max(windows):.1f} s windows): **median llem / bare tok/s "
        f"{out['median_llem_over_bare_tokens_per_s']:.3f}, J/output-token "
        f"{out['median_llem_over_bare_j_per_token']:.3f}**.\n\n" + pairs_table(out)
    )


def build_body(
    study_dirs: Sequence[Path],
    bare_ratios: Sequence[tuple[Path, str | None]] = (),
    extra: Path | None = None,
) -> str:
    every = [r for d in study_dirs for r in load_runs(d)]
    if not every:
        raise SystemExit("no completed run in the --study directories")
    runs, left_out = main_workload(every)
    rows = rows_of(runs)
    sources = ", ".join(f"`{d}`" for d in study_dirs)
    parts = [
        f"### J per output token by engine and concurrency ({machine(r.result for r in runs)})",
        main_table(rows),
        caveat(runs),
        f"From {sources}: {len(every)} completed runs. " + workload_line(runs, left_out),
        software_line(rows) + " " + notes_line(runs),
        counter_poll_line(runs),
        "### Side by side",
        side_by_side(rows),
    ]
    parts += [bare_ratio_block(path, label) for path, label in bare_ratios]
    parts.append(READING)
    if extra is not None and extra.is_file():
        parts.append(extra.read_text().strip())
    return "\n\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--study",
        action="append",
        type=Path,
        required=True,
        metavar="DIR",
        help="a study directory (or the -o folder holding it); repeat for more",
    )
    parser.add_argument(
        "--bare-ratio",
        nargs="+",
        action="append",
        default=[],
        metavar=("JSON", "MACHINE"),
        help="vllm_engine_checks.py's output: llem vs bare vLLM pairs, with the machine and date "
        "where the file does not record them; repeat for more",
    )
    add_section_options(parser)
    args = parser.parse_args(argv)
    for values in args.bare_ratio:
        if len(values) > 2:
            parser.error(f"--bare-ratio takes JSON [MACHINE], got {len(values)} values")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    bare = [(Path(v[0]), v[1] if len(v) > 1 else None) for v in args.bare_ratio]
    body = build_body(args.study, bare, args.extra)
    publish(body, TITLE, args.no_write)


if __name__ == "__main__":
    main()
