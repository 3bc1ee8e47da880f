"""``benchmarks/phase_tables.py``: the BENCHMARKS.md tables of where the joules go (issue 16).

The study directories are hand-made but hold real results: a recorded H200 run's result JSON
(``benchmarks/results/reuse_pytorch``) loaded as an ``ExperimentResult`` and given known energy
figures, a ``PhaseSplit`` from ``differential_phase_split`` and an ``EnergyAttribution``, then
written back through the model. The figures are chosen so that the verdicts differ: one run's
time-resolved prefill agrees within 10 % and one does not while the mean does; the 2x-output
prediction is within 5 % raw and not baseline-adjusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import benchmark_scripts
import pytest
from benchmark_scripts import (
    BENCHMARKS,
    assert_tables_well_formed,
    load_benchmark_script,
    redirect_sections,
)

from llenergymeasure.config.models import MeasurementConfig
from llenergymeasure.phase_split.attribution import EnergyAttribution
from llenergymeasure.phase_split.differential import differential_phase_split, predict_energy_j
from llenergymeasure.results.models import ExperimentResult

TEMPLATE = (
    BENCHMARKS / "results" / "reuse_pytorch" / "reuse" / "001_llama8b_pytorch_c1" / "result.json"
)

REQUESTS, INPUT_TOKENS = 24, 12312  # the template's workload: 24 prompts of ~513 tokens
BASELINE_W = 80.0


pt = load_benchmark_script("phase_tables")


def make_result(
    *,
    new_tokens: int = 128,
    total_j: float,
    duration_s: float,
    prefill: tuple[float, float] | None = None,
    split_missing: str | None = None,
    tr_prefill_j: float | None = None,
    median_step_s: float = 0.03,
    batch_size: int = 8,
    reused: bool = False,
    requests: int = REQUESTS,
    input_tokens: int = INPUT_TOKENS,
) -> ExperimentResult:
    """The template result with this workload and these energies.

    ``prefill``: (J, s) of the prefill-only window, giving a differential split; ``split_missing``
    marks a split that was asked for but refused; ``tr_prefill_j``: the time-resolved prefill.
    """
    base = ExperimentResult.from_json(TEMPLATE)
    asked = prefill is not None or split_missing is not None
    dataset = base.config.dataset.model_copy(update={"output_len": new_tokens})
    config = base.config.model_copy(
        update={
            "max_new_tokens": new_tokens,
            "dataset": dataset,
            "measurement": MeasurementConfig(phase_split=asked),
            "pytorch": base.config.pytorch.model_copy(update={"batch_size": batch_size}),
        }
    )
    output_tokens = requests * new_tokens
    adjusted = total_j - BASELINE_W * duration_s
    energy = base.energy.model_copy(
        update={
            "total_j": total_j,
            "baseline_power_w": BASELINE_W,
            "baseline_energy_j": BASELINE_W * duration_s,
            "adjusted_j": adjusted,
        }
    )
    split = None
    if prefill is not None:
        split, why = differential_phase_split(
            total_energy_j=total_j,
            total_duration_s=duration_s,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            requests=requests,
            prefill_energy_j=prefill[0],
            prefill_duration_s=prefill[1],
            baseline_power_w=BASELINE_W,
        )
        assert split is not None, why
    attribution = None
    if tr_prefill_j is not None:
        attribution = EnergyAttribution(
            source="counter",
            window_start_s=0.0,
            window_end_s=duration_s,
            energy_j=total_j,
            curve_energy_j=total_j,
            scale_factor=1.0,
            energy_prefill_j=tr_prefill_j,
            energy_decode_j=total_j - tr_prefill_j,
            between_steps_energy_j=0.0,
            n_steps=new_tokens * 3,
            sampling_interval_s=0.1,
            median_step_s=median_step_s,
            confidence="low",
            confidence_reason="sampling interval 100.0 ms vs median step 30.0 ms (ratio 3.33)",
        )
    result = base.model_copy(
        update={
            "config": config,
            "energy_total_j": total_j,
            "energy_adjusted_j": adjusted,
            "duration_s": duration_s,
            "n_requests": requests,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "energy": energy,
            "engine_reused": reused,
            "phase_split": split,
            "phase_split_unavailable": split_missing,
            "energy_attribution": attribution,
            "energy_attribution_unavailable": None if attribution else "no power samples",
        }
    )
    return ExperimentResult.from_json(result.to_json())  # a valid result, as llem writes it


def write_study(
    parent: Path, runs: list[tuple[int, ExperimentResult | None]], name: str = "study"
) -> Path:
    """``parent/<name>_<timestamp>/`` like ``llem run -o parent``; a None result is a failed run."""
    texts = [(cycle, None if r is None else r.to_json()) for cycle, r in runs]
    benchmark_scripts.write_study(parent / f"{name}_2026-12-02T00-00-00", texts)
    return parent


REFUSED = "the prefill-only window used more energy (1200.000 J) than the full run (990.000 J)"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """A reuse study, a fresh study (each with a non-split batch-64 config and a failed run) and
    a 256-token study (with an unrelated batch-64 run)."""
    reuse = write_study(
        tmp_path / "pt_reuse",
        [
            (1, make_result(total_j=1000, duration_s=4.0, prefill=(200, 0.5), tr_prefill_j=210)),
            (1, make_result(total_j=3000, duration_s=4.0, batch_size=64, reused=True)),
            (
                2,
                make_result(
                    total_j=1020,
                    duration_s=4.1,
                    prefill=(190, 0.5),
                    tr_prefill_j=161.5,
                    reused=True,
                ),
            ),
            (3, None),
        ],
    )
    fresh = write_study(
        tmp_path / "pt_fresh",
        [
            (1, make_result(total_j=990, duration_s=4.0, split_missing=REFUSED, tr_prefill_j=205)),
            (2, make_result(total_j=980, duration_s=4.0, prefill=(210, 0.5))),
        ],
    )
    long = write_study(
        tmp_path / "pt_256",
        [
            (1, make_result(new_tokens=256, total_j=1850, duration_s=7.0)),
            (1, make_result(new_tokens=256, total_j=5000, duration_s=7.0, batch_size=64)),
        ],
    )
    return {"reuse": reuse, "fresh": fresh, "long": long}


def split_runs(dirs: dict[str, Path]) -> list[Any]:
    return [r for d in ("reuse", "fresh") for r in pt.load_runs(dirs[d]) if pt.asked_for_split(r)]


def test_only_completed_runs_that_asked_for_the_split_are_tabulated(dirs: dict[str, Path]) -> None:
    runs = split_runs(dirs)
    assert [(r.study, r.cycle, r.reuse) for r in runs] == [
        ("pt_reuse", 1, "fresh"),
        ("pt_reuse", 2, "reused"),
        ("pt_fresh", 1, "fresh"),
        ("pt_fresh", 2, "fresh"),
    ]
    assert len(pt.group_by_config(runs)) == 1  # the batch-64 run (no split) is left out


def test_per_run_figures_ratio_and_the_10_percent_verdicts(dirs: dict[str, Path]) -> None:
    rows = {(r.study, r.cycle): pt.split_row(r) for r in split_runs(dirs)}
    a = rows["pt_reuse", 1]
    assert (a.total_j, a.prefill_j, a.decode_j) == (1000, 200, 800)
    assert a.prefill_adjusted_j == pytest.approx(200 - BASELINE_W * 0.5)
    assert a.decode_adjusted_j == pytest.approx((1000 - BASELINE_W * 4.0) - 160)
    assert a.j_per_input_token == pytest.approx(200 / INPUT_TOKENS)
    assert a.j_per_decode_token == pytest.approx(800 / (REQUESTS * 127))
    assert a.share_prefill == pytest.approx(0.2)
    assert a.ratio == pytest.approx(1.05) and a.agrees is True
    b = rows["pt_reuse", 2]
    assert b.ratio == pytest.approx(0.85) and b.agrees is False
    refused = rows["pt_fresh", 1]
    assert refused.missing == REFUSED and refused.ratio is None and refused.agrees is None
    assert refused.tr_prefill_j == 205  # the time-resolved split is still shown
    no_tr = rows["pt_fresh", 2]
    assert no_tr.prefill_j == 210 and no_tr.ratio is None

    agree = pt.agreement([r for r in rows.values() if r.missing is None])
    assert agree.ratios == pytest.approx([1.05, 0.85])
    assert agree.n_within == 1
    # mean over the runs with both figures: (210 + 161.5) / 2 vs (200 + 190) / 2
    assert agree.mean_ratio == pytest.approx(185.75 / 195)
    assert agree.mean_agrees is True


def test_the_prediction_of_the_2x_run_raw_and_baseline_adjusted(dirs: dict[str, Path]) -> None:
    p = pt.prediction(split_runs(dirs), pt.load_runs(dirs["long"]))
    assert p.skipped is None
    assert [r.run_id for r in p.long_runs] == ["001_llama8b_pytorch_c1"]  # batch 64 left out
    assert len(p.split_runs) == 3  # the refused split is not in the mean
    raw, adjusted, window = p.rows
    assert (raw.prefill, raw.decode) == (pytest.approx(200), pytest.approx(800))
    assert raw.predicted == pytest.approx(1800)
    assert raw.error == pytest.approx((1800 - 1850) / 1850) and raw.ok is True
    # adjusted: prefill 200 - 80 x 0.5 = 160; decode (1000, 1020, 980 - 80 x window) - prefill
    decode_adj = ((680 - 160) + (1020 - 80 * 4.1 - 150) + (660 - 170)) / 3
    assert adjusted.prefill == pytest.approx(160)
    assert adjusted.decode == pytest.approx(decode_adj)
    measured_adj = 1850 - BASELINE_W * 7.0
    assert adjusted.measured == pytest.approx(measured_adj)
    assert adjusted.error == pytest.approx((160 + 2 * decode_adj - measured_adj) / measured_adj)
    assert adjusted.ok is False  # -7.4 %
    assert window.measured == 7.0 and window.predicted == pytest.approx(
        0.5 + 2 * (4.0333 - 0.5), abs=1e-3
    )
    assert p.per_run_errors == pytest.approx(
        [(p_ + 2 * (t - p_) - 1850) / 1850 for t, p_ in ((1000, 200), (1020, 190), (980, 210))]
    )


def test_the_token_scaled_prediction_is_the_librarys_predict_energy_j(tmp_path: Path) -> None:
    split_dir = write_study(
        tmp_path / "s", [(1, make_result(total_j=1000, duration_s=4.0, prefill=(200, 0.5)))]
    )
    long_dir = write_study(
        tmp_path / "l", [(1, make_result(new_tokens=256, total_j=1850, duration_s=7.0))]
    )
    (run,) = pt.load_runs(split_dir)
    p = pt.prediction([run], pt.load_runs(long_dir))
    split = ExperimentResult.from_json(json.dumps(run.result)).phase_split
    assert split is not None
    raw, adjusted, _ = p.rows
    assert raw.predicted_tokens == pytest.approx(predict_energy_j(split, REQUESTS * 256))
    assert adjusted.predicted_tokens == pytest.approx(
        predict_energy_j(split, REQUESTS * 256, adjusted=True)
    )
    assert raw.predicted_tokens != pytest.approx(raw.predicted)  # 255 decode tokens, not 2 x 127


def test_a_long_run_of_other_prompts_or_config_is_not_compared(
    tmp_path: Path, dirs: dict[str, Path]
) -> None:
    runs = split_runs(dirs)
    other_prompts = write_study(
        tmp_path / "x",
        [(1, make_result(new_tokens=256, total_j=1850, duration_s=7.0, input_tokens=9000))],
    )
    p = pt.prediction(runs, pt.load_runs(other_prompts))
    assert p.skipped is not None and "not the same prompts" in p.skipped
    other_config = write_study(
        tmp_path / "y",
        [(1, make_result(new_tokens=256, total_j=1850, duration_s=7.0, batch_size=4))],
    )
    p = pt.prediction(runs, pt.load_runs(other_config))
    assert p.skipped is not None and "pytorch.batch_size" in p.skipped
    assert "not made, no --long study was given" in pt.prediction_block(pt.prediction(runs, []))


def test_the_section_printed_and_written(
    dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    md = redirect_sections(pt, monkeypatch, tmp_path / "BENCHMARKS.md")
    pt.main(
        ["--engine", "PyTorch compiled, batch 8", "--split", str(dirs["reuse"]), str(dirs["fresh"]),
         "--long", str(dirs["long"])]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "### PyTorch compiled, batch 8 (NVIDIA H200, driver 580.159.04)" in out
    assert f"n/a: {REFUSED}" in out
    assert "1 of 2 runs within** (ratios 0.850-1.050)" in out
    assert "ratio 0.953: **within 10 %**" in out
    assert "raw -2.7 % (within), baseline-adjusted -7.4 % (not within)" in out
    assert "| **mean** | 3 runs |" in out and "| 0.953 (2 runs) | yes |" in out
    assert_tables_well_formed(out, [pt.SPLIT_HEADER[:12], pt.PREDICTION_HEADER[:12]])
    text = md.read_text()
    assert "## Other\n\nkept" in text and "## Where the joules go (issue 16)" in text


def test_split_dirs_must_follow_an_engine() -> None:
    with pytest.raises(SystemExit):
        pt.parse_args(["--split", "a", "--engine", "x"])
    args = pt.parse_args(
        ["--engine", "A", "--split", "a", "b", "--engine", "B", "--split", "c", "--long", "d"]
    )
    assert [(g["name"], g["split"], g["long"]) for g in args.groups] == [
        ("A", [Path("a"), Path("b")], []),
        ("B", [Path("c")], [Path("d")]),
    ]


def test_a_split_whose_steps_are_slivers_is_shown_as_none(tmp_path: Path) -> None:
    # results written before llem refused such timelines: every token its own "step"
    study = write_study(
        tmp_path / "vllm",
        [
            (
                c,
                make_result(
                    total_j=1000,
                    duration_s=4.0,
                    prefill=(470, 2.0),
                    tr_prefill_j=280,
                    median_step_s=0.0,
                ),
            )
            for c in (1, 2, 3)
        ],
    )
    rows = [pt.split_row(r) for r in pt.load_runs(study)]
    assert all(r.tr_prefill_j is None and r.ratio is None for r in rows)
    line = pt.agreement_line(rows)
    assert "3 runs: median step 0.00 us" in line and "not over steps" in line
    assert "no run has both figures" in line


def test_one_study_holding_the_split_run_and_the_longer_run_serves_as_both(tmp_path: Path) -> None:
    # phase_vllm_256.yaml: the 128-token split run and the 256-token run in one study
    study = write_study(
        tmp_path / "both",
        [
            (1, make_result(total_j=1000, duration_s=4.0, prefill=(200, 0.5))),
            (1, make_result(new_tokens=256, total_j=1850, duration_s=7.0)),
        ],
    )
    runs = pt.load_runs(study)
    p = pt.prediction([r for r in runs if pt.asked_for_split(r)], runs)
    assert [r.result["output_tokens"] for r in p.long_runs] == [REQUESTS * 256]
