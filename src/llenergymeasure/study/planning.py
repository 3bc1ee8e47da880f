"""A study's plan: run order, engine groups, gaps (pure functions, no processes).

Order (``execution.cycle_order``): ``sequential`` = all cycles of A, then B...; ``interleaved``
= A B C, A B C; ``shuffled`` = each cycle in a random order drawn from ``shuffle_seed``.

Engine reuse is decided per engine (``resolve_engine_reuse``): ``execution.reuse_engine`` of
the study (or ``--reuse-engine`` / ``--no-reuse-engine``), else the user config's, else the
engine's own default from the catalogue (on where reuse is proven equivalent on hardware,
``EngineSpec.reuse_proven``). A study mixing engines may reuse one engine and not another.

Engine groups (engines that reuse): runs whose configs have the same ``engine_load_key`` share
one loaded engine. The groups run one after another, in the order in which each first appears
in the cycle order; within a group the cycle order applies as it is. Runs of engines that do not
reuse, and online runs (``mode: online``: each starts and stops its own server, or uses its
endpoint), belong to no group and keep their place in the cycle order. The manifest's positions
(and run ids) are this order.

Gaps: before each run after the first of a session, ``cycle_gap_seconds`` when the run starts a
new pass over the grid (its cycle differs from the previous run's, in interleaved/shuffled
order) and ``config_gap_seconds`` otherwise. ``None`` gaps come from the user config.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from llenergymeasure.config.catalogue import engine_load_key, engine_spec
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import ExecutionConfig, StudyConfig
from llenergymeasure.study.manifest import RunEntry, StudyManifest

__all__ = [
    "BASELINE_CACHE_NAME",
    "EngineGroup",
    "ReuseDecision",
    "engine_groups",
    "gap_before",
    "manifest_engine_reuse",
    "plan_runs",
    "resolve_engine_reuse",
    "resolve_gaps",
    "reuse_key",
    "reuse_map",
    "run_order",
]

BASELINE_CACHE_NAME = ".baseline_cache.json"


def run_order(n_configs: int, execution: ExecutionConfig) -> list[tuple[int, int]]:
    """``(config_index, cycle)`` pairs in cycle order (engine groups ignored); 1-based cycles."""
    cycles = range(1, execution.n_cycles + 1)
    configs = list(range(n_configs))
    if execution.cycle_order == "sequential":
        return [(i, c) for i in configs for c in cycles]
    if execution.cycle_order == "interleaved":
        return [(i, c) for c in cycles for i in configs]
    rng = random.Random(execution.shuffle_seed)
    order: list[tuple[int, int]] = []
    for c in cycles:
        perm = list(configs)
        rng.shuffle(perm)
        order.extend((i, c) for i in perm)
    return order


def grouped_order(
    experiments: Sequence[ExperimentConfig],
    execution: ExecutionConfig,
    reuse: bool | Mapping[str, bool],
) -> list[tuple[int, int]]:
    """``run_order``, then stably regrouped by engine-load key for the engines that reuse
    (``reuse``: every engine, or per engine name)."""
    order = run_order(len(experiments), execution)
    keys = [reuse_key(c) if _reuses(reuse, c) else None for c in experiments]
    if all(key is None for key in keys):
        return order
    first: dict[str, int] = {}
    for position, (i, _) in enumerate(order):
        key = keys[i]
        if key is not None:
            first.setdefault(key, position)

    def rank(item: tuple[int, tuple[int, int]]) -> int:
        position, (i, _) = item
        key = keys[i]
        return position if key is None else first[key]

    return [pair for _, pair in sorted(enumerate(order), key=rank)]  # sorted() is stable


def reuse_key(config: ExperimentConfig) -> str | None:
    """The engine group of ``config``: its ``engine_load_key``; ``None`` for an online run."""
    return None if config.mode == "online" else engine_load_key(config)


def _reuses(reuse: bool | Mapping[str, bool], config: ExperimentConfig) -> bool:
    on = reuse if isinstance(reuse, bool) else reuse.get(config.backend, False)
    return bool(on) and config.mode == "offline"


#: ``ReuseDecision.source`` when no setting decided and the engine's catalogue default did.
ENGINE_DEFAULT = "engine default"


@dataclass(frozen=True)
class ReuseDecision:
    """Whether one engine's offline runs in a study share a loaded engine, and what decided it:
    ``source`` names the setting, or is ``ENGINE_DEFAULT`` with the engine's ``evidence``."""

    engine: str
    reuse: bool
    source: str
    evidence: str = ""

    def describe(self) -> str:
        """One line for ``--dry-run``: ``vllm: on (engine default: proven: ...)``."""
        state = "on" if self.reuse else "off"
        if self.source == ENGINE_DEFAULT:
            return f"{self.engine}: {state} ({ENGINE_DEFAULT}: {self.evidence})"
        return f"{self.engine}: {state} ({self.source})"


