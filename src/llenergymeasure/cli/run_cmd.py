"""``llem run``: turn flags and YAML into a resolved experiment or study, then preview or run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from llenergymeasure.cli.options import RunOptions
from llenergymeasure.config.catalogue import ENGINES, concurrency_path, engine_names
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.set_options import SetOverrides
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError

logger = logging.getLogger(__name__)


def cli_overrides(opts: RunOptions, backend: str | None = None) -> dict[str, Any]:
    """Nested config mapping of the flags that override YAML fields (CLI wins); ``--set``
    values are separate (``set_overrides``).

    ``--batch-size`` sets the concurrency field of ``backend`` (``ConfigError`` when that engine
    has none); with no ``backend`` (a study) that of every engine, and each point keeps its own
    engine's section."""
    out: dict[str, Any] = {}
    if opts.model is not None:
        out["model"] = opts.model
    if opts.backend is not None:
        out["backend"] = opts.backend
    if opts.precision is not None:
        out["precision"] = opts.precision
    if opts.n is not None:
        out["n"] = opts.n
    if opts.dataset is not None:
        out["dataset"] = opts.dataset
    if opts.batch_size is not None:
        out.update(_batch_size_fields(opts.batch_size, backend))
    if opts.max_new_tokens is not None:
        out["max_new_tokens"] = opts.max_new_tokens
    if opts.seed is not None:
        out["random_seed"] = opts.seed
    synthetic = {
        key: value
        for key, value in (("input_len", opts.input_len), ("output_len", opts.output_len))
        if value is not None
    }
    if synthetic:
        if opts.dataset is not None and opts.dataset.strip().lower() != "synthetic":
            raise ConfigError(
                f"--input-len/--output-len describe a synthetic dataset, but --dataset is "
                f"{opts.dataset!r}",
                hint="drop --dataset, or give --dataset synthetic",
            )
        out["dataset"] = synthetic
    return out


def _batch_size_fields(value: int, backend: str | None) -> dict[str, Any]:
    """``--batch-size`` as config fields: the catalogue's concurrency field of ``backend``, or
    of every engine that has one when ``backend`` is None. An unknown ``backend`` gives none
    (validation names it)."""
    if backend is not None and backend not in ENGINES:
        return {}
    out: dict[str, Any] = {}
    for name in engine_names() if backend is None else (backend,):
        path = concurrency_path(name)
        if path is None:
            if backend is not None:
                raise ConfigError(
                    f"--batch-size sets the engine's concurrency field, but engine {name!r} "
                    "has none",
                    hint="drop --batch-size; shape the load in the engine's own settings",
                )
            continue
        section, _, field = path.partition(".")
        out[section] = {field: value}
    return out


def _flag_fields() -> list[tuple[str, str]]:
    """The config field each flag of ``cli_overrides`` sets (to find ``--set`` of the same
    field); ``--batch-size`` sets every engine's concurrency field."""
    batch = [("--batch-size", p) for b in engine_names() if (p := concurrency_path(b))]
    return [
        ("--model", "model"),
        ("--backend", "backend"),
        ("--precision", "precision"),
        ("-n", "n"),
        ("--dataset", "dataset"),
        *batch,
        ("--max-new-tokens", "max_new_tokens"),
        ("--seed", "random_seed"),
        ("--input-len", "dataset.input_len"),
        ("--output-len", "dataset.output_len"),
    ]


def set_overrides(opts: RunOptions) -> SetOverrides:
    """The ``--set`` options parsed (``ConfigError`` for a bad one, or one that sets what a
    flag on the same command line sets)."""
    from llenergymeasure.config.set_options import parse_set_options

    parsed = parse_set_options(opts.set_values)
    given = {
        "--model": opts.model,
        "--backend": opts.backend,
        "--precision": opts.precision,
        "-n": opts.n,
        "--dataset": opts.dataset,
        "--batch-size": opts.batch_size,
        "--max-new-tokens": opts.max_new_tokens,
        "--seed": opts.seed,
        "--input-len": opts.input_len,
        "--output-len": opts.output_len,
    }
    for key in parsed.keys:
        for flag, field_path in _flag_fields():
            if given[flag] is not None and _overlaps(key, field_path):
                raise ConfigError(
                    f"--set {key} and {flag} both set {field_path}",
                    hint=f"give it once: either {flag} or --set",
                )
    return parsed


