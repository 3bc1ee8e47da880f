"""``--dry-run`` output: the resolved experiment or the study grid, with skipped points."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import (
    ExperimentConfig,
    HFDatasetConfig,
    SyntheticDatasetConfig,
)
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.gguf_files import GGUF_FILE_KEY, names_gguf
from llenergymeasure.harness.vram import (
    VramEstimate,
    config_sequence_length,
    estimate_config_vram,
    weight_precision,
)
from llenergymeasure.results.study_statistics import config_labels, varying_fields
from llenergymeasure.text_table import render_table

if TYPE_CHECKING:
    from llenergymeasure.compare.plan import Plan
    from llenergymeasure.study.manifest import RunEntry


def _dataset_label(config: ExperimentConfig) -> str:
    d = config.dataset
    if isinstance(d, SyntheticDatasetConfig):
        return f"synthetic({d.input_len}->{d.output_len})"
    if isinstance(d, HFDatasetConfig):
        parts = [f"split={d.split}" if d.split else "", f"column={d.column}" if d.column else ""]
        shown = ", ".join(p for p in parts if p)
        return f"hf:{d.hf}" + (f"[{shown}]" if shown else "")
    return d


def network_needs(configs: list[ExperimentConfig]) -> list[str]:
    """What the runs would download from the HF hub (not in the local cache), one line each:
    the default dataset and hub models. HF datasets are read by the dry run itself."""
    from llenergymeasure.hub import hub_offline, in_hub_cache, is_hub_id

    offline = hub_offline()
    outcome = (
        "HF_HUB_OFFLINE is set, so the run would stop at pre-flight"
        if offline
        else "the run downloads it (needs the network)"
    )
    needs: list[str] = []
    if any(c.dataset == "aienergyscore" for c in configs) and not _aienergyscore_cached():
        needs.append(
            f"dataset aienergyscore is not in the local HF cache: {outcome}; offline, use a "
            ".jsonl or HF dataset on disk, or cache it once with network access"
        )
    for model, gguf_file in dict.fromkeys((c.model, _gguf_file(c)) for c in configs):
        if gguf_file is not None:
            if is_hub_id(model) and not in_hub_cache(model, filename=gguf_file):
                needs.append(f"model {model}/{gguf_file} is not in the local HF cache: {outcome}")
        elif is_hub_id(model) and not in_hub_cache(model):
            needs.append(f"model {model} is not in the local HF cache: {outcome}")
    return needs


def _gguf_file(config: ExperimentConfig) -> str | None:
    """``passthrough_kwargs.gguf_file``: a GGUF file of the folder or hub repository ``model``."""
    named = (config.passthrough_kwargs or {}).get(GGUF_FILE_KEY)
    return named if isinstance(named, str) else None


def _aienergyscore_cached() -> bool:
    from llenergymeasure.datasets.aienergyscore import fetch_aienergyscore
    from llenergymeasure.exceptions import ConfigError

    try:
        fetch_aienergyscore(local_files_only=True)
    except ConfigError:
        return False
    return True


def _vram(
    config: ExperimentConfig, cache: dict[tuple[Any, ...], VramEstimate | None]
) -> VramEstimate | None:
    key = (
        config.model,
        _gguf_file(config),
        config.backend if names_gguf(config.model, config.passthrough_kwargs) else None,
        weight_precision(config),
        run_concurrency(config),
        config_sequence_length(config),
    )
    if key not in cache:
        cache[key] = estimate_config_vram(config)
    return cache[key]


def _flatten(obj: object, prefix: str, out: dict[str, object]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = obj


def preview_experiment(config: ExperimentConfig) -> None:
    """Print the resolved single experiment."""
    typer.echo("Dry run: configuration is valid; nothing was run.\n")
    typer.echo(f"  model            {config.model}")
    typer.echo(f"  backend          {config.backend}")
    typer.echo(f"  precision        {config.precision}")
    typer.echo(f"  dataset          {_dataset_label(config)}  (n={config.n})")
    typer.echo(f"  max_new_tokens   {config.effective_max_new_tokens}")
    typer.echo(f"  decoding         {config.decoder.decoding_strategy}")
    if config.chat_template:
        typer.echo("  chat template    the tokenizer's, one user message per prompt")
    if config.online is not None:
        typer.echo(f"  online           {_online_label(config)}")
    else:
        typer.echo(f"  batch            {run_concurrency(config)}")
    typer.echo(f"  config hash      {measurement_config_hash(config)}")
    est = estimate_config_vram(config)
    typer.echo("  VRAM estimate    " + _vram_text(est))
    if est is not None and est.basis:
        typer.echo(f"  VRAM basis       {est.basis}")
    if est is None and names_gguf(config.model, config.passthrough_kwargs):
        typer.echo("  note: the GGUF file is not on this machine yet, so no VRAM estimate")
    elif est is None:
        typer.echo("  note: the model's config.json is not available locally, so no VRAM estimate")
    for need in network_needs([config]):
        typer.echo(f"  note: {need}")
    _note_missing_engines([config.backend])


def _note_missing_engines(backends: list[str]) -> None:
    """Say which engines are not installed here (a local run would stop at pre-flight)."""
    from llenergymeasure.config.catalogue import engine_spec
    from llenergymeasure.config.installed import engine_installed

    for backend in dict.fromkeys(backends):
        if not engine_installed(backend):
            hint = engine_spec(backend).install_hint
            typer.echo(
                f"  note: engine '{backend}' is not installed here ({hint}); "
                "a local run would stop at pre-flight"
            )


def preview_json(experiment: ExperimentConfig | None, study: StudyConfig | None) -> dict[str, Any]:
    """The dry-run preview as plain data (``llem run --dry-run --json``)."""
    from llenergymeasure.config.installed import engine_installed

    configs = [experiment] if experiment is not None else list(study.experiments if study else [])
    out: dict[str, Any] = {
        "dry_run": True,
        "valid": True,
        "experiments": [
            {**c.model_dump(mode="json"), "measurement_config_hash": measurement_config_hash(c)}
            for c in configs
        ],
        "engines_not_installed": [
            b for b in dict.fromkeys(c.backend for c in configs) if not engine_installed(b)
        ],
        "needs_network": network_needs(configs),
    }
    if study is not None:
        out.update(
            study_name=study.name,
            study_design_hash=study.study_design_hash,
            execution=study.execution.model_dump(mode="json"),
            skipped=[s.model_dump(mode="json") for s in study.skipped],
            runs=len(study.experiments) * study.execution.n_cycles,
            engine_reuse=_engine_reuse_json(study),
        )
    return out


def _engine_reuse_json(study: StudyConfig) -> dict[str, dict[str, Any]]:
    """Per engine of the study's offline runs: reuse on/off, what decided it, and why."""
    from llenergymeasure.study.planning import resolve_engine_reuse

    offline = [e.backend for e in study.experiments if e.mode == "offline"]
    return {
        name: {"reuse": d.reuse, "source": d.source, "evidence": d.evidence or None}
        for name, d in resolve_engine_reuse(study.execution, offline).items()
    }


