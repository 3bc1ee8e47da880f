"""How many cycles a study needs to detect a chosen difference, from the spread already seen.

For each config and metric: the spread of the earlier runs (standard deviation of the logs,
about the CV) and the cycles per side at which the two-sided Welch test on the logs
(``llem compare``'s) detects a ``detect_pct`` % difference, either way, with 80 % power at the
5 % level (``results.stats.cycles_needed``). With one earlier side, the other side is assumed
to vary as much. Used by ``llem compare --plan`` and ``llem run --dry-run --plan-from DIR``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure.compare.core import group_runs, labels_without
from llenergymeasure.compare.inputs import Run, Side
from llenergymeasure.compare.metrics import METRICS, CompareMetric
from llenergymeasure.results.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_POWER,
    MAX_PLANNED_CYCLES,
    cycles_needed,
    log_spread,
    require_scipy,
)
from llenergymeasure.text_table import render_table

DEFAULT_DETECT_PCT = 5.0

_FORBID = ConfigDict(extra="forbid")


class PlanRow(BaseModel):
    """One config and metric: the spread seen and the cycles needed."""

    model_config = _FORBID

    config: str = Field(description="Config label.")
    config_hash: str = Field(description="measurement_config_hash of the earlier runs.")
    metric: str = Field(description="Metric key.")
    label: str = Field(description="What the metric is.")
    runs: int = Field(description="Earlier runs that reported it (A and B together).")
    spread_pct: float | None = Field(
        description="Spread seen: sd of the logs x 100 (about the CV in %); with A and B, the "
        "larger."
    )
    cycles_needed: int | None = Field(
        description="Cycles per side to detect detect_pct (None: fewer than 2 runs, or more "
        "than the planning limit)."
    )
    note: str | None = Field(None, description="Why there is no figure, or a caveat.")


class Plan(BaseModel):
    """Cycles needed per config and metric to detect ``detect_pct``."""

    model_config = _FORBID

    detect_pct: float = Field(description="The difference to detect, %.")
    confidence: float = Field(description="1 - the test's level.")
    power: float = Field(description="Probability of detecting it.")
    rows: list[PlanRow] = Field(default_factory=list, description="One per config and metric.")


def _spread(runs: Sequence[Run], metric: CompareMetric) -> tuple[int, float | None]:
    values = [v for r in runs if (v := metric.read(r.result)) is not None and math.isfinite(v)]
    return len(values), log_spread(values)


def plan_row(
    label: str,
    config_hash: str,
    metric: CompareMetric,
    runs_a: Sequence[Run],
    runs_b: Sequence[Run] | None,
    detect_pct: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> PlanRow | None:
    """The plan of one metric of one config (None when no earlier run reported it)."""
    n_a, sd_a = _spread(runs_a, metric)
    n_b, sd_b = _spread(runs_b, metric) if runs_b is not None else (0, sd_a)
    runs = n_a + n_b
    if runs == 0:
        return None
    base = {
        "config": label,
        "config_hash": config_hash,
        "metric": metric.key,
        "label": metric.label,
    }
    if sd_a is None or sd_b is None:
        return PlanRow(
            **base,
            runs=runs,
            spread_pct=None,
            cycles_needed=None,
            note="needs at least 2 earlier runs (all > 0) on each side to see a spread",
        )
    needed = cycles_needed(sd_a, sd_b, detect_pct, confidence=confidence, power=power)
    note = None
    if needed is None:
        note = f"more than {MAX_PLANNED_CYCLES} cycles"
    elif min(n_a, n_b if runs_b is not None else n_a) < 3:
        note = "spread from 2 runs: a rough guide"
    return PlanRow(
        **base,
        runs=runs,
        spread_pct=max(sd_a, sd_b) * 100.0,
        cycles_needed=needed,
        note=note,
    )


def plan_cycles(
    a: Side,
    b: Side | None = None,
    *,
    detect_pct: float = DEFAULT_DETECT_PCT,
    by: Sequence[str] = (),
    metrics: Sequence[CompareMetric] = METRICS,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> Plan:
    """Cycles needed per config of ``a`` (matched with ``b`` when given) and metric."""
    require_scipy("llem compare --plan")
    if not 0 < detect_pct < 100:
        from llenergymeasure.exceptions import ConfigError

        raise ConfigError(f"--detect {detect_pct:g}: give a difference in % between 0 and 100")
    groups_a = group_runs(a, by)
    groups_b = group_runs(b, by) if b is not None else {}
    keys = list(groups_a)
    labels = labels_without([groups_a[k][0].result.config for k in keys], by)
    rows: list[PlanRow] = []
    for key, label in zip(keys, labels, strict=True):
        runs_b = groups_b.get(key) if b is not None else None
        if b is not None and runs_b is None:
            continue
        for metric in metrics:
            row = plan_row(
                label,
                groups_a[key][0].result.measurement_config_hash,
                metric,
                groups_a[key],
                runs_b,
                detect_pct,
                confidence=confidence,
                power=power,
            )
            if row is not None:
                rows.append(row)
    return Plan(detect_pct=detect_pct, confidence=confidence, power=power, rows=rows)


def plan_text(plan: Plan) -> str:
    """The plan as plain text."""
    lines = [
        f"cycles per side to detect a {plan.detect_pct:g} % difference (either way) with "
        f"{plan.power * 100:g} % power at the {(1 - plan.confidence) * 100:g} % level "
        "(Welch t on the logs, as llem compare), from the spread of the earlier runs",
    ]
    configs: dict[tuple[str, str], list[list[str]]] = {}
    for row in plan.rows:
        configs.setdefault((row.config, row.config_hash), []).append(
            [
                row.label,
                str(row.runs),
                "n/a" if row.spread_pct is None else f"{row.spread_pct:.2f}",
                "n/a" if row.cycles_needed is None else str(row.cycles_needed),
                f"({row.note})" if row.note else "",
            ]
        )
    for (config, config_hash), rows in configs.items():
        lines += ["", f"config {config}  [{config_hash}]"]
        lines.append(
            render_table(
                ["metric", "runs", "spread %", "cycles", ""],
                rows,
                justify=["left", "right", "right", "right", "left"],
            )
        )
    if not plan.rows:
        lines.append("  (no earlier runs to plan from)")
    return "\n".join(lines)


#: What the study dry-run plans for: the headline energy and throughput metrics.
DRY_RUN_METRICS = ("j_per_token", "tokens_per_s")


def plan_for_configs(
    configs: Sequence[tuple[str, str]],
    previous: Side,
    *,
    detect_pct: float = DEFAULT_DETECT_PCT,
    metric_keys: Sequence[str] = DRY_RUN_METRICS,
) -> Plan:
    """Cycles needed for each of ``configs`` (``(label, measurement_config_hash)``) from the
    spread of ``previous``'s runs of the same config; a config with no earlier runs gets the
    largest spread seen among ``previous``'s configs (noted as such)."""
    from llenergymeasure.compare.metrics import METRICS_BY_KEY

    require_scipy("--plan-from")
    groups = group_runs(previous, ())
    rows: list[PlanRow] = []
    for key in metric_keys:
        metric = METRICS_BY_KEY[key]
        # the worst spread any earlier config showed: the fallback for new configs
        fallback: tuple[float, list[Run]] | None = None
        for runs in groups.values():
            _, sd = _spread(runs, metric)
            if sd is not None and (fallback is None or sd > fallback[0]):
                fallback = (sd, list(runs))
        for label, config_hash in configs:
            found = groups.get(config_hash)
            note = None
            if found is not None:
                runs = found
            else:
                if fallback is None:
                    rows.append(
                        PlanRow(
                            config=label,
                            config_hash=config_hash,
                            metric=key,
                            label=metric.label,
                            runs=0,
                            spread_pct=None,
                            cycles_needed=None,
                            note="no earlier runs with a spread to plan from",
                        )
                    )
                    continue
                runs = fallback[1]
                note = "no earlier runs of this config: the largest spread seen in the others"
            row = plan_row(label, config_hash, metric, runs, None, detect_pct)
            if row is not None:
                if note is not None:
                    row = row.model_copy(
                        update={"note": note if row.note is None else f"{note}; {row.note}"}
                    )
                rows.append(row)
    rows.sort(key=lambda r: [c for _, c in configs].index(r.config_hash))
    return Plan(
        detect_pct=detect_pct, confidence=DEFAULT_CONFIDENCE, power=DEFAULT_POWER, rows=rows
    )
