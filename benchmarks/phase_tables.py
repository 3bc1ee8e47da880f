"""BENCHMARKS.md tables for where the joules go (issue 16): prefill vs decode energy.

Reads study directories produced on one GPU machine by ``llem run <study.yaml> -o DIR``, in
groups, one per engine, and writes the "Where the joules go (issue 16)" section of BENCHMARKS.md:

1. every completed run of the ``--split`` studies that measured the differential split
   (``measurement.phase_split``): prefill and decode energy raw and baseline-adjusted, J per
   input token (prefill) and per decode token, prefill share, the time-resolved split of the same
   window (``energy_attribution``) and its ratio to the differential prefill figure, with the
   issue's agreement criterion (within 10 %) per run and on the mean;
2. the prediction check: the ``--long`` study's run (same config, twice the new tokens) measured
   vs prefill + 2 x decode of those runs (mean), raw and baseline-adjusted (issue: within 5 %);
3. the machine (GPU, driver) from the results' environment.

A DIR may be the study directory itself (holding ``study_manifest.json``) or the ``-o`` folder
that holds it (the latest ``<name>_<timestamp>/`` inside is taken).

    python benchmarks/phase_tables.py \\
        --engine "PyTorch compiled, batch 8" --split PT_REUSE PT_FRESH --long PT_256 \\
        --engine "vLLM 0.26, max_num_seqs 64" --split VLLM_REUSE VLLM_FRESH --long VLLM_256
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _markdown import add_section_options, num, num_pair, publish
from _studies import Run, flat, load_runs, machine

# the library's rule: results written before llem refused sliver timelines hold a split that is
# not one
from llenergymeasure.phase_split.attribution import MIN_STEP_S

TITLE = "Where the joules go (issue 16)"
AGREE_TOLERANCE = 0.10  # time-resolved vs differential prefill energy (the issue's criterion)
PREDICT_TOLERANCE = 0.05  # 2x-output run vs prefill + 2 x decode (the issue's criterion)
# config fields a longer-output run may change and still be "the same config"
LENGTH_FIELDS = frozenset({"max_new_tokens", "dataset.output_len", "measurement.phase_split"})


# -- loading -------------------------------------------------------------------------------


def asked_for_split(run: Run) -> bool:
    """The run measured (or tried to measure) the differential split."""
    measurement = run.config.get("measurement") or {}
    return bool(measurement.get("phase_split")) or run.split is not None


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str]) -> list[str]:
    """Flattened config fields whose values differ between ``a`` and ``b`` (``ignore`` aside)."""
    fa, fb = flat(a), flat(b)
    keys = sorted((set(fa) | set(fb)) - ignore)
    return [k for k in keys if json.dumps(fa.get(k)) != json.dumps(fb.get(k))]


def group_by_config(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs grouped by their full config, in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.config, sort_keys=True), []).append(run)
    return list(groups.values())


# -- figures -------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if len(known) == len(values) and known else None


def within(ratio: float | None, tolerance: float) -> bool | None:
    return None if ratio is None else abs(ratio - 1.0) <= tolerance


@dataclass
class SplitRow:
    """The figures of one run's table row (None: not measured)."""

    run: Run
    window_s: float | None
    prefill_window_s: float | None
    total_j: float | None
    prefill_j: float | None
    prefill_adjusted_j: float | None
    decode_j: float | None
    decode_adjusted_j: float | None
    j_per_input_token: float | None
    j_per_input_token_adjusted: float | None
    j_per_decode_token: float | None
    j_per_decode_token_adjusted: float | None
    share_prefill: float | None
    share_prefill_adjusted: float | None
    tr_prefill_j: float | None
    tr_decode_j: float | None
    confidence: str | None
    missing: str | None  # why there is no differential split
    tr_missing: str | None = None  # why there is no time-resolved split

    @property
    def ratio(self) -> float | None:
        """Time-resolved prefill J / differential prefill J."""
        if self.tr_prefill_j is None or not self.prefill_j:
            return None
        return self.tr_prefill_j / self.prefill_j

    @property
    def agrees(self) -> bool | None:
        return within(self.ratio, AGREE_TOLERANCE)