def _overlaps(a: str, b: str) -> bool:
    """Whether two dotted key paths set the same field (equal, or one inside the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _numeric_options(opts: RunOptions) -> list[tuple[str, int | None, Any]]:
    """(flag, value, the config field it sets) of every numeric ``llem run`` option."""
    from llenergymeasure.config.models import ENGINE_SECTION_MODELS, SyntheticDatasetConfig
    from llenergymeasure.config.study import ExecutionConfig

    synthetic = SyntheticDatasetConfig.model_fields
    batch = []  # every engine's concurrency field (the bound of each is checked)
    for spec in ENGINES.values():
        section = ENGINE_SECTION_MODELS.get(spec.config_section or "")
        if section is not None and spec.concurrency_field in section.model_fields:
            info = section.model_fields[spec.concurrency_field]
            batch.append(("--batch-size", opts.batch_size, info))
    return [
        ("-n", opts.n, ExperimentConfig.model_fields["n"]),
        *batch,
        ("--cycles", opts.cycles, ExecutionConfig.model_fields["n_cycles"]),
        ("--max-new-tokens", opts.max_new_tokens, ExperimentConfig.model_fields["max_new_tokens"]),
        ("--seed", opts.seed, ExperimentConfig.model_fields["random_seed"]),
        ("--input-len", opts.input_len, synthetic["input_len"]),
        ("--output-len", opts.output_len, synthetic["output_len"]),
    ]


def check_numeric_options(opts: RunOptions) -> None:
    """``ConfigError`` for a numeric flag outside the bound of the config field it sets."""
    from llenergymeasure.config.bounds import bound_of

    for flag, value, info in _numeric_options(opts):
        bound = bound_of(info.annotation, info.metadata)
        if value is None or bound is None or bound.contains(value):
            continue
        side = f"at least {bound.lower:g}" if value < bound.lower else f"at most {bound.upper:,.0f}"
        raise ConfigError(
            f"{flag} must be {side}, got {value} (allowed {bound.explain()})",
            hint=f"give {flag} a value in {bound.interval()}",
        )


@dataclass
class ResolvedRun:
    """What ``llem run`` will do: one experiment or a study."""

    experiment: ExperimentConfig | None
    study: StudyConfig | None
    cycles_from_yaml: bool = False


def resolve(opts: RunOptions) -> ResolvedRun:
    """Load YAML (if any), apply CLI overrides, and validate everything."""
    from llenergymeasure.config.loading import (
        build_experiment_config,
        deep_merge,
        is_study_mapping,
        read_yaml_mapping,
    )

    check_numeric_options(opts)
    sets = set_overrides(opts)

    if opts.config is None:
        if opts.model is None and "model" not in sets.values:
            raise ConfigError(
                "nothing to run: give a config file or --model",
                hint="llem run --model builtin:tiny --dataset synthetic -n 20",
            )
        overrides = cli_overrides(opts, _experiment_backend({}, sets, opts))
        combined = deep_merge(sets.values, overrides)
        return ResolvedRun(
            experiment=build_experiment_config(None, combined, overrides_label="command line"),
            study=None,
        )

    data, text = read_yaml_mapping(opts.config)
    _check_synthetic_flags(opts, sets, data)
    if is_study_mapping(data):
        from llenergymeasure.study.design import expand_study_file

        study = expand_study_file(
            opts.config,
            cli_overrides(opts),
            data=data,
            text=text,
            base_overrides=sets.values or None,
        )
        if opts.batch_size is not None:
            _check_batch_size_engines(study)
        execution = study.execution
        cycles_from_yaml = "n_cycles" in execution.model_fields_set
        updates: dict[str, Any] = {}
        if opts.cycles is not None:
            updates["n_cycles"] = opts.cycles
        elif not cycles_from_yaml:
            updates["n_cycles"] = 3  # the CLI's default when the YAML does not set it
        if opts.order is not None:
            updates["cycle_order"] = opts.order
        if opts.no_gaps:
            updates["config_gap_seconds"] = 0.0
            updates["cycle_gap_seconds"] = 0.0
        if opts.reuse_engine is not None:
            updates["reuse_engine"] = opts.reuse_engine
        if updates:
            from llenergymeasure.config.study import ExecutionConfig

            # validated, not copied: the flags get the same bounds as the YAML
            execution = ExecutionConfig.model_validate(
                {**execution.model_dump(exclude_unset=True), **updates}
            )
            study = study.model_copy(update={"execution": execution})
            from llenergymeasure.config.study import check_study_bounds

            check_study_bounds(
                len(study.experiments), study.execution.n_cycles, where=str(opts.config)
            )
        return ResolvedRun(experiment=None, study=study, cycles_from_yaml=cycles_from_yaml)

    for flag, value in (
        ("--cycles", opts.cycles),
        ("--order", opts.order),
        ("--reuse-engine/--no-reuse-engine", opts.reuse_engine),
    ):
        if value is not None:
            raise ConfigError(f"{flag} applies to studies; {opts.config} is a single experiment")
    overrides = cli_overrides(opts, _experiment_backend(data, sets, opts))
    combined = deep_merge(sets.values, overrides)
    experiment = build_experiment_config(opts.config, combined, document=(data, text))
    return ResolvedRun(experiment=experiment, study=None)


def _check_synthetic_flags(opts: RunOptions, sets: SetOverrides, data: dict[str, Any]) -> None:
    """``--input-len``/``--output-len`` over a YAML whose dataset is not synthetic: an error
    (they would silently replace a file or HF dataset with generated prompts)."""
    if (opts.input_len is None and opts.output_len is None) or opts.dataset is not None:
        return
    dataset = sets.values.get("dataset", data.get("dataset"))
    if dataset is None or dataset == "synthetic":
        return
    if isinstance(dataset, dict) and "hf" not in dataset:
        return
    shown = dataset.get("hf") if isinstance(dataset, dict) else dataset
    raise ConfigError(
        f"--input-len/--output-len describe a synthetic dataset, but {opts.config} uses "
        f"dataset {shown!r}",
        hint="give --dataset synthetic as well to replace it with generated prompts",
    )


def _experiment_backend(data: dict[str, Any], sets: SetOverrides, opts: RunOptions) -> str | None:
    """The backend one experiment runs on: ``--backend``, else ``--set backend=``, else the
    YAML's, else the default (None when it is not a name; validation reports it)."""
    from llenergymeasure.config.loading import apply_default_backend

    chosen = opts.backend or sets.values.get("backend")
    backend = apply_default_backend({**data, "backend": chosen} if chosen else data)["backend"]
    return backend if isinstance(backend, str) else None


