"""What ``llem compare`` finds, as data (``--json`` prints ``Comparison``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["better", "worse", "no_difference", "insufficient_data"]

_FORBID = ConfigDict(extra="forbid")


class MetricComparison(BaseModel):
    """One metric of one matched config: A and B across their cycles, and B/A."""

    model_config = _FORBID

    metric: str = Field(description="Metric key (as in --fail-if-worse).")
    label: str = Field(description="What it is.")
    unit: str = Field(description="Unit of mean_a and mean_b.")
    better: Literal["lower", "higher"] = Field(description="Which direction is better.")
    n_a: int = Field(description="Runs of A that reported it.")
    n_b: int = Field(description="Runs of B that reported it.")
    mean_a: float | None = Field(description="Mean over A's runs.")
    mean_b: float | None = Field(description="Mean over B's runs.")
    ratio: float | None = Field(
        description="B/A: ratio of the geometric means over the cycles (None: not measured)."
    )
    ci_low: float | None = Field(description="Lower bound of the interval of B/A.")
    ci_high: float | None = Field(description="Upper bound of the interval of B/A.")
    verdict: Verdict = Field(
        description="better / worse: the interval lies wholly on that side of 1; "
        "no_difference: it holds 1; insufficient_data: fewer than 3 cycles on a side, or a "
        "value <= 0."
    )
    spread_a_pct: float | None = Field(
        None, description="A's cycle-to-cycle spread: sd of the logs x 100 (about the CV in %)."
    )
    spread_b_pct: float | None = Field(None, description="B's spread, likewise.")
    min_detectable_pct: float | None = Field(
        description="Smallest difference, in %, that these cycles detect with the set power "
        "(0: neither side varies)."
    )
    note: str | None = Field(None, description="Why there is no interval, or a caveat.")


class PairComparison(BaseModel):
    """One config of A matched with one config of B."""

    model_config = _FORBID

    label: str = Field(description="What distinguishes this config among the compared ones.")
    hash_a: str = Field(description="measurement_config_hash of A's runs.")
    hash_b: str = Field(description="measurement_config_hash of B's runs.")
    differs: dict[str, list[Any]] = Field(
        default_factory=dict, description="Config fields whose value differs: [A's, B's]."
    )
    runs_a: int = Field(description="Runs of A.")
    runs_b: int = Field(description="Runs of B.")
    metrics: list[MetricComparison] = Field(default_factory=list, description="Each metric.")


class EnvironmentRow(BaseModel):
    """One line of the environment diff: A's and B's values, and whether they differ."""

    model_config = _FORBID

    name: str = Field(description="What is compared.")
    a: str = Field(description="A's value(s).")
    b: str = Field(description="B's value(s).")
    differs: bool = Field(description="True when A and B differ in it.")
    rule: str = Field("", description="When numeric values count as different.")


class GateCheck(BaseModel):
    """One ``--fail-if-worse METRIC=PCT`` on one matched config."""

    model_config = _FORBID

    metric: str = Field(description="Metric key.")
    pct: float = Field(description="Allowed worsening, %.")
    pair: str = Field(description="Label of the matched config.")
    status: Literal["pass", "fail", "unevaluable"] = Field(
        description="fail: B is worse than A by more than pct with confidence; unevaluable: "
        "no interval (fewer than 3 cycles, not measured)."
    )
    reason: str = Field(description="The numbers behind the status.")


class SideSummary(BaseModel):
    """The paths of one side and what was found in them."""

    model_config = _FORBID

    paths: list[str] = Field(description="Paths given.")
    runs: int = Field(description="Runs found.")
    configs: int = Field(description="Distinct configs (matching keys) among them.")
    notes: list[str] = Field(default_factory=list, description="Runs left out, and why.")


class Comparison(BaseModel):
    """The whole comparison of A and B."""

    model_config = _FORBID

    confidence: float = Field(description="Confidence level of the intervals.")
    power: float = Field(description="Power for the minimum detectable difference.")
    method: str = Field(description="How the intervals and verdicts are computed.")
    matched_by: str = Field(description="How runs of A and B were matched.")
    a: SideSummary = Field(description="Side A.")
    b: SideSummary = Field(description="Side B.")
    environment: list[EnvironmentRow] = Field(
        default_factory=list, description="Environment diff (first in every output)."
    )
    pairs: list[PairComparison] = Field(default_factory=list, description="Matched configs.")
    unmatched_a: list[str] = Field(default_factory=list, description="Configs only in A.")
    unmatched_b: list[str] = Field(default_factory=list, description="Configs only in B.")
    notes: list[str] = Field(default_factory=list, description="Caveats.")
    gate: list[GateCheck] = Field(
        default_factory=list, description="--fail-if-worse checks (empty without any)."
    )
    exit_code: int = Field(
        0, description="0 pass, 1 a gate check failed, 2 a gated metric could not be evaluated."
    )