def split_row(run: Run) -> SplitRow:
    s, a, r = run.split or {}, run.attribution or {}, run.result
    missing = None
    if run.split is None:
        missing = r.get("phase_split_unavailable") or "no phase_split in the result"
    tr_missing = r.get("energy_attribution_unavailable")
    step = a.get("median_step_s")
    if step is not None and a.get("n_steps", 0) > 1 and step < MIN_STEP_S:
        tr_missing = (
            f"median step {step * 1e6:.2f} us: the tokens of one engine step carried different "
            "times, so the split is not over steps (refused by llem since)"
        )
        a = {}
    return SplitRow(
        run=run,
        window_s=s.get("duration_total_s", r.get("duration_s")),
        prefill_window_s=s.get("duration_prefill_s"),
        total_j=s.get("energy_total_j", r.get("energy_total_j")),
        prefill_j=s.get("energy_prefill_j"),
        prefill_adjusted_j=s.get("energy_prefill_adjusted_j"),
        decode_j=s.get("energy_decode_j"),
        decode_adjusted_j=s.get("energy_decode_adjusted_j"),
        j_per_input_token=s.get("j_per_input_token_prefill"),
        j_per_input_token_adjusted=s.get("j_per_input_token_prefill_adjusted"),
        j_per_decode_token=s.get("j_per_decode_token"),
        j_per_decode_token_adjusted=s.get("j_per_decode_token_adjusted"),
        share_prefill=s.get("share_prefill"),
        share_prefill_adjusted=s.get("share_prefill_adjusted"),
        tr_prefill_j=a.get("energy_prefill_j"),
        tr_decode_j=a.get("energy_decode_j"),
        confidence=a.get("confidence"),
        missing=missing,
        tr_missing=tr_missing,
    )


@dataclass
class Agreement:
    """Time-resolved vs differential prefill energy over a config's runs."""

    ratios: list[float]  # per run with both figures
    mean_prefill_j: float | None  # differential, over those runs
    mean_tr_prefill_j: float | None

    @property
    def n_within(self) -> int:
        return sum(1 for x in self.ratios if within(x, AGREE_TOLERANCE))

    @property
    def mean_ratio(self) -> float | None:
        if self.mean_tr_prefill_j is None or not self.mean_prefill_j:
            return None
        return self.mean_tr_prefill_j / self.mean_prefill_j

    @property
    def mean_agrees(self) -> bool | None:
        return within(self.mean_ratio, AGREE_TOLERANCE)


def agreement(rows: Sequence[SplitRow]) -> Agreement:
    both = [r for r in rows if r.ratio is not None]
    return Agreement(
        ratios=[r.ratio for r in both if r.ratio is not None],
        mean_prefill_j=_mean([r.prefill_j for r in both]),
        mean_tr_prefill_j=_mean([r.tr_prefill_j for r in both]),
    )