def _check_batch_size_engines(study: StudyConfig) -> None:
    """``--batch-size`` on a study: every point's engine must have a concurrency field."""
    without = sorted({e.backend for e in study.experiments if concurrency_path(e.backend) is None})
    if without:
        raise ConfigError(
            f"--batch-size sets the engine's concurrency field, but engine(s) {', '.join(without)} "
            "in this study have none",
            hint="drop --batch-size; shape the load in the engine's own settings",
        )


def execute_run(opts: RunOptions) -> int:
    """Run ``llem run`` with parsed options; returns the exit code.

    Studies exit 0 when every run completed and 1 when any run failed (the study itself always
    runs to the end); 2 for config/usage errors, 130 when interrupted.
    """
    _check_runner(opts.runner)
    # The user config and the LLEM_* variables, validated here for every path (--dry-run
    # included) by the one function a run reads them with.
    from llenergymeasure.config.user_config import effective_settings

    effective_settings()
    if opts.resume is not None:
        return resume_run(opts)
    if opts.rebuild_manifest:
        raise ConfigError(
            "--rebuild-manifest applies to a study directory given with --resume",
            hint="llem run --resume <study-dir> [study.yaml] --rebuild-manifest",
        )
    resolved = resolve(opts)
    _check_flags_apply(opts, resolved)
    configs = [resolved.experiment] if resolved.experiment is not None else []
    if resolved.study is not None:
        configs = list(resolved.study.experiments)
    if opts.dry_run or resolved.study is not None:
        # GGUF model files and dataset files are checked before anything runs or any study
        # directory exists (a single run's pre-flight reads its dataset itself, once)
        _check_input_files(configs)
    if opts.dry_run:
        return _dry_run(opts, resolved)
    if resolved.study is not None:
        return run_study_cli(resolved.study, opts)
    assert resolved.experiment is not None
    from llenergymeasure.cli.run_experiment_cmd import run_single

    return run_single(resolved.experiment, opts)


