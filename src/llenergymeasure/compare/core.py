"""Match the runs of A and B by config and compare each metric: B/A, its interval, a verdict.

Matching: by ``measurement_config_hash`` (equal hashes are the same measurement), or, with
``by`` fields, by the config without those fields (``by=("precision",)`` pairs configs that
are equal apart from their precision). When A and B hold one config each and those do not
match, the two are compared anyway and the fields they differ in are listed.

Per metric (``compare.metrics.METRICS``) and matched config: B/A is the ratio of the geometric
means over the cycles with a Welch t interval on the logs (``results.stats.log_ratio``). The
verdict is ``better``/``worse`` when the interval lies wholly on that side of 1 (the metric's
direction decides which side is better), ``no_difference`` when it holds 1, and
``insufficient_data`` below 3 cycles on a side. ``min_detectable_pct`` is the smallest
difference the test detects with the set power, given the spread these cycles show.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from llenergymeasure.compare.environment import environment_diff
from llenergymeasure.compare.inputs import Run, Side
from llenergymeasure.compare.metrics import METRICS, CompareMetric
from llenergymeasure.compare.models import (
    Comparison,
    MetricComparison,
    PairComparison,
    SideSummary,
    Verdict,
)
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.results.io import flatten
from llenergymeasure.results.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_POWER,
    MIN_CYCLES_FOR_INTERVAL,
    geometric_mean,
    log_ratio,
    log_spread,
    min_detectable_log_ratio,
    no_interval_reason,
    require_scipy,
)

METHOD = (
    "B/A = ratio of the geometric means over the cycles; {level} interval: Welch t on the logs "
    "of the cycle values (positive, and B/A and A/B get reciprocal intervals); verdict better/"
    "worse when the interval lies wholly on that side of 1, no_difference when it holds 1, "
    "insufficient_data below {min_n} cycles on a side; minimum detectable difference: the "
    "smallest B/A the two-sided Welch test detects with {power} power, given the observed "
    "spread."
)


def _flat_config(config: ExperimentConfig) -> dict[str, object]:
    return flatten(config.model_dump(mode="json"))


def _under(key: str, fields: Sequence[str]) -> bool:
    return any(key == f or key.startswith(f + ".") for f in fields)


def check_by_fields(by: Sequence[str], runs: Sequence[Run]) -> None:
    """``ConfigError`` for a ``--by`` field that is not a config field."""
    flats = [_flat_config(r.result.config) for r in runs]
    keys = {k for flat in flats for k in flat}
    known = set(ExperimentConfig.model_fields)
    for field in by:
        top = field.split(".", 1)[0]
        # a nested field may be invisible where its section is unset (e.g. vllm: None)
        unset_section = "." in field and any(flat.get(top, 0) is None for flat in flats)
        if not (
            any(_under(k, [field]) for k in keys)
            or (top in known and ("." not in field or unset_section))
        ):
            raise ConfigError(
                f"llem compare: --by {field}: not a config field",
                hint="name a dotted config key, e.g. --by precision or --by pytorch.batch_size",
            )


def match_key(config: ExperimentConfig, stored_hash: str, by: Sequence[str]) -> str:
    """The key runs are matched on: the stored hash, or a hash of the config without ``by``."""
    if not by:
        return stored_hash
    kept = {k: v for k, v in _flat_config(config).items() if not _under(k, by)}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_runs(side: Side, by: Sequence[str]) -> dict[str, list[Run]]:
    """Runs of ``side`` by matching key, in first-seen order.

    With ``by``, a key holding runs of several configs (configs of one side that differ only
    in ``by`` fields) is a ``ConfigError``: pooling them would mix what is being compared.
    """
    groups: dict[str, list[Run]] = {}
    for run in side.runs:
        key = match_key(run.result.config, run.result.measurement_config_hash, by)
        groups.setdefault(key, []).append(run)
    for runs in groups.values():
        hashes = {r.result.measurement_config_hash for r in runs}
        if len(hashes) > 1:
            values = sorted(
                {
                    f"{k}={v}"
                    for r in runs
                    for k, v in _flat_config(r.result.config).items()
                    if _under(k, by)
                }
            )
            raise ConfigError(
                f"llem compare: {side.name} holds configs that differ only in "
                f"{', '.join(by)} ({', '.join(values)}): matching by config without "
                f"{', '.join(by)} would pool them",
                hint=f"give {side.name} the runs of one value only (e.g. one study per value)",
            )
    return groups


def config_differences(a: ExperimentConfig, b: ExperimentConfig) -> dict[str, list[object]]:
    """Dotted config keys whose values differ between ``a`` and ``b``: ``[a's, b's]``."""
    fa, fb = _flat_config(a), _flat_config(b)
    keys = list(dict.fromkeys([*fa, *fb]))
    return {k: [fa.get(k), fb.get(k)] for k in keys if fa.get(k) != fb.get(k)}


def labels_without(configs: Sequence[ExperimentConfig], by: Sequence[str]) -> list[str]:
    from llenergymeasure.results.io import model_slug
    from llenergymeasure.results.study_statistics import varying_fields

    keys = [k for k in varying_fields(configs) if not _under(k, by)]
    if not keys:
        return [f"{model_slug(c.model)}, {c.backend}, {c.precision}" for c in configs]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = [s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)]
    labels = []
    for config in configs:
        flat = _flat_config(config)
        parts = [
            f"{s}={flat.get(k)}"
            for k, s in zip(keys, short, strict=True)
            if flat.get(k) is not None
        ]
        labels.append(", ".join(parts) or "defaults")
    return labels


def _values(runs: Sequence[Run], metric: CompareMetric) -> list[float]:
    out = []
    for run in runs:
        value = metric.read(run.result)
        if value is not None and math.isfinite(value):
            out.append(float(value))
    return out


def _verdict(low: float, high: float, better: str) -> Verdict:
    if low > 1.0:
        return "worse" if better == "lower" else "better"
    if high < 1.0:
        return "better" if better == "lower" else "worse"
    return "no_difference"


def compare_metric(
    metric: CompareMetric,
    a: Sequence[Run],
    b: Sequence[Run],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> MetricComparison | None:
    """The comparison of one metric over two groups of runs (None: neither side measured it)."""
    va, vb = _values(a, metric), _values(b, metric)
    if not va and not vb:
        return None
    base = {
        "metric": metric.key,
        "label": metric.label,
        "unit": metric.unit,
        "better": metric.better,
        "n_a": len(va),
        "n_b": len(vb),
        "mean_a": sum(va) / len(va) if va else None,
        "mean_b": sum(vb) / len(vb) if vb else None,
    }
    sa, sb = log_spread(va), log_spread(vb)
    base["spread_a_pct"] = None if sa is None else sa * 100.0
    base["spread_b_pct"] = None if sb is None else sb * 100.0
    ga, gb = geometric_mean(va), geometric_mean(vb)
    point = gb / ga if ga is not None and gb is not None else None
    short = [
        (name, n) for name, n in (("A", len(va)), ("B", len(vb))) if n < MIN_CYCLES_FOR_INTERVAL
    ]
    note: str | None = None
    if short:
        note = "; ".join(f"{name}: {no_interval_reason(n)}" for name, n in short)
    elif point is None:
        note = "a value is <= 0: no ratio on the log scale"
    if note is not None:
        return MetricComparison(
            **base,
            ratio=point,
            ci_low=None,
            ci_high=None,
            verdict="insufficient_data",
            min_detectable_pct=None,
            note=note,
        )
    est = log_ratio(va, vb, confidence)
    mdd = min_detectable_log_ratio(est.se_log, est.df, confidence, power)
    return MetricComparison(
        **base,
        ratio=est.ratio,
        ci_low=est.low,
        ci_high=est.high,
        verdict=_verdict(est.low, est.high, metric.better),
        min_detectable_pct=math.expm1(mdd) * 100.0,
        note="neither side varies over its cycles: the ratio is exact" if est.df is None else None,
    )


def compare_sides(
    a: Side,
    b: Side,
    *,
    by: Sequence[str] = (),
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
    metrics: Sequence[CompareMetric] = METRICS,
) -> Comparison:
    """Compare every matched config of ``a`` and ``b`` on ``metrics``.

    ``ConfigError`` (a usage error) when nothing matches and the sides do not hold exactly
    one config each, or when ``by`` names no config field or would pool configs of one side.
    """
    require_scipy("llem compare")
    by = list(dict.fromkeys(by))
    check_by_fields(by, [*a.runs, *b.runs])
    groups_a, groups_b = group_runs(a, by), group_runs(b, by)
    notes: list[str] = []
    pairs_keys = _matched_keys(groups_a, groups_b, by, notes)
    configs = [groups_a[ka][0].result.config for ka, _ in pairs_keys]
    labels = labels_without(configs, by)
    pairs = [
        _compare_pair(groups_a[ka], groups_b[kb], label, metrics, confidence, power)
        for (ka, kb), label in zip(pairs_keys, labels, strict=True)
    ]
    matched_a = {ka for ka, _ in pairs_keys}
    matched_b = {kb for _, kb in pairs_keys}
    unmatched_a = [k for k in groups_a if k not in matched_a]
    unmatched_b = [k for k in groups_b if k not in matched_b]
    level = f"{confidence * 100:g} %"
    return Comparison(
        confidence=confidence,
        power=power,
        method=METHOD.format(
            level=level, min_n=MIN_CYCLES_FOR_INTERVAL, power=f"{power * 100:g} %"
        ),
        matched_by=f"config without {', '.join(by)}" if by else "measurement_config_hash",
        a=SideSummary(
            paths=[str(p) for p in a.paths], runs=len(a.runs), configs=len(groups_a), notes=a.notes
        ),
        b=SideSummary(
            paths=[str(p) for p in b.paths], runs=len(b.runs), configs=len(groups_b), notes=b.notes
        ),
        environment=environment_diff(a.runs, b.runs),
        pairs=pairs,
        unmatched_a=[_unmatched_label(groups_a[k]) for k in unmatched_a],
        unmatched_b=[_unmatched_label(groups_b[k]) for k in unmatched_b],
        notes=notes,
    )


def _matched_keys(
    groups_a: Mapping[str, Sequence[Run]],
    groups_b: Mapping[str, Sequence[Run]],
    by: Sequence[str],
    notes: list[str],
) -> list[tuple[str, str]]:
    """The (A, B) group keys to compare: the keys both sides hold, else the one config of each
    side (with a note saying how they differ); ``ConfigError`` when neither applies."""
    keys = [k for k in groups_a if k in groups_b]
    pairs_keys: list[tuple[str, str]] = [(k, k) for k in keys]
    if not keys:
        if len(groups_a) == 1 and len(groups_b) == 1:
            (ka,), (kb,) = list(groups_a), list(groups_b)
            pairs_keys = [(ka, kb)]
            differs = config_differences(
                groups_a[ka][0].result.config, groups_b[kb][0].result.config
            )
            notes.append(
                "A and B hold one config each and they do not match; compared anyway. They "
                f"differ in: {', '.join(differs) or 'nothing but the hash'}"
            )
        else:
            raise ConfigError(
                f"llem compare: no config of A matches a config of B (A has {len(groups_a)}, "
                f"B has {len(groups_b)} distinct configs"
                + (f" without {', '.join(by)}" if by else "")
                + ")",
                hint="--by FIELD compares configs that are equal apart from FIELD "
                "(e.g. --by precision)",
            )
    return pairs_keys


def _compare_pair(
    ra: Sequence[Run],
    rb: Sequence[Run],
    label: str,
    metrics: Sequence[CompareMetric],
    confidence: float,
    power: float,
) -> PairComparison:
    """One matched config's runs on each side, compared on ``metrics``."""
    rows = [
        row
        for m in metrics
        if (row := compare_metric(m, ra, rb, confidence=confidence, power=power)) is not None
    ]
    return PairComparison(
        label=label,
        hash_a=ra[0].result.measurement_config_hash,
        hash_b=rb[0].result.measurement_config_hash,
        differs=config_differences(ra[0].result.config, rb[0].result.config),
        runs_a=len(ra),
        runs_b=len(rb),
        metrics=rows,
    )


def _unmatched_label(runs: Sequence[Run]) -> str:
    c = runs[0].result.config
    config_hash = runs[0].result.measurement_config_hash
    return f"{c.model} {c.backend} {c.precision} [{config_hash}], {len(runs)} run(s)"
