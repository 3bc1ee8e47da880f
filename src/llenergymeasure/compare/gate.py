"""``--fail-if-worse METRIC=PCT``: a regression gate for CI on top of a comparison.

A check fails when B is worse than A by more than PCT % with confidence: for a metric where
lower is better, the interval's lower bound of B/A lies above ``1 + PCT/100``; where higher is
better, its upper bound lies below ``1 - PCT/100``. That is a one-sided test at level
``(1 - confidence) / 2`` (2.5 % for the default 95 % interval). A check that has no interval
(fewer than 3 cycles on a side, not measured) is ``unevaluable``.

Exit codes: ``EXIT_PASS`` 0, ``EXIT_FAIL`` 1 (a check failed), ``EXIT_UNEVALUABLE`` 2 (no check
failed but one could not be evaluated: the data cannot support the gate, a usage error).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llenergymeasure.compare.metrics import METRICS_BY_KEY
from llenergymeasure.compare.models import Comparison, GateCheck
from llenergymeasure.exceptions import ConfigError

EXIT_PASS, EXIT_FAIL, EXIT_UNEVALUABLE = 0, 1, 2

_SPEC = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*%?\s*$")


def parse_gate(specs: Sequence[str]) -> list[tuple[str, float]]:
    """``["tokens_per_s=5", ...]`` as ``[(metric, pct), ...]``; ``ConfigError`` when malformed."""
    out = []
    for spec in specs:
        match = _SPEC.match(spec)
        if match is None:
            raise ConfigError(
                f"--fail-if-worse {spec!r}: expected METRIC=PCT, e.g. tokens_per_s=5",
                hint=f"metrics: {', '.join(METRICS_BY_KEY)}",
            )
        key, pct = match.group(1), float(match.group(2))
        if key not in METRICS_BY_KEY:
            raise ConfigError(
                f"--fail-if-worse {spec!r}: {key!r} is not a compared metric",
                hint=f"metrics: {', '.join(METRICS_BY_KEY)}",
            )
        if pct >= 100.0:
            raise ConfigError(f"--fail-if-worse {spec!r}: PCT must be below 100")
        out.append((key, pct))
    return out


def evaluate_gate(comparison: Comparison, checks: Sequence[tuple[str, float]]) -> Comparison:
    """``comparison`` with ``gate`` (one check per metric and matched config) and
    ``exit_code`` set."""
    results: list[GateCheck] = []
    for key, pct in checks:
        seen = False
        for pair in comparison.pairs:
            row = next((m for m in pair.metrics if m.metric == key), None)
            if row is None:
                continue
            seen = True
            if row.ci_low is None or row.ci_high is None:
                results.append(
                    GateCheck(
                        metric=key,
                        pct=pct,
                        pair=pair.label,
                        status="unevaluable",
                        reason=f"no interval ({row.note or 'insufficient data'})",
                    )
                )
                continue
            if row.better == "lower":
                limit = 1.0 + pct / 100.0
                failed = row.ci_low > limit
                reason = (
                    f"B/A {row.ratio:.4f}, interval [{row.ci_low:.4f}, {row.ci_high:.4f}]: lower "
                    f"bound {'above' if failed else 'not above'} {limit:.4f} (lower is better)"
                )
            else:
                limit = 1.0 - pct / 100.0
                failed = row.ci_high < limit
                reason = (
                    f"B/A {row.ratio:.4f}, interval [{row.ci_low:.4f}, {row.ci_high:.4f}]: upper "
                    f"bound {'below' if failed else 'not below'} {limit:.4f} (higher is better)"
                )
            results.append(
                GateCheck(
                    metric=key,
                    pct=pct,
                    pair=pair.label,
                    status="fail" if failed else "pass",
                    reason=reason,
                )
            )
        if not seen:
            results.append(
                GateCheck(
                    metric=key,
                    pct=pct,
                    pair="(all)",
                    status="unevaluable",
                    reason="no matched config measured this metric",
                )
            )
    if any(r.status == "fail" for r in results):
        code = EXIT_FAIL
    elif any(r.status == "unevaluable" for r in results):
        code = EXIT_UNEVALUABLE
    else:
        code = EXIT_PASS
    return comparison.model_copy(update={"gate": results, "exit_code": code})