def _check_runner(runner: str | None) -> None:
    """``--runner`` names a runner (local, slurm, docker:<image>)."""
    if runner is None:
        return
    from llenergymeasure.config.user_config import valid_runner

    if not valid_runner(runner):
        raise ConfigError(
            f"--runner {runner!r} is not a runner",
            hint="use local, slurm or docker:<image>",
        )


def _check_flags_apply(opts: RunOptions, resolved: ResolvedRun) -> None:
    """Study-only and --dry-run-only flags given where they do not apply."""
    if resolved.study is None and (opts.runner is not None or opts.detach):
        raise ConfigError(
            "--runner and --detach apply to studies; a single experiment runs in this process",
            hint="put the experiment in a study YAML to run it on SLURM",
        )
    if (opts.plan_from is not None or opts.detect_pct is not None) and not opts.dry_run:
        raise ConfigError(
            "--plan-from and --detect apply to --dry-run",
            hint="llem run study.yaml --dry-run --plan-from results/<earlier study>",
        )
    if opts.detect_pct is not None and opts.plan_from is None:
        raise ConfigError("--detect needs --plan-from DIR (the runs whose spread to plan from)")


def _check_input_files(configs: list[ExperimentConfig]) -> None:
    """``PreFlightError`` naming every GGUF model file and dataset file that cannot be used."""
    from llenergymeasure.exceptions import PreFlightError
    from llenergymeasure.harness.inputs import dataset_file_problems, model_file_problems

    model_problems = model_file_problems(configs)
    dataset_problems = dataset_file_problems(configs)
    if model_problems or dataset_problems:
        hints = ["give the path of a complete .gguf file"] if model_problems else []
        if dataset_problems:
            hints.append("fix the dataset (file, split or column), or use a smaller n")
        raise PreFlightError(model_problems + dataset_problems, hint="; ".join(hints))


def _dry_run(opts: RunOptions, resolved: ResolvedRun) -> int:
    """``--dry-run``: the preview (and the cycle plan with ``--plan-from``); runs nothing."""
    _check_online_environment(resolved)
    from llenergymeasure.cli.preview import (
        preview_experiment,
        preview_json,
        preview_plan,
        preview_study,
    )

    plan = (
        preview_plan(resolved.experiment, resolved.study, opts.plan_from, opts.detect_pct)
        if opts.plan_from is not None
        else None
    )
    if opts.as_json:
        data = preview_json(resolved.experiment, resolved.study)
        if plan is not None:
            data["plan"] = plan.model_dump(mode="json")
        typer.echo(json.dumps(data))
        return 0
    if resolved.study is not None:
        preview_study(resolved.study)
    else:
        assert resolved.experiment is not None
        preview_experiment(resolved.experiment)
    if plan is not None:
        from llenergymeasure.cli.preview import print_plan

        print_plan(plan, resolved.study.execution.n_cycles if resolved.study else 1)
    return 0


def _check_online_environment(resolved: ResolvedRun) -> None:
    """What a run's pre-flight checks in the environment for online mode (the API key's
    variable), checked by ``--dry-run`` too."""
    from llenergymeasure.online.preflight import api_key_problems

    experiments = (
        list(resolved.study.experiments) if resolved.study is not None else [resolved.experiment]
    )
    problems = sorted({p for e in experiments if e is not None for p in api_key_problems(e.online)})
    if problems:
        from llenergymeasure.exceptions import PreFlightError

        raise PreFlightError(problems)


