"""Report test data: synthetic studies (``compare_data``'s schema-valid results) with extra
fields varied, energy removed, power timeseries written, and figures caught before saving."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compare_data as data
import pytest

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.models import ExperimentResult


def varied(result: ExperimentResult, **fields: Any) -> ExperimentResult:
    """``result`` with top-level config fields replaced (``n=64``, ``model="..."``), rehashed;
    ``n`` sets the synthetic dataset's ``n`` too."""
    values = result.config.model_dump(mode="json")
    values.update(fields)
    if "n" in fields:
        values["dataset"] = {**values["dataset"], "n": fields["n"]}
    config = ExperimentConfig.model_validate(values)
    return result.model_copy(
        update={"config": config, "measurement_config_hash": measurement_config_hash(config)}
    )


def with_pytorch(result: ExperimentResult, **fields: Any) -> ExperimentResult:
    """``result`` with fields of its ``pytorch`` section replaced, rehashed."""
    values = result.config.model_dump(mode="json")
    values["pytorch"] = {**values["pytorch"], **fields}
    config = ExperimentConfig.model_validate(values)
    return result.model_copy(
        update={"config": config, "measurement_config_hash": measurement_config_hash(config)}
    )


def without_energy(result: ExperimentResult) -> ExperimentResult:
    """``result`` as a machine without an energy sensor records it."""
    energy = result.energy.model_copy(
        update={
            "available": False,
            "backend": "none",
            "method": "unavailable",
            "total_j": None,
            "per_device": [],
            "counter_energy_j": None,
            "poll_energy_j": None,
            "counter_vs_poll_diff_pct": None,
            "baseline": None,
            "baseline_power_w": None,
            "baseline_energy_j": None,
            "adjusted_j": None,
        }
    )
    return result.model_copy(
        update={
            "energy": energy,
            "energy_total_j": None,
            "energy_adjusted_j": None,
            "energy_per_output_token_j": None,
            "energy_per_output_token_adjusted_j": None,
            "mean_power_w": None,
            "energy_attribution": None,
            "phase_split": None,
            "requests": [q.model_copy(update={"energy_j": None}) for q in result.requests],
        }
    )


def grid(
    batch_sizes: Sequence[int],
    precisions: Sequence[str],
    cycles: int,
    *,
    n_for_batch: dict[int, int] | None = None,
) -> list[ExperimentResult]:
    """One result per (batch size, precision, cycle) with seeded tokens/s and J/token."""
    out = []
    for i, (bs, precision) in enumerate((b, p) for p in precisions for b in batch_sizes):
        tok_s = data.cycles(200.0 * bs * (1.3 if precision == "fp16" else 1.0), 0.1, cycles, i)
        jpt = data.cycles(1.0 / bs, 0.1, cycles, 100 + i)
        for t, j in zip(tok_s, jpt, strict=True):
            r = data.result(tok_s=t, j=j, batch_size=bs, precision=precision)
            if n_for_batch is not None:
                r = varied(r, n=n_for_batch[bs])
            out.append(r)
    return out


# phases of a run with the differential split: (phase, seconds, watts)
SPLIT_RUN_PHASES: tuple[tuple[str, float, float], ...] = (
    ("baseline", 3.0, 80.0),
    ("load", 2.0, 120.0),
    ("warmup", 2.0, 400.0),
    ("thermal_floor", 1.0, 130.0),
    ("measurement", 4.0, 450.0),
    ("warmup", 0.5, 300.0),
    ("thermal_floor", 1.0, 130.0),
    ("prefill_window", 1.0, 350.0),
    ("cooldown", 0.5, 120.0),
)


def write_timeseries(
    run_dir: Path, phases: Sequence[tuple[str, float, float]] = SPLIT_RUN_PHASES, dt: float = 0.1
) -> Path:
    """A ``timeseries.parquet`` with the given phases at constant power, one device."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, list[Any]] = {k: [] for k in ("t_s", "device_index", "phase", "power_w")}
    rows["temperature_c"] = []
    t = 0.0
    for phase, seconds, watts in phases:
        for _ in range(round(seconds / dt)):
            rows["t_s"].append(round(t, 6))
            rows["device_index"].append(0)
            rows["phase"].append(phase)
            rows["power_w"].append(watts)
            rows["temperature_c"].append(40.0)
            t += dt
    path = run_dir / "timeseries.parquet"
    pq.write_table(pa.table(rows), path)
    return path


@dataclass
class Drawn:
    """Figures caught as they were saved, by file name."""

    figures: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        matches = [k for k in self.figures if k.endswith(name)]
        assert len(matches) == 1, (name, sorted(self.figures))
        return self.figures[matches[0]]


@contextmanager
def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[Drawn]:
    """Keep every figure the report modules save (the PNGs are still written)."""
    from llenergymeasure.report import (
        latency_plot,
        phase_plots,
        plots,
        sweep_plot,
        timeline_plots,
    )

    caught = Drawn()
    for module in (plots, sweep_plot, latency_plot, timeline_plots, phase_plots):
        real = module.save_figure

        def keep(fig: Any, path: Path, real: Any = real) -> Path:
            caught.figures[Path(path).name] = fig
            return real(fig, path)

        monkeypatch.setattr(module, "save_figure", keep)
    yield caught


def axis_texts(fig: Any) -> list[str]:
    """Every axis label, title and tick label of a figure, and its suptitle."""
    texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title(), ax.get_title("left")]
    return [t for t in texts if t]


def legend_texts(fig: Any) -> list[str]:
    """The labels of the figure's legends."""
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def labelled_lines(ax: Any) -> list[Any]:
    """The lines of ``ax`` that carry a legend label."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]