@dataclass
class PredictionRow:
    """One basis (raw J, baseline-adjusted J, window s) of the 2x-output prediction."""

    basis: str
    measured: float | None  # the long run(s), mean
    prefill: float | None  # the split runs, mean
    decode: float | None
    per_decode_token: float | None
    long_decode_tokens: int

    @property
    def predicted(self) -> float | None:
        """prefill + 2 x decode (the issue's prediction)."""
        if self.prefill is None or self.decode is None:
            return None
        return self.prefill + 2.0 * self.decode

    @property
    def predicted_tokens(self) -> float | None:
        """prefill + per-decode-token figure x the long run's decode tokens (predict_energy_j)."""
        if self.prefill is None or self.per_decode_token is None:
            return None
        return self.prefill + self.per_decode_token * self.long_decode_tokens

    @staticmethod
    def _error(predicted: float | None, measured: float | None) -> float | None:
        if predicted is None or not measured:
            return None
        return (predicted - measured) / measured

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured."""
        return self._error(self.predicted, self.measured)

    @property
    def error_tokens(self) -> float | None:
        return self._error(self.predicted_tokens, self.measured)

    @property
    def ok(self) -> bool | None:
        return None if self.error is None else abs(self.error) <= PREDICT_TOLERANCE

    @property
    def ok_tokens(self) -> bool | None:
        return None if self.error_tokens is None else abs(self.error_tokens) <= PREDICT_TOLERANCE


@dataclass
class Prediction:
    """The prediction check of one config, or why it was not made (``skipped``)."""

    rows: list[PredictionRow] = field(default_factory=list)
    long_runs: list[Run] = field(default_factory=list)
    split_runs: list[Run] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    per_run_errors: list[float] = field(default_factory=list)  # raw, each split run alone


def matching_long_runs(reference: Run, candidates: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """The candidates with longer answers whose config equals ``reference``'s but for the output
    length, and why the others were left out."""
    matched, why = [], []
    ref_new = reference.result["output_tokens"] / max(reference.result["n_requests"], 1)
    for run in candidates:
        if run.result["output_tokens"] / max(run.result["n_requests"], 1) <= ref_new:
            continue  # not a longer answer (e.g. the split run itself, when one study holds both)
        diff = config_differences(reference.config, run.config, LENGTH_FIELDS)
        if diff:
            shown = ", ".join(diff[:4]) + (", ..." if len(diff) > 4 else "")
            why.append(f"{run.study}/{run.run_id} has another config ({shown})")
        else:
            matched.append(run)
    return matched, why


def prediction(split_runs: Sequence[Run], long_candidates: Sequence[Run]) -> Prediction:
    """Measured energy of the longer run(s) vs prefill + 2 x decode of ``split_runs`` (mean)."""
    with_split = [r for r in split_runs if r.split is not None]
    if not with_split:
        return Prediction(skipped="no run of this config has a differential split")
    if not long_candidates:
        return Prediction(skipped="no --long study was given", split_runs=with_split)
    long_runs, why = matching_long_runs(with_split[0], long_candidates)
    if not long_runs:
        return Prediction(
            skipped="no --long run has this config: " + "; ".join(why), split_runs=with_split
        )
    ref = with_split[0].result
    for run in long_runs:
        r = run.result
        if (r["n_requests"], r["input_tokens"]) != (ref["n_requests"], ref["input_tokens"]):
            return Prediction(
                skipped=(
                    f"{run.study}/{run.run_id} ran {r['n_requests']} requests with "
                    f"{r['input_tokens']} input tokens, the split runs {ref['n_requests']} with "
                    f"{ref['input_tokens']}: not the same prompts"
                ),
                split_runs=with_split,
            )
    long_decode = {r.result["output_tokens"] - r.result["n_requests"] for r in long_runs}
    if len(long_decode) > 1:
        return Prediction(skipped="the --long runs differ in output tokens", split_runs=with_split)
    decode_tokens = long_decode.pop()
    splits = [r.split for r in with_split if r.split is not None]

    def mean_of(key: str) -> float | None:
        return _mean([s.get(key) for s in splits])

    def per_token(key: str) -> float | None:
        return _mean(
            [s[key] / s["decode_tokens"] if s.get(key) is not None else None for s in splits]
        )

    rows = [
        PredictionRow(
            "raw J",
            _mean([r.result.get("energy_total_j") for r in long_runs]),
            mean_of("energy_prefill_j"),
            mean_of("energy_decode_j"),
            mean_of("j_per_decode_token"),
            decode_tokens,
        ),
        PredictionRow(
            "baseline-adjusted J",
            _mean([r.result.get("energy_adjusted_j") for r in long_runs]),
            mean_of("energy_prefill_adjusted_j"),
            mean_of("energy_decode_adjusted_j"),
            mean_of("j_per_decode_token_adjusted"),
            decode_tokens,
        ),
        PredictionRow(
            "window s",
            _mean([r.result.get("duration_s") for r in long_runs]),
            mean_of("duration_prefill_s"),
            mean_of("duration_decode_s"),
            per_token("duration_decode_s"),
            decode_tokens,
        ),
    ]
    measured = rows[0].measured
    per_run = [
        (s["energy_prefill_j"] + 2.0 * s["energy_decode_j"] - measured) / measured
        for s in splits
        if measured
    ]
    notes = []
    if len(with_split) < len(split_runs):
        notes.append(
            f"{len(split_runs) - len(with_split)} run(s) of this config have no split and are "
            "left out"
        )
    notes.extend(why)
    return Prediction(
        rows=rows,
        long_runs=long_runs,
        split_runs=with_split,
        notes=notes,
        per_run_errors=per_run,
    )


# -- rendering -----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} %"


def _share(raw: float | None, adjusted: float | None) -> str:
    def one(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    return f"{one(raw)} / {one(adjusted)}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _within_word(ok: bool | None) -> str:
    return "n/a" if ok is None else ("within" if ok else "not within")


SPLIT_HEADER = (
    "| cycle | study | reuse | window s (full / prefill) | total J | prefill J (raw / adj) "
    "| decode J (raw / adj) | J/input token prefill (raw / adj) | J/decode token (raw / adj) "
    "| prefill share (raw / adj) | time-resolved prefill J | time-resolved decode J "
    "| confidence | TR / diff prefill | within 10 % |\n"
    "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|:---:|"
)


def split_table(rows: Sequence[SplitRow]) -> str:
    lines = [SPLIT_HEADER]
    for x in rows:
        head = (
            f"| {x.run.cycle} | {x.run.study} | {x.run.reuse} | "
            f"{num(x.window_s, '.2f')} / {num(x.prefill_window_s, '.2f')} | {num(x.total_j, '.1f')} | "
        )
        tail = f"{num(x.tr_prefill_j, '.1f')} | {num(x.tr_decode_j, '.1f')} | {x.confidence or 'n/a'} | "
        if x.missing is not None:
            reason = x.missing.replace("|", "/")
            lines.append(f"{head}n/a: {reason} | | | | | {tail}n/a | n/a |")
            continue
        lines.append(
            head + f"{num_pair(x.prefill_j, x.prefill_adjusted_j, '.1f')} | "
            f"{num_pair(x.decode_j, x.decode_adjusted_j, '.1f')} | "
            f"{num_pair(x.j_per_input_token, x.j_per_input_token_adjusted, '.4g')} | "
            f"{num_pair(x.j_per_decode_token, x.j_per_decode_token_adjusted, '.4g')} | "
            f"{_share(x.share_prefill, x.share_prefill_adjusted)} | "
            + tail
            + f"{num(x.ratio, '.3f')} | {_verdict(x.agrees)} |"
        )
    split = [x for x in rows if x.missing is None]
    if len(split) > 1:

        def m(get: Callable[[SplitRow], float | None]) -> float | None:
            return _mean([get(x) for x in split])

        agree = agreement(split)
        both = [x for x in split if x.ratio is not None]
        # time-resolved means and the ratio: over the runs with both figures (noted if fewer)
        subset = (
            f" ({len(both)} run{'' if len(both) == 1 else 's'})"
            if both and len(both) < len(split)
            else ""
        )
        tr_prefill = _mean([x.tr_prefill_j for x in both]) if both else None
        tr_decode = _mean([x.tr_decode_j for x in both]) if both else None
        lines.append(
            f"| **mean** | {len(split)} runs | | {num(m(lambda x: x.window_s), '.2f')} / "
            f"{num(m(lambda x: x.prefill_window_s), '.2f')} | {num(m(lambda x: x.total_j), '.1f')} | "
            f"{num_pair(m(lambda x: x.prefill_j), m(lambda x: x.prefill_adjusted_j), '.1f')} | "
            f"{num_pair(m(lambda x: x.decode_j), m(lambda x: x.decode_adjusted_j), '.1f')} | "
            f"{num_pair(m(lambda x: x.j_per_input_token), m(lambda x: x.j_per_input_token_adjusted), '.4g')} | "
            f"{num_pair(m(lambda x: x.j_per_decode_token), m(lambda x: x.j_per_decode_token_adjusted), '.4g')} | "
            f"{_share(m(lambda x: x.share_prefill), m(lambda x: x.share_prefill_adjusted))} | "
            f"{num(tr_prefill, '.1f')}{subset} | {num(tr_decode, '.1f')}{subset} | | "
            f"{num(agree.mean_ratio, '.3f')}{subset} | {_verdict(agree.mean_agrees)} |"
        )
    return "\n".join(lines)


def agreement_line(rows: Sequence[SplitRow]) -> str:
    split = [x for x in rows if x.missing is None]
    agree = agreement(split)
    missing = [x for x in rows if x.missing is not None]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(rows)} runs have no differential split.")
    no_tr: dict[str, list[str]] = {}  # reason -> runs
    for x in rows:
        if x.tr_prefill_j is None:
            no_tr.setdefault(str(x.tr_missing), []).append(f"{x.run.study}/{x.run.run_id}")
    if no_tr:
        listed = "; ".join(
            f"{', '.join(runs) if len(runs) < 3 else f'{len(runs)} runs'}: {why}"
            for why, runs in no_tr.items()
        )
        parts.append(f"No time-resolved split: {listed}.")
    if not agree.ratios:
        parts.append("Time-resolved vs differential prefill: no run has both figures.")
        return " ".join(parts)
    lo, hi = min(agree.ratios), max(agree.ratios)
    parts.append(
        f"**Time-resolved vs differential prefill energy (criterion: within 10 %): "
        f"{agree.n_within} of {len(agree.ratios)} runs within** (ratios {lo:.3f}-{hi:.3f}); "
        f"on the mean {num(agree.mean_tr_prefill_j, '.1f')} J vs "
        f"{num(agree.mean_prefill_j, '.1f')} J, ratio {num(agree.mean_ratio, '.3f')}: "
        + ("**within 10 %**." if agree.mean_agrees else "**not within 10 %**.")
    )
    levels = sorted({x.confidence for x in split if x.confidence and x.tr_prefill_j is not None})
    if levels:
        parts.append(f"Time-resolved confidence: {', '.join(levels)}.")
        reasons = sorted(
            {
                x.run.attribution["confidence_reason"]
                for x in split
                if x.run.attribution and x.tr_prefill_j is not None and x.confidence != "high"
            }
        )
        if reasons:
            parts.append(f"E.g. {reasons[0]}.")
    return " ".join(parts)


PREDICTION_HEADER = (
    "| basis | measured (2x tokens) | prefill (mean) | decode (mean) | prefill + 2 x decode "
    "| error | within 5 % | token-scaled prediction | error | within 5 % |\n"
    "|---|---:|---:|---:|---:|---:|:---:|---:|---:|:---:|"
)


def prediction_block(p: Prediction) -> str:
    if p.skipped is not None:
        return f"Prediction check (2x output tokens): not made, {p.skipped}."
    lines = [PREDICTION_HEADER]
    for row in p.rows:
        fmt = ".2f" if row.basis == "window s" else ".1f"
        energy = row.basis != "window s"
        lines.append(
            f"| {row.basis} | {num(row.measured, fmt)} | {num(row.prefill, fmt)} | "
            f"{num(row.decode, fmt)} | {num(row.predicted, fmt)} | {_pct(row.error)} | "
            f"{_verdict(row.ok) if energy else ''} | {num(row.predicted_tokens, fmt)} | "
            f"{_pct(row.error_tokens)} | {_verdict(row.ok_tokens) if energy else ''} |"
        )
    ref, long = p.split_runs[0].result, p.long_runs[0].result
    split_decode = ref["output_tokens"] - ref["n_requests"]
    long_decode = long["output_tokens"] - long["n_requests"]
    n = ref["n_requests"]
    raw, adjusted = p.rows[0], p.rows[1]
    baselines = _mean([r.split.get("baseline_power_w") for r in p.split_runs if r.split])
    long_baseline = _mean([r.result["energy"].get("baseline_power_w") for r in p.long_runs])
    long_names = ", ".join(f"{r.study}/{r.run_id}" for r in p.long_runs)
    verdict = (
        f"**Prediction prefill + 2 x decode (criterion: within 5 %): raw {_pct(raw.error)} "
        f"({_within_word(raw.ok)}), baseline-adjusted {_pct(adjusted.error)} "
        f"({_within_word(adjusted.ok)}).** Token-scaled: raw {_pct(raw.error_tokens)} "
        f"({_within_word(raw.ok_tokens)}), baseline-adjusted {_pct(adjusted.error_tokens)} "
        f"({_within_word(adjusted.ok_tokens)})."
    )
    if p.per_run_errors:
        verdict += (
            f" With each 128-token run alone instead of the mean, the raw error ranges "
            f"{_pct(min(p.per_run_errors))} to {_pct(max(p.per_run_errors))}."
        )
    note = (
        f"What was compared: measured = the window of {long_names} ({n} requests, "
        f"{long['output_tokens']} output tokens; `energy_total_j`, adjusted `energy_adjusted_j` = "
        f"raw - its idle baseline ({num(long_baseline, '.1f')} W) x its window s). Prefill and decode = "
        f"the mean over the {len(p.split_runs)} runs above (same {n} prompts, {ref['input_tokens']} "
        f"input tokens, {ref['output_tokens']} output tokens) of the differential split: prefill = "
        "the prefill-only window (max_new_tokens 1, so each request's first token belongs to "
        f"prefill), decode = total - prefill ({split_decode} decode tokens = output - requests); "
        "adjusted, each window minus its run's idle baseline "
        f"({num(baselines, '.1f')} W, mean) x that window's duration. Predicted = prefill + 2 x "
        f"decode. Token-scaled = prefill + J per decode token x the longer run's {long_decode} "
        f"decode tokens (2 x {split_decode} + {long_decode - 2 * split_decode}, "
        "`phase_split.differential.predict_energy_j`). Error = (predicted - measured) / measured. "
        "Window s: the same arithmetic on the window durations."
    )
    extra = " ".join(f"Note: {x}." for x in p.notes)
    return "\n".join(lines) + "\n\n" + verdict + "\n\n" + note + (f" {extra}" if extra else "")


def config_label(runs: Sequence[Run], others: Sequence[Sequence[Run]]) -> str:
    """What distinguishes this config from the group's other split configs."""
    diffs: set[str] = set()
    for other in others:
        if other is not runs:
            diffs.update(config_differences(runs[0].config, other[0].config, frozenset()))
    values = flat(runs[0].config)
    return ", ".join(f"{k} {values.get(k)}" for k in sorted(diffs)) or "config"