def run_study_cli(study: StudyConfig, opts: RunOptions) -> int:
    """Run a study under the results directory; summary table on stdout."""
    from llenergymeasure.config.user_config import setting
    from llenergymeasure.study.runner import StudyRunner

    results_root = opts.output or Path(setting("output.results_dir"))
    runner = StudyRunner.create(
        study,
        results_root,
        overrides=cli_overrides(opts) or None,
        base_overrides=set_overrides(opts).values or None,
        runner=opts.runner,
        quiet=opts.quiet,
        detach=opts.detach,
    )
    logger.info("study directory: %s", runner.study_dir)
    return _report_study(runner.run(), runner, opts)


def resume_run(opts: RunOptions) -> int:
    """``llem run --resume DIR [CONFIG]``: continue a study in its directory.

    The manifest holds the resolved configs, so CONFIG is optional; when given (with the same
    flags as the first run) or when the study file recorded in the manifest still exists, its
    design hash must match the manifest's, else this is a ConfigError (exit 2).
    """
    from llenergymeasure.config.loading import is_study_mapping, read_yaml_mapping
    from llenergymeasure.study.runner import StudyRunner

    assert opts.resume is not None
    study: StudyConfig | None = None
    if opts.config is not None:
        data, _ = read_yaml_mapping(opts.config)
        if not is_study_mapping(data):
            raise ConfigError(
                f"--resume takes the study directory; {opts.config} is a single experiment, "
                "not a study",
                hint="llem run --resume <study-dir> [study.yaml]",
            )
    for flag, given in (
        ("--cycles", opts.cycles is not None),
        ("--order", opts.order is not None),
        ("--output", opts.output is not None),
        ("--dry-run", opts.dry_run),
        ("--export-csv", opts.export_csv),
        ("--runner", opts.runner is not None),
        ("--reuse-engine/--no-reuse-engine", opts.reuse_engine is not None),
    ):
        if given:
            raise ConfigError(
                f"{flag} cannot be used with --resume: a resumed study keeps its directory and "
                "execution settings",
                hint="only --no-gaps, --detach, --quiet and --verbose apply when resuming "
                "(the runner is kept in the manifest)",
            )
    if opts.config is not None:
        study = resolve(opts).study
    elif cli_overrides(opts) or opts.set_values:
        raise ConfigError(
            "--resume without a study file takes no config flags (-m, -b, -d, -n, --set, ...)",
            hint="pass the study file with the same flags as the first run to check its design",
        )
    gaps = (0.0, 0.0) if opts.no_gaps else None
    resume = StudyRunner.rebuild if opts.rebuild_manifest else StudyRunner.resume
    runner = resume(opts.resume, study=study, quiet=opts.quiet, gaps=gaps, detach=opts.detach)
    counts = runner.manifest.counts()
    logger.info(
        "resuming %s: %d of %d runs already completed",
        runner.study_dir,
        counts["completed"],
        len(runner.manifest.runs),
    )
    return _report_study(runner.run(), runner, opts)


def _report_study(result: Any, runner: Any, opts: RunOptions) -> int:
    from llenergymeasure.study.summary import format_study_summary, study_exit_code

    if runner.detach:
        counts = runner.manifest.counts()
        if opts.as_json:
            typer.echo(
                json.dumps({"submitted": True, "study_dir": str(runner.study_dir), "runs": counts})
            )
            return 0
        typer.echo(
            f"submitted: {counts['running']} run(s) queued on SLURM, {counts['completed']} "
            f"completed. Collect with: llem run --resume {runner.study_dir}"
        )
        return 0

    code = study_exit_code(result)
    if opts.as_json:
        from llenergymeasure.redaction import redact

        typer.echo(json.dumps(redact({**result.model_dump(mode="json"), "exit_code": code})))
    else:
        typer.echo(format_study_summary(result, runner.manifest))
    return code
