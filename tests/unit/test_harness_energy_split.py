"""Where a run's joules go, wired into the measurement protocol (issue 16): the differential
prefill/decode split (``measurement.phase_split``), per-request energy from the time-resolved
attribution, and the host's share in ``energy.components`` - driven with fakes end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.rapl import RaplReader
from llenergymeasure.energy.sampler import EnergySampler, Sample
from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.phase_split.columns import PHASE_COLUMNS
from llenergymeasure.phase_split.records import time_resolved_attribution, token_timed_batches
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import FakeEnergyBackend, SwitchingSensor
from llenergymeasure.testing.engines import FakeEngine


def LoadSensor() -> SwitchingSensor:
    """One GPU drawing 50 W idle and 300 W while the engine generates."""
    return SwitchingSensor(n_devices=1, busy_w=300.0)


def config(**overrides: object) -> ExperimentConfig:
    data: dict[str, object] = {
        "model": "fake-model",
        "backend": "pytorch",
        "dataset": {"n": 5, "input_len": 12, "output_len": 16},
        "n": 5,
        "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
        "baseline": {"duration_seconds": 0.2},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def engine_on(sensor: SwitchingSensor, **kwargs: object) -> FakeEngine:
    kwargs.setdefault("output_tokens", 16)
    kwargs.setdefault("seconds_per_token", 0.004)
    return FakeEngine(
        on_generate=lambda phase: sensor.load(),
        on_generate_end=lambda phase: sensor.idle(),
        **kwargs,  # type: ignore[arg-type]
    )


def orchestrator(
    sensor: SwitchingSensor, engine: FakeEngine, **kwargs: object
) -> ExperimentOrchestrator:
    kwargs.setdefault("rapl_reader", RaplReader(root="/nonexistent/powercap"))
    return ExperimentOrchestrator(
        engine=engine,
        energy_backend=NvmlEnergyBackend(
            sensor=sensor, sampler=EnergySampler(sensor, interval_ms=10)
        ),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=10),
        baseline_cache=BaselineCache(),
        **kwargs,  # type: ignore[arg-type]
    )


# -- measurement.phase_split --------------------------------------------------------------


def test_without_phase_split_no_prefill_window_runs_and_the_result_has_no_split() -> None:
    sensor = LoadSensor()
    engine = engine_on(sensor)
    result = orchestrator(sensor, engine).run(config()).result
    assert [p for p, _ in engine.calls if p == "prefill_window"] == []
    assert result.phase_split is None
    assert result.phase_split_unavailable is None
    assert result.timing.phase_split_s == 0.0


def test_phase_split_runs_a_prefill_only_window_after_the_measurement_window(
    tmp_path: Path,
) -> None:
    sensor = LoadSensor()
    engine = engine_on(sensor)
    measured = orchestrator(sensor, engine).run(config(measurement={"phase_split": True}))
    result = measured.result

    phases = [p for p, _ in engine.calls]
    measurement_at = phases.index("measurement")
    # cleared run state, one warmup of the one-token config, then the window over all prompts
    assert phases[measurement_at + 1 :] == ["clear_run_state", "warmup", "prefill_window"]
    assert engine.calls[-1] == ("prefill_window", 5)

    split = result.phase_split
    assert split is not None, result.phase_split_unavailable
    assert split.method == "differential"
    assert split.energy_total_j == pytest.approx(result.energy_total_j)
    # the fake engine takes 1 token of time per request in the prefill window, 16 in the full
    assert 0 < split.energy_prefill_j < split.energy_total_j / 4
    assert split.energy_decode_j == pytest.approx(split.energy_total_j - split.energy_prefill_j)
    assert split.decode_tokens == result.output_tokens - result.n_requests
    assert split.energy_prefill_adjusted_j is not None  # the idle baseline was measured
    assert result.timing.phase_split_s > 0
    assert "prefill_window" in set(measured.timeseries.column("phase").to_pylist())

    measured.save(tmp_path)
    assert ExperimentResult.from_json(tmp_path / "result.json") == measured.result


def test_phase_split_says_why_when_the_window_has_no_energy() -> None:
    engine = FakeEngine()
    result = (
        ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend(None))
        .run(config(measurement={"phase_split": True}))
        .result
    )
    assert result.phase_split is None
    assert result.phase_split_unavailable == "the measurement window has no energy figure"
    assert "prefill_window" not in [p for p, _ in engine.calls]


def test_a_failing_prefill_window_keeps_the_measurement_and_says_why() -> None:
    sensor = LoadSensor()

    def fail_in_prefill_window(phase: str) -> None:
        sensor.load()
        if phase == "prefill_window":
            raise RuntimeError("CUDA out of memory")

    engine = FakeEngine(on_generate=fail_in_prefill_window)
    result = orchestrator(sensor, engine).run(config(measurement={"phase_split": True})).result
    assert result.energy_total_j is not None
    assert result.phase_split is None
    assert result.phase_split_unavailable is not None
    assert "CUDA out of memory" in result.phase_split_unavailable


# -- per-request energy -------------------------------------------------------------------


def test_request_energies_sum_to_the_window_energy() -> None:
    sensor = LoadSensor()
    result = orchestrator(sensor, engine_on(sensor)).run(config()).result

    assert result.energy_attribution_unavailable is None
    attribution = result.energy_attribution
    assert attribution is not None
    energies = [r.energy_j for r in result.requests]
    assert all(e is not None and e > 0 for e in energies)
    assert math.fsum(e for e in energies if e is not None) == pytest.approx(
        result.energy_total_j, rel=1e-12
    )
    for r in result.requests:
        assert r.prefill_energy_j is not None and r.decode_energy_j is not None
        assert r.prefill_energy_j + r.decode_energy_j == pytest.approx(r.energy_j)
    assert attribution.energy_prefill_j + attribution.energy_decode_j == pytest.approx(
        result.energy_total_j
    )
    # 5 sequential single-request batches of 16 tokens each: 80 steps
    assert attribution.n_steps == 80
    # 10 ms sampling vs 4 ms steps: the result says the split is smeared
    assert attribution.confidence == "low"
    assert "sampling interval" in attribution.confidence_reason
    # the fake counter changes at every sample: its update interval is the sampling interval
    assert attribution.sensor_update_interval_s == attribution.sampling_interval_s
    assert attribution.requests == []  # per-request figures live in result.requests


def test_a_result_json_from_before_the_sensor_update_interval_loads() -> None:
    sensor = LoadSensor()
    result = orchestrator(sensor, engine_on(sensor)).run(config()).result
    data = json.loads(result.to_json())
    del data["energy_attribution"]["sensor_update_interval_s"]
    old = ExperimentResult.from_json(json.dumps(data))
    assert old.energy_attribution is not None
    assert old.energy_attribution.sensor_update_interval_s is None
    assert old.requests == result.requests


def test_without_per_token_times_requests_have_no_energy_and_the_result_says_why() -> None:
    sensor = LoadSensor()

    class NoTokenTimes(FakeEngine):
        def records(self, raw):  # type: ignore[no-untyped-def]
            records = super().records(raw)
            for r in records:
                r.ttft_s, r.itl_s = None, []
            return records

    engine = NoTokenTimes(
        on_generate=lambda phase: sensor.load(),
        on_generate_end=lambda phase: sensor.idle(),
    )
    result = orchestrator(sensor, engine).run(config()).result
    assert result.energy_attribution is None
    assert result.energy_attribution_unavailable is not None
    assert "per-token times" in result.energy_attribution_unavailable
    assert all(r.energy_j is None for r in result.requests)


def test_without_a_gpu_sensor_there_is_no_attribution_and_it_says_why() -> None:
    result = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=FakeEnergyBackend()).run(
        config()
    )
    assert result.result.energy_attribution is None
    assert "no power/energy samples" in (result.result.energy_attribution_unavailable or "")


def test_token_times_of_a_continuous_batch_count_from_each_requests_own_start() -> None:
    # vLLM step loop: one "batch", requests submitted at different instants, steps shared
    records = [
        RequestRecord(0, 10, 3, 0.3, ttft_s=0.10, itl_s=[0.1, 0.1], start_s=100.00),
        RequestRecord(1, 30, 2, 0.2, ttft_s=0.09, itl_s=[0.1], start_s=100.01),
    ]
    (batch,) = token_timed_batches(records)
    assert batch.start_s == 100.00
    times = {r.request: [round(t, 9) for t in r.token_times_s] for r in batch.requests}
    assert times == {0: [100.1, 100.2, 100.3], 1: [100.1, 100.2]}


def steady_1kw_counter(t0: float, t1: float) -> list[Sample]:
    """An energy counter read every 10 ms while the GPU draws a steady 1 kW."""
    n = round((t1 - t0) / 0.01)
    return [
        Sample(t0 + k * 0.01, 0, None, "measure", 1000.0, round(k * 10_000), None, None, None, None)
        for k in range(n + 1)
    ]


STEP_ENDS = [100.2, 100.25, 100.3]  # one prefill step, two decode steps, shared by 4 requests


def continuous_batch(*, stamped_per_step: bool) -> list[RequestRecord]:
    """Four requests of one vLLM step loop, submitted a few hundred ns apart.

    Their TTFT/ITL are differences read on the engine's clock, so times rebuilt from
    ``start_s`` differ between requests by a few hundred ns (and by rounding); the step loop
    also keeps each step's one stamp in ``token_times_s``.
    """
    records = []
    for i in range(4):
        start = 100.0 + i * 1e-7
        skew = i * 3e-7  # the instant each request's own clock reading was taken
        ttft = STEP_ENDS[0] + skew - start
        records.append(
            RequestRecord(
                i,
                100,
                3,
                STEP_ENDS[-1] - start,
                ttft_s=ttft,
                itl_s=[0.05, 0.05],
                start_s=start,
                token_times_s=list(STEP_ENDS) if stamped_per_step else None,
            )
        )
    return records


def test_per_step_stamps_give_the_engine_steps_and_their_energy() -> None:
    attribution, why = time_resolved_attribution(
        continuous_batch(stamped_per_step=True),
        steady_1kw_counter(99.9, 100.4),
        (100.0, 100.3),
        total_energy_j=300.0,
    )
    assert why is None and attribution is not None
    assert attribution.n_steps == 3
    assert attribution.energy_prefill_j == pytest.approx(200.0)  # 100.0-100.2 at 1 kW
    assert attribution.energy_decode_j == pytest.approx(100.0)
    assert [r.energy_j for r in attribution.requests] == pytest.approx([75.0] * 4)


def test_token_times_that_differ_per_request_within_a_step_are_refused_not_split() -> None:
    # rebuilt from start_s + ttft_s: every request's token of a step lands at its own instant,
    # which would make each sliver a "step" and hand a step's energy to one request
    attribution, why = time_resolved_attribution(
        continuous_batch(stamped_per_step=False),
        steady_1kw_counter(99.9, 100.4),
        (100.0, 100.31),
        total_energy_j=300.0,
    )
    assert attribution is None
    assert why is not None and "do not line up into engine steps" in why


def test_data_parallel_records_are_not_attributed() -> None:
    records = [RequestRecord(i, 4, 2, 0.1, ttft_s=0.05, itl_s=[0.05], start_s=1.0) for i in (0, 1)]
    attribution, why = time_resolved_attribution(
        records, [], (0.0, 2.0), total_energy_j=10.0, record_processes=[0, 1]
    )
    assert attribution is None
    assert why is not None and "data-parallel" in why


# -- the host's share ---------------------------------------------------------------------


def rapl_tree(root: Path) -> dict[str, Path]:
    zones = {}
    for zone_id, name, start in (
        ("intel-rapl:0", "package-0", 1_000_000),
        ("intel-rapl:0:0", "dram", 2_000_000),
    ):
        d = root / zone_id
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{start}\n")
        (d / "max_energy_range_uj").write_text("262143328850\n")
        zones[name] = d
    return zones


def test_host_components_from_rapl_sit_beside_the_gpu_only_headline(tmp_path: Path) -> None:
    sensor = LoadSensor()
    zones = rapl_tree(tmp_path / "powercap")

    def busy(phase: str) -> None:
        sensor.load()
        if phase == "measurement":  # the host draws 30 J (package) and 5 J (dram) in the window
            (zones["package-0"] / "energy_uj").write_text(f"{1_000_000 + 30_000_000}\n")
            (zones["dram"] / "energy_uj").write_text(f"{2_000_000 + 5_000_000}\n")

    engine = FakeEngine(on_generate=busy, on_generate_end=lambda phase: sensor.idle())
    orch = orchestrator(sensor, engine, rapl_reader=RaplReader(root=tmp_path / "powercap"))
    result = orch.run(config()).result

    components = result.energy.components
    assert components is not None
    cpu, dram = components.component("cpu"), components.component("dram")
    assert cpu is not None and dram is not None
    assert (cpu.energy_j, cpu.method) == (pytest.approx(30.0), "rapl_sysfs")
    assert (dram.energy_j, dram.method) == (pytest.approx(5.0), "rapl_sysfs")
    assert components.gpu_energy_j == result.energy_total_j  # headline stays GPU-only
    assert components.total_with_host_j == pytest.approx(result.energy_total_j + 35.0)
    assert any("GPU-only" in n for n in components.notes)
    row = result.summary_row()
    assert row["energy_cpu_j"] == pytest.approx(30.0)
    assert row["energy_total_with_host_j"] == pytest.approx(result.energy_total_j + 35.0)


def test_without_rapl_the_components_say_why_and_the_total_is_the_gpu_figure() -> None:
    sensor = LoadSensor()
    result = orchestrator(sensor, engine_on(sensor)).run(config()).result
    components = result.energy.components
    assert components is not None
    cpu = components.component("cpu")
    assert cpu is not None and cpu.energy_j is None and cpu.method == "unavailable"
    assert any("no powercap tree" in n for n in cpu.notes)
    assert components.host_energy_j is None
    assert components.total_with_host_j == result.energy_total_j


def test_a_broken_rapl_reader_never_fails_the_run() -> None:
    class Broken(RaplReader):
        def available(self) -> tuple[bool, str | None]:
            return True, None

        def begin(self) -> None:
            raise OSError("sysfs vanished")

    sensor = LoadSensor()
    result = orchestrator(sensor, engine_on(sensor), rapl_reader=Broken()).run(config()).result
    assert result.energy_total_j is not None
    components = result.energy.components
    assert components is not None
    cpu = components.component("cpu")
    assert cpu is not None and any("sysfs vanished" in n for n in cpu.notes)


# -- flat results -------------------------------------------------------------------------


def test_flat_rows_carry_every_phase_column(tmp_path: Path) -> None:
    sensor = LoadSensor()
    result = (
        orchestrator(sensor, engine_on(sensor))
        .run(config(measurement={"phase_split": True}))
        .result
    )
    row = result.summary_row()
    assert set(PHASE_COLUMNS) <= set(row)
    assert row["phase_split_method"] == "differential"
    assert row["energy_prefill_j"] == pytest.approx(result.phase_split.energy_prefill_j)  # type: ignore[union-attr]
    assert row["time_resolved_energy_prefill_j"] is not None
    assert row["time_resolved_vs_differential_prefill_pct"] is not None
    assert row["request_energy_mean_j"] == pytest.approx(result.energy_total_j / 5)
    table = pq.read_table(result.to_parquet(tmp_path / "row.parquet"))
    assert set(PHASE_COLUMNS) <= set(table.column_names)


# -- llem report --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_result_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sensor = LoadSensor()
    measured = orchestrator(sensor, engine_on(sensor)).run(
        config(measurement={"phase_split": True})
    )
    directory = tmp_path_factory.mktemp("split") / "experiment"
    measured.save(directory)
    return directory


def test_the_experiment_report_shows_the_phase_bar_and_the_request_histogram(
    split_result_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from llenergymeasure.report.render import render_report

    outcome = render_report(split_result_dir, tmp_path / "report.html")
    names = {p.name for p in outcome.images}
    assert {"report_phases.png", "report_request_energy_1.png"} <= names
    for p in outcome.images:
        assert p.stat().st_size > 1000
    text = outcome.html_path.read_text()
    assert "Where the energy goes" in text
    assert "prefill / decode energy (differential)" in text
    assert "energy with host (headline figures are GPU-only)" in text


def test_the_phase_section_has_one_bar_per_config_and_skips_configs_without_data(
    split_result_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from llenergymeasure.report.phase_section import phase_figures, split_per_request

    with_split = ExperimentResult.from_json(split_result_dir / "result.json")
    bare = with_split.model_copy(
        update={
            "phase_split": None,
            "energy_attribution": None,
            "requests": [r.model_copy(update={"energy_j": None}) for r in with_split.requests],
        }
    )
    assert split_per_request(bare) is None
    per_request = split_per_request(with_split)
    assert per_request is not None and per_request[2] == "differential"
    section = phase_figures([("#1 split", [with_split]), ("#2 bare", [bare])], tmp_path, "r")
    assert [f.path.name for f in section.figures] == ["r_phases.png", "r_request_energy_1.png"]
    assert phase_figures([("#2 bare", [bare])], tmp_path, "s").figures == []


def test_the_run_summary_names_the_split_and_its_method(split_result_dir: Path) -> None:
    from llenergymeasure.cli.run_experiment_cmd import format_summary

    result = ExperimentResult.from_json(split_result_dir / "result.json")
    text = format_summary(result, None)
    assert "[differential]" in text
    assert "time-resolved split" in text
    refused = result.model_copy(
        update={"phase_split": None, "phase_split_unavailable": "the prefill-only window failed"}
    )
    assert "n/a: the prefill-only window failed" in format_summary(refused, None)


def test_engine_figures_of_the_result_are_read_before_the_prefill_window() -> None:
    sensor = LoadSensor()

    class Reporting(FakeEngine):
        def effective_parameters(self, config: object) -> dict[str, object]:
            generated = [p for p, _ in self.calls if p != "clear_run_state"]
            return {"last_generate": generated[-1]}

    engine = Reporting(
        on_generate=lambda phase: sensor.load(),
        on_generate_end=lambda phase: sensor.idle(),
    )
    result = orchestrator(sensor, engine).run(config(measurement={"phase_split": True})).result
    assert engine.calls[-1][0] == "prefill_window"
    assert result.effective_parameters == {"last_generate": "measurement"}


def test_a_request_that_generated_nothing_keeps_the_runs_attribution_and_pays_its_prompt() -> None:
    # a static batch of two; request 1 produced no token (no first-token time, no gaps): the
    # run is still attributed, request 1 sharing the prefill step by its prompt tokens
    records = [
        RequestRecord(0, 100, 3, 0.3, ttft_s=0.2, itl_s=[0.05, 0.05], start_s=100.0),
        RequestRecord(1, 100, 0, 0.3, ttft_s=None, itl_s=[], start_s=100.0),
    ]
    attribution, why = time_resolved_attribution(
        records, steady_1kw_counter(99.9, 100.4), (100.0, 100.3), total_energy_j=300.0
    )
    assert why is None and attribution is not None
    energy = {r.request: r for r in attribution.requests}
    assert energy[1].energy_j == pytest.approx(100.0)  # half of the 200 J prefill step
    assert energy[1].decode_energy_j == 0.0
    assert energy[0].energy_j == pytest.approx(200.0)