def _online_label(config: ExperimentConfig) -> str:
    online = config.online
    assert online is not None
    server = (
        f"endpoint {online.endpoint}"
        if online.endpoint is not None
        else f"llem starts the {config.backend} server"
    )
    cap = f", at most {online.max_concurrency} in flight" if online.max_concurrency else ""
    return f"{server}; {online.request_rate} req/s {online.arrival}{cap}"


def _vram_text(est: VramEstimate | None) -> str:
    if est is None:
        return "n/a"
    return f"{est.total_gib:.2f} GiB (weights {est.weights_gib:.2f} + KV {est.kv_cache_gib:.2f})"


def preview_study(study: StudyConfig) -> None:
    """Print the study grid: each experiment, the skipped points, counts and cycles."""
    ex = study.execution
    varying = varying_fields(study.experiments, exclude=("backend",))
    typer.echo(
        f"Dry run of study '{study.name}' (design hash {study.study_design_hash}); "
        "nothing was run.\n"
    )
    header = ["#", "backend", "model", *varying, "VRAM est."]
    cache: dict[tuple[Any, ...], VramEstimate | None] = {}
    rows: list[list[str]] = []
    for i, e in enumerate(study.experiments, 1):
        flat: dict[str, object] = {}
        _flatten(e.model_dump(exclude_none=True), "", flat)
        est = _vram(e, cache)
        rows.append(
            [
                str(i),
                e.backend,
                e.model,
                *[str(flat.get(k, "-")) for k in varying],
                f"{est.total_gib:.2f} GiB" if est else "n/a",
            ]
        )
    typer.echo(render_table(header, rows, indent=0, rule=True))
    if study.skipped:
        typer.echo(f"\nSkipped ({len(study.skipped)}):")
        for s in study.skipped:
            shown = ", ".join(f"{k}={v}" for k, v in s.overrides.items())
            typer.echo(f"  - {s.source} [{shown}]: {s.reason}")
    total_runs = len(study.experiments) * ex.n_cycles
    typer.echo(
        f"\n{len(study.experiments)} experiments x {ex.n_cycles} cycles ({ex.cycle_order}) = "
        f"{total_runs} runs; {len(study.skipped)} skipped"
    )
    typer.echo(
        f"gaps: between experiments {_gap(ex.config_gap_seconds)}, "
        f"between cycles {_gap(ex.cycle_gap_seconds)}"
    )
    _preview_engine_groups(study)
    for need in network_needs(list(study.experiments)):
        typer.echo(f"note: {need}")
    _note_missing_engines([e.backend for e in study.experiments])
    if any(est is None for est in cache.values()):
        typer.echo(
            "note: VRAM shown as n/a where the model's config.json (or GGUF file) is not "
            "available locally"
        )


