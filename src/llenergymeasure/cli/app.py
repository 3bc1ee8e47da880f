"""``llem`` entry point: commands, exit codes and error display.

Exit codes: 0 ok, 1 runtime error (or a study with failed runs), 2 usage or config error,
3 a finished measurement could not be saved where asked and was saved to a rescue folder (the
output names it), 4 environment error (disk full, read-only filesystem, permission denied, not
a directory, a folder that vanished), 130 interrupted (Ctrl-C, or SIGTERM
during ``llem run``).
Everything printed passes through ``llenergymeasure.redaction`` (the root callback wraps
stdout and stderr), so no message can show a credential. Each command installs llem's log
handlers for its duration (``logs.process_logging``): phase messages on stderr, ``-q`` keeps
warnings and errors only, ``-V`` adds debug lines, ``llem run --log-file`` (or the user
config's ``output.log_file``) appends the log to a file.
Heavy modules are imported inside commands so that ``llem --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from llenergymeasure._version import __version__
from llenergymeasure.cli.completion import complete_backend, complete_dataset, complete_precision

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 runtime error or a study with failed runs; 2 usage, config or "
    "pre-flight error; 3 a finished measurement was saved to a rescue folder (named in the "
    "output) because it could not be saved where asked; 4 environment error (disk full, "
    "read-only, permission denied, not a directory, folder gone); 130 interrupted."
)

app = typer.Typer(
    name="llem",
    help="Measure the energy and efficiency of LLM inference.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_RESCUED, EXIT_ENVIRONMENT = 3, 4


class CycleOrder(str, Enum):
    sequential = "sequential"
    interleaved = "interleaved"
    shuffled = "shuffled"


def _backend_help() -> str:
    """``--backend`` help from the engine catalogue ("pytorch, vllm or tensorrt.").

    Typer evaluates the (postponed) annotations each time the CLI is built, so engines
    registered at run time are listed too.
    """
    from llenergymeasure.config.catalogue import engine_names

    names = list(engine_names())
    return (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]) + "."


def _precision_help() -> str:
    """``--precision`` help from the precision table ("fp32, fp16, ... (per engine: ...)")."""
    from llenergymeasure.cli.completion import precision_values

    return ", ".join(precision_values()) + " (each engine accepts a subset)."


def _batch_size_help() -> str:
    """``--batch-size`` help: the concurrency field it sets for each engine (the catalogue)."""
    from llenergymeasure.config.catalogue import concurrency_path, engine_names

    fields = [p for b in engine_names() if (p := concurrency_path(b))]
    return f"Requests the engine runs at once: sets {', '.join(fields)} (the backend's)."


def _version_callback(value: bool) -> None:
    if not value:
        return
    from llenergymeasure.config.catalogue import engine_names
    from llenergymeasure.config.installed import engine_version
    from llenergymeasure.text_table import render_table

    typer.echo(f"llem {__version__}")
    rows = [[backend, engine_version(backend) or "not installed"] for backend in engine_names()]
    typer.echo(render_table(None, rows))
    raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show versions and exit."
        ),
    ] = False,
) -> None:
    """Measure the energy and efficiency of LLM inference."""
    from llenergymeasure.redaction import install_stream_redaction

    install_stream_redaction()


def report_error(exc: BaseException, *, verbose: bool, as_json: bool = False) -> int:
    """Print an error the way users should see it and return the exit code.

    With ``as_json`` the error is also one JSON object on stdout:
    ``{"error": message, "hint": hint or null, "exit_code": n}``.
    """
    from llenergymeasure.logs import FILE_ONLY
    from llenergymeasure.redaction import redact

    shown = explain_error(exc)
    code = _show_error(exc, shown, verbose=verbose)
    # the log file (if any) keeps the error with its traceback; stderr showed it already
    logger.error(
        "exit code %d: %s: %s",
        code,
        type(shown).__name__,
        shown,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra=FILE_ONLY,
    )
    if as_json:
        import json

        from llenergymeasure.exceptions import LLEMError

        if isinstance(shown, LLEMError):
            message, hint = shown.message, shown.hint
        else:
            message, hint = str(shown) or type(shown).__name__, None
        typer.echo(json.dumps(redact({"error": message, "hint": hint, "exit_code": code})))
    return code


def explain_error(exc: BaseException) -> BaseException:
    """The error as users should see it: an ``OSError`` (or another error caused by one) from
    the machine becomes an ``EnvironmentProblem`` (exit 4) with a hint; a damaged model cache
    gets a hint; a pydantic ``ValidationError`` becomes a ``ConfigError``."""
    from pydantic import ValidationError

    from llenergymeasure.exceptions import LLEMError

    if isinstance(exc, ValidationError):
        from llenergymeasure.config.loading import validation_config_error

        return validation_config_error(exc, source=None)
    if isinstance(exc, LLEMError | KeyboardInterrupt):
        return exc
    from llenergymeasure.files import environment_error

    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return environment_error(cause)
        cause = cause.__cause__ or cause.__context__
    from llenergymeasure.files import damaged_model_error

    damaged = damaged_model_error(exc)
    return damaged if damaged is not None else exc


def _show_error(exc: BaseException, shown: BaseException, *, verbose: bool) -> int:
    from llenergymeasure.exceptions import ConfigError, LLEMError
    from llenergymeasure.redaction import redact_text

    if isinstance(shown, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if verbose:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(redact_text(text))
    if isinstance(shown, ConfigError):
        typer.echo(redact_text(f"error: {shown}"), err=True)
        return EXIT_USAGE
    if isinstance(shown, LLEMError):
        typer.echo(redact_text(f"error: {shown}"), err=True)
        return shown.exit_code
    typer.echo(redact_text(f"error: unexpected {type(shown).__name__}: {shown}"), err=True)
    if not verbose:
        typer.echo("  (run again with --verbose for the traceback)", err=True)
    return EXIT_RUNTIME


@app.command(epilog=EXIT_CODES_HELP)
def run(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Argument(help="Experiment or study YAML.", show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--model", "-m", help="HF model id, local path, or builtin:tiny."),
    ] = None,
    backend: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--backend", "-b", help=_backend_help(), autocompletion=complete_backend),
    ] = None,
    dataset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--dataset",
            "-d",
            help="aienergyscore, synthetic, or a .jsonl path (an HF dataset: --set dataset.hf=).",
            autocompletion=complete_dataset,
        ),
    ] = None,
    n: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("-n", help="Number of prompts (a synthetic dataset generates as many)."),
    ] = None,
    batch_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--batch-size", help=_batch_size_help()),
    ] = None,
    precision: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--precision",
            help=_precision_help(),
            autocompletion=complete_precision,
        ),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--max-new-tokens", help="New tokens per prompt (max_new_tokens)."),
    ] = None,
    input_len: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--input-len", help="Synthetic prompts of this many tokens."),
    ] = None,
    output_len: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--output-len", help="Synthetic dataset: new tokens per prompt."),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--seed", help="random_seed: sampling and engine randomness."),
    ] = None,
    set_values: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config field, e.g. --set decoder.temperature=0.7 (repeatable; the value is "
            "YAML; a study applies it to its base).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Results directory."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and preview; run nothing.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only the final summary (and warnings, errors)."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            "-V",
            help="Debug lines and phase timings on stderr, and tracebacks on errors.",
        ),
    ] = False,
    log_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--log-file",
            metavar="PATH",
            help="Append the log (DEBUG and up, redacted) to PATH (default: the user config's "
            "output.log_file, else none).",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the summary (or the error) as one JSON object."),
    ] = False,
    export_csv: Annotated[
        bool, typer.Option("--export-csv", help="Also write the result as CSV.")
    ] = False,
    cycles: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--cycles", help="Study cycles (default 3 unless the YAML sets it)."),
    ] = None,
    order: Annotated[
        Optional[CycleOrder],  # noqa: UP045
        typer.Option("--order", help="Cycle order."),
    ] = None,
    no_gaps: Annotated[
        bool, typer.Option("--no-gaps", help="No thermal gaps between runs.")
    ] = False,
    reuse_engine: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(
            "--reuse-engine/--no-reuse-engine",
            help="Studies, every engine: runs with the same engine-load fields share one loaded "
            "engine, or each run loads its own (default: execution.reuse_engine, else the user "
            "config, else each engine's default: on where proven equivalent on hardware, i.e. "
            "vLLM; --dry-run shows which and why).",
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--resume", help="Continue an interrupted study directory."),
    ] = None,
    rebuild_manifest: Annotated[
        bool,
        typer.Option(
            "--rebuild-manifest",
            help="With --resume: rebuild a damaged study_manifest.json from the results in the "
            "directory (and the study file, when given), keeping the old one beside.",
        ),
    ] = False,
    runner: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--runner", help="Runner for every backend of a study: local, slurm, docker:<image>."
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="slurm runner: submit the jobs and return at once."),
    ] = False,
    plan_from: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--plan-from",
            metavar="DIR",
            help="With --dry-run: how many cycles each config needs to detect --detect PCT, "
            "from the spread of the runs in DIR (an earlier study or results).",
        ),
    ] = None,
    detect: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--detect", metavar="PCT", help="--plan-from: the difference to detect, % (5)."
        ),
    ] = None,
) -> None:
    """Run an experiment or a study (or preview it with --dry-run)."""
    from llenergymeasure.cli.run_cmd import RunOptions, execute_run
    from llenergymeasure.cli.signals import sigterm_as_interrupt

    options = RunOptions(
        config=config,
        model=model,
        backend=backend,
        dataset=dataset,
        n=n,
        batch_size=batch_size,
        precision=precision,
        max_new_tokens=max_new_tokens,
        input_len=input_len,
        output_len=output_len,
        seed=seed,
        set_values=tuple(set_values or ()),
        output=output,
        dry_run=dry_run,
        quiet=quiet,
        verbose=verbose,
        export_csv=export_csv,
        cycles=cycles,
        order=order.value if order else None,
        no_gaps=no_gaps,
        reuse_engine=reuse_engine,
        resume=resume,
        runner=runner,
        detach=detach,
        as_json=as_json,
        plan_from=plan_from,
        detect_pct=detect,
        rebuild_manifest=rebuild_manifest,
    )
    with contextlib.ExitStack() as logging_scope:
        try:
            logging_scope.enter_context(_run_logging(quiet, verbose, log_file))
            with sigterm_as_interrupt():  # a scheduler's cancel ends the run as Ctrl-C does
                code = execute_run(options)
        except (Exception, KeyboardInterrupt) as exc:
            code = report_error(exc, verbose=verbose, as_json=as_json)
    raise typer.Exit(code)


def _run_logging(
    quiet: bool, verbose: bool, log_file: Path | None
) -> contextlib.AbstractContextManager[None]:
    """``llem run``'s log handlers: ``--log-file``, else the user config's ``output.log_file``."""
    from llenergymeasure.logs import process_logging

    if log_file is None:
        from llenergymeasure.config.user_config import setting

        configured = setting("output.log_file")
        log_file = Path(configured) if configured else None
    return process_logging(quiet=quiet, verbose=verbose, log_file=log_file)


@contextlib.contextmanager
def _command_logging(verbose: bool) -> Iterator[None]:
    """The log handlers of a command without ``--quiet`` or ``--log-file``."""
    from llenergymeasure.logs import process_logging

    with process_logging(verbose=verbose):
        yield


@app.command("config")
def config_command(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every setting.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print everything as one JSON object.")
    ] = False,
) -> None:
    """Show the environment, installed engines, energy backends and user config."""
    from llenergymeasure.cli.config_cmd import show_config

    with _command_logging(verbose):
        try:
            code = show_config(verbose=verbose, as_json=as_json)
        except (Exception, KeyboardInterrupt) as exc:
            code = report_error(exc, verbose=verbose, as_json=as_json)
    raise typer.Exit(code)


@app.command("report")
def report_command(
    directory: Annotated[
        Path,
        typer.Argument(
            help="An experiment result directory or a study directory.", show_default=False
        ),
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output", "-o", help="HTML file to write (default: <directory>/report.html)."
        ),
    ] = None,
    x_field: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--x",
            help="Study: the config field on the x axis of the swept-field figure, e.g. "
            "pytorch.batch_size (default: found from what varies).",
            metavar="FIELD",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the files written and the statistics as one JSON object."
        ),
    ] = False,
) -> None:
    """Write an HTML report with plots (PNGs beside it) and print per-config statistics.

    The statistics need scipy and the plots matplotlib (the report extra); without matplotlib
    the report is written without figures.
    """
    from llenergymeasure.report.render import render_report

    with _command_logging(verbose):
        try:
            outcome = render_report(directory, output, x_field=x_field)
            if as_json:
                import json

                stats = outcome.statistics
                typer.echo(
                    json.dumps(
                        {
                            "kind": outcome.kind,
                            "html": str(outcome.html_path),
                            "images": [str(image) for image in outcome.images],
                            "statistics": stats.model_dump(mode="json") if stats else None,
                            "notes": outcome.notes,
                        }
                    )
                )
            else:
                typer.echo(outcome.statistics_text)
                typer.echo(f"\nreport  {outcome.html_path}")
                for image in outcome.images:
                    typer.echo(f"        {image}")
            for note in outcome.notes:
                logger.info("note: %s", note)
            code = EXIT_OK
        except (Exception, KeyboardInterrupt) as exc:
            code = report_error(exc, verbose=verbose, as_json=as_json)
    raise typer.Exit(code)


@app.command("compare")
def compare_command(
    a: Annotated[
        str,
        typer.Argument(
            help="Side A (the baseline): result.json, experiment or study directory, a folder "
            "holding them, or a comma-separated list.",
            show_default=False,
            metavar="A",
        ),
    ],
    b: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(
            help="Side B (the candidate), the same kinds.", show_default=False, metavar="B"
        ),
    ] = None,
    by: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--by",
            metavar="FIELD",
            help="Match configs equal apart from this config field (repeatable), e.g. "
            "--by precision. Default: equal measurement_config_hash.",
        ),
    ] = None,
    fail_if_worse: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--fail-if-worse",
            metavar="METRIC=PCT",
            help="Exit 1 when B is worse than A by more than PCT % with confidence "
            "(repeatable). Metrics: j_per_token, j_per_token_adjusted, tokens_per_s, "
            "ttft_p50, ttft_p99, itl_p50, itl_p99, j_per_request, j_per_request_adjusted, "
            "peak_memory.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison (or the error) as JSON.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print Markdown tables (a pull-request comment).")
    ] = False,
    html: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--html", help="Also write the comparison as a self-contained HTML page."),
    ] = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Print how many cycles a study needs to detect --detect PCT, from the spread "
            "of A (and B).",
        ),
    ] = False,
    detect: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--detect", metavar="PCT", help="--plan: the difference to detect, % (5)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")] = False,
) -> None:
    """Is B better than A? Ratios with confidence intervals, verdicts, and a CI gate.

    Exit codes: 0 compared (gate passed), 1 gate failed (B worse than A by more than PCT with
    confidence), 2 usage error (including a gated metric without an interval).
    """
    from llenergymeasure.cli.compare_cmd import CompareOptions, execute_compare

    options = CompareOptions(
        a=a,
        b=b,
        by=list(by or []),
        fail_if_worse=list(fail_if_worse or []),
        as_json=as_json,
        markdown=markdown,
        html=html,
        plan=plan,
        detect_pct=detect,
    )
    with _command_logging(verbose):
        try:
            code = execute_compare(options)
        except (Exception, KeyboardInterrupt) as exc:
            code = report_error(exc, verbose=verbose, as_json=as_json)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()