def resolve_engine_reuse(
    execution: ExecutionConfig, engines: Iterable[str]
) -> dict[str, ReuseDecision]:
    """Per engine name: reuse on or off, and why (see the module docstring).

    ``execution.reuse_engine`` (the study's, where ``--reuse-engine`` / ``--no-reuse-engine``
    also land) applies to every engine; else the user config's ``execution.reuse_engine``;
    where both are None, each engine's catalogue default (``EngineSpec.reuse_proven``).
    """
    names = list(dict.fromkeys(engines))
    if execution.reuse_engine is not None:
        source = "set for this study: execution.reuse_engine or --reuse-engine/--no-reuse-engine"
        return {n: ReuseDecision(n, execution.reuse_engine, source) for n in names}
    from llenergymeasure.config.user_config import effective_settings

    setting = effective_settings()["execution.reuse_engine"]
    if setting.value is not None:
        source = f"execution.reuse_engine in the {setting.source}"
        return {n: ReuseDecision(n, bool(setting.value), source) for n in names}
    decisions: dict[str, ReuseDecision] = {}
    for name in names:
        spec = engine_spec(name)
        decisions[name] = ReuseDecision(
            name, spec.reuse_proven, ENGINE_DEFAULT, spec.reuse_evidence
        )
    return decisions


def manifest_engine_reuse(manifest: StudyManifest) -> dict[str, bool]:
    """Engine name -> reuse on/off for the study of ``manifest``: its ``engine_reuse``, or for a
    manifest without one (written before per-engine defaults) ``execution.reuse_engine`` for
    every engine (resolved now only where that is None too)."""
    if manifest.engine_reuse is not None:
        return dict(manifest.engine_reuse)
    engines = [c.backend for c in manifest.experiments]
    decisions = resolve_engine_reuse(manifest.execution, engines)
    return {name: d.reuse for name, d in decisions.items()}


def reuse_map(study: StudyConfig) -> dict[str, bool]:
    """Engine name -> reuse on/off for ``study``'s engines (``resolve_engine_reuse``)."""
    decisions = resolve_engine_reuse(study.execution, (c.backend for c in study.experiments))
    return {name: d.reuse for name, d in decisions.items()}


def plan_runs(
    study: StudyConfig, *, reuse: bool | Mapping[str, bool] | None = None
) -> list[RunEntry]:
    """One pending ``RunEntry`` per config x cycle, in run order (see the module docstring).

    ``reuse``: for every engine, or per engine name; None resolves it (``reuse_map``)."""
    from llenergymeasure.results.io import model_slug

    if reuse is None:
        reuse = reuse_map(study)
    hashes = [measurement_config_hash(c) for c in study.experiments]
    keys = [reuse_key(c) for c in study.experiments]
    runs: list[RunEntry] = []
    order = grouped_order(study.experiments, study.execution, reuse)
    for position, (i, cycle) in enumerate(order, 1):
        config = study.experiments[i]
        runs.append(
            RunEntry(
                run_id=f"{position:03d}_{model_slug(config.model)}_{config.backend}_c{cycle}",
                position=position,
                config_index=i,
                config_hash=hashes[i],
                cycle=cycle,
                engine_group=keys[i],
            )
        )
    return runs


@dataclass(frozen=True)
class EngineGroup:
    """Consecutive runs that share one loaded engine."""

    key: str
    runs: list[RunEntry]


def engine_groups(runs: Sequence[RunEntry]) -> list[EngineGroup]:
    """``runs`` (in order) cut into groups of consecutive runs with the same engine key."""
    groups: list[EngineGroup] = []
    for entry in runs:
        key = entry.engine_group or entry.config_hash
        if groups and groups[-1].key == key:
            groups[-1].runs.append(entry)
        else:
            groups.append(EngineGroup(key, [entry]))
    return groups


def resolve_gaps(execution: ExecutionConfig) -> tuple[float, float]:
    """``(config_gap, cycle_gap)`` in seconds; ``None`` in the study -> user config defaults."""
    config_gap, cycle_gap = execution.config_gap_seconds, execution.cycle_gap_seconds
    if config_gap is None or cycle_gap is None:
        from llenergymeasure.config.user_config import effective_settings

        settings = effective_settings()
        if config_gap is None:
            config_gap = float(settings["execution.config_gap_seconds"].value)
        if cycle_gap is None:
            cycle_gap = float(settings["execution.cycle_gap_seconds"].value)
    return float(config_gap), float(cycle_gap)


def gap_before(
    previous: RunEntry, upcoming: RunEntry, order: str, gaps: tuple[float, float]
) -> tuple[str, float]:
    """Which gap to wait before ``upcoming`` ran right after ``previous``: (label, seconds)."""
    if order != "sequential" and upcoming.cycle != previous.cycle:
        return "cycle gap", gaps[1]
    return "config gap", gaps[0]