def engine_section(name: str, split_dirs: Sequence[Path], long_dirs: Sequence[Path]) -> str:
    split_runs = [r for d in split_dirs for r in load_runs(d) if asked_for_split(r)]
    long_runs = [r for d in long_dirs for r in load_runs(d)]
    out = [f"### {name} ({machine(r.result for r in split_runs + long_runs)})"]
    if not split_runs:
        out.append("No completed run of the --split studies measured the differential split.")
        return "\n\n".join(out)
    configs = group_by_config(split_runs)
    for runs in configs:
        runs.sort(key=lambda r: (r.cycle, r.study, r.run_id))
        if len(configs) > 1:
            out.append(f"#### {config_label(runs, configs)}")
        rows = [split_row(r) for r in runs]
        out.append(split_table(rows))
        out.append(agreement_line(rows))
        out.append(prediction_block(prediction(runs, long_runs)))
    return "\n\n".join(out)


READING = """### Reading these tables

- Differential split (`phase_split`): after the measurement window the run measures a
  prefill-only window over the same prompts and batching (`max_new_tokens` 1, its own warmup, the
  same thermal floor). Prefill J = that window (each request's prefill and its first token);
  decode J = total - prefill; J/input token = prefill / input tokens; J/decode token = decode /
  (output tokens - requests). Adjusted: each window minus the idle baseline power x its duration.
  Prefill share = prefill / total.
- Time-resolved split (`energy_attribution`): the measurement window's raw energy split over
  engine steps from per-token timestamps and the power/energy samples; a step's energy goes to
  its requests by tokens processed (prompt tokens in the step that produced the first token,
  so the first token is prefill here too); idle time between steps is charged to the next step.
  Its confidence compares the sampling interval with the median step length.
- TR / diff prefill = time-resolved prefill J / differential prefill J, both raw."""


