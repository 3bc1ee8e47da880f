"""Flat-table columns for where the joules go (issue 16): the phase split, the time-resolved
attribution and the energy components, for ``ExperimentResult.summary_row`` and the flat
parquet.

``phase_columns`` always returns the same keys (``None`` where a figure is missing), so flat
tables of runs with and without these measurements share one schema.
"""

from __future__ import annotations

import statistics
from typing import Any

from llenergymeasure.energy.components import ComponentName, EnergyComponents
from llenergymeasure.phase_split.attribution import EnergyAttribution
from llenergymeasure.phase_split.differential import PhaseSplit

__all__ = ["PHASE_COLUMNS", "phase_columns"]

_SPLIT_FIELDS = (
    "energy_prefill_j",
    "energy_decode_j",
    "j_per_input_token_prefill",
    "j_per_decode_token",
    "share_prefill",
    "energy_prefill_adjusted_j",
    "energy_decode_adjusted_j",
    "j_per_input_token_prefill_adjusted",
    "j_per_decode_token_adjusted",
    "share_prefill_adjusted",
)

PHASE_COLUMNS: tuple[str, ...] = (
    "phase_split_method",
    *_SPLIT_FIELDS,
    "time_resolved_energy_prefill_j",
    "time_resolved_energy_decode_j",
    "time_resolved_share_prefill",
    "time_resolved_vs_differential_prefill_pct",
    "attribution_confidence",
    "request_energy_mean_j",
    "request_energy_p50_j",
    "request_energy_max_j",
    "energy_cpu_j",
    "energy_cpu_method",
    "energy_dram_j",
    "energy_dram_method",
    "energy_total_with_host_j",
)


def phase_columns(
    split: PhaseSplit | None = None,
    attribution: EnergyAttribution | None = None,
    components: EnergyComponents | None = None,
) -> dict[str, Any]:
    """One flat row's columns from whichever of the three were measured (``PHASE_COLUMNS``).

    ``time_resolved_vs_differential_prefill_pct`` = (time-resolved - differential) /
    differential x 100 for the prefill energy, when both exist (the issue's agreement check).
    """
    row: dict[str, Any] = dict.fromkeys(PHASE_COLUMNS)
    if split is not None:
        row["phase_split_method"] = split.method
        for name in _SPLIT_FIELDS:
            row[name] = getattr(split, name)
    if attribution is not None:
        row["time_resolved_energy_prefill_j"] = attribution.energy_prefill_j
        row["time_resolved_energy_decode_j"] = attribution.energy_decode_j
        row["time_resolved_share_prefill"] = attribution.share_prefill
        row["attribution_confidence"] = attribution.confidence
        energies = [r.energy_j for r in attribution.requests]
        if energies:
            row["request_energy_mean_j"] = statistics.fmean(energies)
            row["request_energy_p50_j"] = statistics.median(energies)
            row["request_energy_max_j"] = max(energies)
        if split is not None and split.energy_prefill_j > 0:
            row["time_resolved_vs_differential_prefill_pct"] = (
                (attribution.energy_prefill_j - split.energy_prefill_j)
                / split.energy_prefill_j
                * 100.0
            )
    if components is not None:
        host: tuple[ComponentName, ...] = ("cpu", "dram")
        for name in host:
            c = components.component(name)
            if c is not None:
                row[f"energy_{name}_j"] = c.energy_j
                row[f"energy_{name}_method"] = c.method
        row["energy_total_with_host_j"] = components.total_with_host_j
    return row
