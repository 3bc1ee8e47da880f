"""BENCHMARKS.md section for issue 20: the energy of a live server (``vllm serve``) under load.

Reads the output of ``benchmarks/online_vllm_rates.py`` (``--online DIR``: one
``DIR/rate-<r>/result.json`` per request rate, an ``OnlineRunResult``; an ``ExperimentResult``
with ``.online``, as ``llem run`` writes it, is read too) and the offline run of the same prompts
(``--offline STUDY_DIR``: the study of ``benchmarks/configs/online_offline_reference.yaml``, stage
``vllm_online`` of ``benchmarks/run_gpu_studies.sh``). It writes the "Energy of a live server
(issue 20)" section of BENCHMARKS.md:

1. the energy-vs-load curve, one row per rate (``inf`` last): ``report.online_curve``'s table
   (J/request, J/token raw and adjusted, mean W, TTFT/ITL p50/p99, goodput), with how many
   completed requests of each rate have latencies;
2. the ``inf`` point (every request sent at once) against the offline run of the same prompts:
   J/output-token raw and adjusted, tok/s, mean W, window, and the ratio online / offline.

    python benchmarks/online_tables.py --online .devout/studies/online \\
        --offline .devout/studies/vllm_offline_ref --extra EXTRA_MD
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _markdown import add_section_options, num, publish
from _studies import Run, load_runs, machine

from llenergymeasure.online.run_result import OnlineRunResult
from llenergymeasure.report.online_curve import online_curve_markdown, online_curve_points
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.online import OnlineResult

TITLE = "Energy of a live server (issue 20)"


# -- loading -------------------------------------------------------------------------------


@dataclass
class OnlineRun:
    """One rate of the sweep: its result file, what it measured, and its machine where known."""

    path: Path
    online: OnlineResult
    machine: str | None  # "GPU, driver D"; None when the result names no GPU
    counter_vs_poll_pct: float | None = None  # (poll - counter) / counter; None: not polled

    @property
    def rate(self) -> float:
        """The target request rate, ``math.inf`` for "inf"."""
        rate = self.online.request_rate
        return math.inf if rate == "inf" else float(rate)


def _rate_of_dir(directory: Path) -> float:
    """``rate-16`` -> 16.0, ``rate-inf`` -> inf (anything else after the inf point)."""
    try:
        return float(directory.name.removeprefix("rate-"))
    except ValueError:
        return math.inf


def load_online_run(path: Path) -> OnlineRun:
    """A rate's ``result.json``: an ``ExperimentResult`` with ``.online`` or an
    ``OnlineRunResult`` (``online_vllm_rates.py``; no environment, the GPU from its energy)."""
    data = json.loads(path.read_text())
    if "online" in data:
        result = ExperimentResult.from_json(path)
        if result.online is None:
            raise SystemExit(f"{path}: an offline result (no online part)")
        gap = result.energy.counter_vs_poll_diff_pct if result.energy is not None else None
        return OnlineRun(path, result.online, machine([data]), gap)
    run = OnlineRunResult.model_validate(data)
    devices = run.energy.devices if run.energy is not None else []
    names = list(dict.fromkeys(d.device_name for d in devices if d.device_name))
    gpu = f"{' + '.join(names)}, driver not recorded" if names else None
    gap = run.energy.counter_vs_poll_diff_pct if run.energy is not None else None
    return OnlineRun(path, run.summary(), gpu, gap)


def load_online(directory: Path) -> list[OnlineRun]:
    """Every ``directory/rate-*/result.json``, by request rate (numeric, ``inf`` last)."""
    paths = sorted(directory.glob("rate-*/result.json"), key=lambda p: _rate_of_dir(p.parent))
    runs = [load_online_run(p) for p in paths]
    return sorted(runs, key=lambda r: r.rate)  # the recorded rate wins over the folder name


# -- the inf point against the offline run -------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What the inf-vs-offline table compares (None: not measured)."""

    j_per_token: float | None
    j_per_token_adjusted: float | None
    tokens_per_s: float | None
    mean_power_w: float | None
    window_s: float | None


FIGURES = (
    ("J/output-token raw", "j_per_token", ".4f"),
    ("J/output-token adjusted", "j_per_token_adjusted", ".4f"),
    ("tok/s", "tokens_per_s", ".0f"),
    ("mean W", "mean_power_w", ".0f"),
    ("window s", "window_s", ".1f"),
)


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values, or None when any is missing."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def online_figures(runs: Sequence[OnlineRun]) -> Figures | None:
    """The inf point's figures (the mean where several runs are at inf); None without one."""
    at_inf = [r.online.metrics for r in runs if math.isinf(r.rate)]
    if not at_inf:
        return None
    return Figures(
        _mean([m.energy_per_output_token_j for m in at_inf]),
        _mean([m.adjusted_energy_per_output_token_j for m in at_inf]),
        _mean([m.output_throughput_tok_per_s for m in at_inf]),
        _mean([m.mean_power_w for m in at_inf]),
        _mean([m.duration_s for m in at_inf]),
    )


