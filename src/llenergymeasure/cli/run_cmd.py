"""``llem run``: turn flags and YAML into a resolved experiment or study, then preview or run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from llenergymeasure.cli.options import RunOptions
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError


def cli_overrides(opts: RunOptions) -> dict[str, Any]:
    """Nested config mapping of the flags that override YAML fields (CLI wins)."""
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
        out["pytorch"] = {"batch_size": opts.batch_size}
    return out


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
        is_study_mapping,
        merge_overrides,
        read_yaml_mapping,
    )

    overrides = cli_overrides(opts)
    if opts.n is not None and opts.n < 1:
        raise ConfigError(f"-n must be at least 1, got {opts.n}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.cycles is not None and opts.cycles < 1:
        raise ConfigError(f"--cycles must be at least 1, got {opts.cycles}")

    if opts.config is None:
        if opts.model is None:
            raise ConfigError(
                "nothing to run: give a config file or --model",
                hint="llem run --model builtin:tiny --dataset synthetic -n 20",
            )
        _check_batch_size_backend(merge_overrides({}, overrides), opts)
        return ResolvedRun(
            experiment=build_experiment_config(None, overrides, overrides_label="command line"),
            study=None,
        )

    data, text = read_yaml_mapping(opts.config)
    if is_study_mapping(data):
        from llenergymeasure.study.design import expand_study_file

        study = expand_study_file(opts.config, overrides, data=data, text=text)
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
            study = study.model_copy(update={"execution": execution.model_copy(update=updates)})
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
    _check_batch_size_backend(merge_overrides(data, overrides), opts)
    return ResolvedRun(experiment=build_experiment_config(opts.config, overrides), study=None)


def _check_batch_size_backend(data: dict[str, Any], opts: RunOptions) -> None:
    if opts.batch_size is not None and data.get("backend") not in (None, "pytorch"):
        raise ConfigError(
            f"--batch-size sets pytorch.batch_size, but backend is {data.get('backend')!r}",
            hint="for vllm set vllm.max_num_seqs in the YAML; for tensorrt tensorrt.max_batch_size",
        )


def execute_run(opts: RunOptions) -> int:
    """Run ``llem run`` with parsed options; returns the exit code.

    Studies exit 0 when every run completed and 1 when any run failed (the study itself always
    runs to the end); 2 for config/usage errors, 130 when interrupted.
    """
    if opts.runner is not None:
        from llenergymeasure.config.user_config import valid_runner

        if not valid_runner(opts.runner):
            raise ConfigError(
                f"--runner {opts.runner!r} is not a runner",
                hint="use local, slurm or docker:<image>",
            )
    if opts.resume is not None:
        return resume_run(opts)
    if opts.rebuild_manifest:
        raise ConfigError(
            "--rebuild-manifest applies to a study directory given with --resume",
            hint="llem run --resume <study-dir> [study.yaml] --rebuild-manifest",
        )
    resolved = resolve(opts)
    if resolved.study is None and (opts.runner is not None or opts.detach):
        raise ConfigError(
            "--runner and --detach apply to studies; a single experiment runs in this process",
            hint="put the experiment in a study YAML to run it on SLURM",
        )
    if opts.dry_run:
        from llenergymeasure.cli.preview import preview_experiment, preview_json, preview_study

        if opts.as_json:
            typer.echo(json.dumps(preview_json(resolved.experiment, resolved.study)))
        elif resolved.study is not None:
            preview_study(resolved.study)
        else:
            assert resolved.experiment is not None
            preview_experiment(resolved.experiment)
        return 0
    if resolved.study is not None:
        return run_study_cli(resolved.study, opts)
    assert resolved.experiment is not None
    from llenergymeasure.cli.run_experiment_cmd import run_single

    return run_single(resolved.experiment, opts)


def run_study_cli(study: StudyConfig, opts: RunOptions) -> int:
    """Run a study under the results directory; summary table on stdout."""
    from llenergymeasure.config.user_config import setting
    from llenergymeasure.study.runner import StudyRunner

    results_root = opts.output or Path(setting("output.results_dir"))
    runner = StudyRunner.create(
        study,
        results_root,
        overrides=cli_overrides(opts) or None,
        runner=opts.runner,
        quiet=opts.quiet,
        detach=opts.detach,
    )
    if not opts.quiet:
        typer.echo(f"[llem] study directory: {runner.study_dir}", err=True)
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
    elif cli_overrides(opts):
        raise ConfigError(
            "--resume without a study file takes no config flags (-m, -b, -d, -n, ...)",
            hint="pass the study file with the same flags as the first run to check its design",
        )
    gaps = (0.0, 0.0) if opts.no_gaps else None
    resume = StudyRunner.rebuild if opts.rebuild_manifest else StudyRunner.resume
    runner = resume(opts.resume, study=study, quiet=opts.quiet, gaps=gaps, detach=opts.detach)
    if not opts.quiet:
        counts = runner.manifest.counts()
        typer.echo(
            f"[llem] resuming {runner.study_dir}: {counts['completed']} of "
            f"{len(runner.manifest.runs)} runs already completed",
            err=True,
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


def echo_err(message: str, opts: RunOptions) -> None:
    """Progress/phase message on stderr (suppressed by --quiet)."""
    if not opts.quiet:
        typer.echo(message, err=True)