class _GroupAction(argparse.Action):
    """``--engine NAME`` opens a group; ``--split`` / ``--long`` dirs join the latest group."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        groups = list(getattr(namespace, "groups", None) or [])
        if self.dest == "engine":
            groups.append({"name": values, "split": [], "long": []})
        elif not groups:
            parser.error(f"{option_string} must follow --engine NAME")
        else:
            groups[-1][self.dest].extend(Path(v) for v in values)
        namespace.groups = groups


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--engine", action=_GroupAction, required=True, metavar="NAME", help="starts a group"
    )
    parser.add_argument(
        "--split",
        nargs="+",
        action=_GroupAction,
        metavar="DIR",
        help="studies whose runs with measurement.phase_split are tabulated (e.g. reuse and fresh)",
    )
    parser.add_argument(
        "--long",
        nargs="+",
        action=_GroupAction,
        metavar="DIR",
        help="studies holding the same config with twice the new tokens (prediction check)",
    )
    add_section_options(parser)
    parser.set_defaults(groups=None)
    args = parser.parse_args(argv)
    for group in args.groups:
        if not group["split"]:
            parser.error(f"--engine {group['name']!r} has no --split DIR")
    return args


def build_body(groups: Sequence[dict[str, Any]], extra: Path | None = None) -> str:
    parts = [engine_section(g["name"], g["split"], g["long"]) for g in groups]
    parts.append(READING)
    if extra is not None and extra.is_file():
        parts.append(extra.read_text().strip())
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    body = build_body(args.groups, args.extra)
    publish(body, TITLE, args.no_write)


if __name__ == "__main__":
    main()