def offline_figures(runs: Sequence[Run]) -> Figures | None:
    """The offline run's figures (the mean over its cycles); None without a completed run."""
    if not runs:
        return None

    def mean(key: str) -> float | None:
        return _mean([r.result.get(key) for r in runs])

    return Figures(
        mean("energy_per_output_token_j"),
        mean("energy_per_output_token_adjusted_j"),
        mean("tokens_per_second"),
        mean("mean_power_w"),
        mean("duration_s"),
    )


INF_HEADER = (
    "| figure | online, request_rate inf | offline (llem run, same prompts) | online / offline |\n"
    "|---|---:|---:|---:|"
)


def inf_vs_offline(online: Figures | None, offline: Figures | None) -> str:
    """The table of the inf point against the offline run, or one line saying what is missing."""
    missing = [
        side
        for side, figures in (
            ("no online run at request_rate inf", online),
            ("no completed offline reference run", offline),
        )
        if figures is None
    ]
    if online is None or offline is None:
        return f"No inf-vs-offline comparison: {'; '.join(missing)}."
    lines = [INF_HEADER]
    for label, field, spec in FIGURES:
        a, b = getattr(online, field), getattr(offline, field)
        ratio = a / b if a is not None and b else None
        lines.append(f"| {label} | {num(a, spec)} | {num(b, spec)} | {num(ratio, '.3f')} |")
    return "\n".join(lines)


# -- the section ---------------------------------------------------------------------------


def counter_vs_poll_line(runs: Sequence[OnlineRun]) -> str:
    """Each rate's NVML counter vs 100 ms power poll, with its window (issue 7's check)."""
    polled = [r for r in runs if r.counter_vs_poll_pct is not None]
    if not polled:
        return "Counter vs poll: not measured (the sweep metered with the energy counter only)."
    cells = ", ".join(
        f"{_rate_label(r.rate)}: {r.counter_vs_poll_pct:+.2f} % ({r.online.metrics.duration_s:.1f} s)"
        for r in polled
    )
    missing = len(runs) - len(polled)
    tail = f"; {missing} rate(s) not polled" if missing else ""
    return (
        "Counter vs poll ((poll - counter) / counter, per request rate, with the window; "
        f"criterion: within 2 % on windows of 10 s or more): {cells}{tail}."
    )


def latency_coverage_line(runs: Sequence[OnlineRun]) -> str:
    """How many completed requests of each rate have a TTFT (and so their ITL gaps)."""
    cells, complete = [], True
    for r in runs:
        m = r.online.metrics
        timed = m.ttft.count if m.ttft is not None else 0
        complete = complete and timed == m.n_ok
        cells.append(f"{_rate_label(r.rate)}: {timed} of {m.n_ok}")
    verdict = (
        "every completed request at every rate"
        if complete
        else "**not every completed request** (the table marks those rates `(k of n)`)"
    )
    return (
        "Latency coverage (completed requests with a first-token time; ITL from their gaps "
        f"between streamed chunks): {verdict} ({', '.join(cells)})."
    )


def _rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g} req/s"


def machine_line(online: Sequence[OnlineRun], offline: Sequence[Run]) -> str:
    """The GPU and driver of the online runs and of the offline reference."""
    gpus = list(dict.fromkeys(r.machine for r in online if r.machine))
    parts = [f"online: {'; '.join(gpus) or 'not recorded'}"]
    if offline:
        parts.append(f"offline reference: {machine(r.result for r in offline)}")
    return "Machine: " + "; ".join(parts) + "."


def _offline_runs(path: Path | None) -> list[Run]:
    """The offline study's completed runs; none when it is not there (said in the section)."""
    if path is None or not path.exists():
        return []
    return load_runs(path)


def build_body(online_dir: Path, offline_dir: Path | None, extra: Path | None = None) -> str:
    online = load_online(online_dir)
    if not online:
        raise SystemExit(f"{online_dir}: no rate-*/result.json in it")
    offline = _offline_runs(offline_dir)
    parts = [
        f"### J per request and latency by request rate (`{online_dir}`)",
        online_curve_markdown(online_curve_points([r.online for r in online])).strip(),
        latency_coverage_line(online),
        counter_vs_poll_line(online),
        machine_line(online, offline),
        "### All requests at once vs the offline run of the same prompts",
        inf_vs_offline(online_figures(online), offline_figures(offline)),
    ]
    if offline:
        parts.append(f"Offline reference: `{offline_dir}`, {len(offline)} completed run(s).")
    if extra is not None and extra.is_file():
        parts.append(extra.read_text().strip())
    return "\n\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--online",
        type=Path,
        required=True,
        metavar="DIR",
        help="online_vllm_rates.py's --out folder (rate-*/result.json)",
    )
    parser.add_argument(
        "--offline",
        type=Path,
        metavar="STUDY_DIR",
        help="the offline reference study (or the -o folder holding it)",
    )
    add_section_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    body = build_body(args.online, args.offline, args.extra)
    publish(body, TITLE, args.no_write)


if __name__ == "__main__":
    main()