def _gap(seconds: float | None) -> str:
    return "from user config" if seconds is None else f"{seconds:g} s"


ORDER_SHOWN = 40  # runs listed in the dry run's run order


def _preview_engine_groups(study: StudyConfig) -> None:
    """Engine reuse per engine and why, the engine groups, the number of loads, the run order."""
    from llenergymeasure.study.planning import (
        ENGINE_DEFAULT,
        engine_groups,
        plan_runs,
        resolve_engine_reuse,
    )

    offline = [e.backend for e in study.experiments if e.mode == "offline"]
    decisions = resolve_engine_reuse(study.execution, offline)
    reuse = {name: d.reuse for name, d in decisions.items()}
    runs = plan_runs(study, reuse=reuse)

    def reused(entry: RunEntry) -> bool:
        config = study.experiments[entry.config_index]
        return config.mode == "offline" and reuse.get(config.backend, False)

    groups = engine_groups([r for r in runs if reused(r)])
    fresh = sum(1 for r in runs if not reused(r))
    on = [name for name, d in decisions.items() if d.reuse]
    off = [name for name, d in decisions.items() if not d.reuse]
    if not groups:
        typer.echo(f"engine reuse: off; {len(runs)} engine loads (one per run)")
    elif not fresh:
        typer.echo(
            f"engine reuse: on; {len(groups)} engine group(s) = {len(groups)} engine loads for "
            f"{len(runs)} runs"
        )
    else:
        typer.echo(
            f"engine reuse: on for {', '.join(on)}, off for {', '.join(off) or 'online runs'}; "
            f"{len(groups)} engine group(s) + {fresh} run(s) in a fresh process = "
            f"{len(groups) + fresh} engine loads for {len(runs)} runs"
        )
    for decision in decisions.values():
        typer.echo(f"  {decision.describe()}")
    if any(d.source == ENGINE_DEFAULT for d in decisions.values()):
        typer.echo("  (--reuse-engine / --no-reuse-engine set it for every engine of the study)")
    for g, group in enumerate(groups, 1):
        configs = sorted({r.config_index + 1 for r in group.runs})
        names = ", ".join(f"#{c}" for c in configs[:ORDER_SHOWN])
        if len(configs) > ORDER_SHOWN:
            names += f" ... ({len(configs) - ORDER_SHOWN} more)"
        typer.echo(f"  group {g} (engine {group.key}): experiments {names}; {len(group.runs)} runs")
    shown = runs[:ORDER_SHOWN]
    order = " ".join(f"#{r.config_index + 1}/c{r.cycle}" for r in shown)
    more = f" ... ({len(runs) - len(shown)} more)" if len(runs) > len(shown) else ""
    typer.echo(f"run order (experiment/cycle): {order}{more}")


def preview_plan(
    experiment: ExperimentConfig | None,
    study: StudyConfig | None,
    plan_from: Path,
    detect_pct: float | None,
) -> Plan:
    """Cycles each config needs to detect ``detect_pct`` (default 5 %), from ``plan_from``."""
    from llenergymeasure.compare.inputs import load_side
    from llenergymeasure.compare.plan import DEFAULT_DETECT_PCT, plan_for_configs

    configs = [experiment] if experiment is not None else list(study.experiments if study else [])
    labels = [f"#{i} {label}" for i, label in enumerate(config_labels(configs), 1)]
    previous = load_side([plan_from], "--plan-from")
    return plan_for_configs(
        [(label, measurement_config_hash(c)) for label, c in zip(labels, configs, strict=True)],
        previous,
        detect_pct=DEFAULT_DETECT_PCT if detect_pct is None else detect_pct,
    )


def print_plan(plan: Plan, n_cycles: int) -> None:
    """The plan, and whether the study's ``n_cycles`` reach it."""
    typer.echo(
        f"\ncycles to detect a {plan.detect_pct:g} % difference ({plan.power * 100:g} % power, "
        f"{(1 - plan.confidence) * 100:g} % level; llem compare's test), from the earlier runs' "
        "spread:"
    )
    for row in plan.rows:
        spread = "n/a" if row.spread_pct is None else f"{row.spread_pct:.2f} %"
        if row.cycles_needed is None:
            verdict = "n/a"
        elif row.cycles_needed <= n_cycles:
            verdict = f"{row.cycles_needed} (this study's {n_cycles} suffice)"
        else:
            verdict = f"{row.cycles_needed} (this study has {n_cycles}: too few)"
        note = f"  ({row.note})" if row.note else ""
        typer.echo(f"  {row.config}  {row.label}: spread {spread}, cycles {verdict}{note}")
