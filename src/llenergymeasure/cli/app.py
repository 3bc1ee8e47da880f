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
from pathlib import Path
from typing import Annotated, Optional

import typer

from llenergymeasure._version import __version__
from llenergymeasure.cli.options import CompareFlags, CycleOrder, RunFlags, RunOptions

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
    from llenergymeasure.os_errors import environment_error

    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return environment_error(cause)
        cause = cause.__cause__ or cause.__context__
    from llenergymeasure.os_errors import damaged_model_error

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
    config: Annotated[Optional[Path], RunFlags.config()] = None,  # noqa: UP045
    model: Annotated[Optional[str], RunFlags.model()] = None,  # noqa: UP045
    backend: Annotated[Optional[str], RunFlags.backend()] = None,  # noqa: UP045
    dataset: Annotated[Optional[str], RunFlags.dataset()] = None,  # noqa: UP045
    n: Annotated[Optional[int], RunFlags.n()] = None,  # noqa: UP045
    batch_size: Annotated[Optional[int], RunFlags.batch_size()] = None,  # noqa: UP045
    precision: Annotated[Optional[str], RunFlags.precision()] = None,  # noqa: UP045
    max_new_tokens: Annotated[Optional[int], RunFlags.max_new_tokens()] = None,  # noqa: UP045
    input_len: Annotated[Optional[int], RunFlags.input_len()] = None,  # noqa: UP045
    output_len: Annotated[Optional[int], RunFlags.output_len()] = None,  # noqa: UP045
    seed: Annotated[Optional[int], RunFlags.seed()] = None,  # noqa: UP045
    set_values: Annotated[Optional[list[str]], RunFlags.set_values()] = None,  # noqa: UP045
    output: Annotated[Optional[Path], RunFlags.output()] = None,  # noqa: UP045
    dry_run: Annotated[bool, RunFlags.dry_run()] = False,
    quiet: Annotated[bool, RunFlags.quiet()] = False,
    verbose: Annotated[bool, RunFlags.verbose()] = False,
    log_file: Annotated[Optional[Path], RunFlags.log_file()] = None,  # noqa: UP045
    as_json: Annotated[bool, RunFlags.as_json()] = False,
    export_csv: Annotated[bool, RunFlags.export_csv()] = False,
    cycles: Annotated[Optional[int], RunFlags.cycles()] = None,  # noqa: UP045
    order: Annotated[Optional[CycleOrder], RunFlags.order()] = None,  # noqa: UP045
    no_gaps: Annotated[bool, RunFlags.no_gaps()] = False,
    reuse_engine: Annotated[Optional[bool], RunFlags.reuse_engine()] = None,  # noqa: UP045
    resume: Annotated[Optional[Path], RunFlags.resume()] = None,  # noqa: UP045
    rebuild_manifest: Annotated[bool, RunFlags.rebuild_manifest()] = False,
    runner: Annotated[Optional[str], RunFlags.runner()] = None,  # noqa: UP045
    detach: Annotated[bool, RunFlags.detach()] = False,
    plan_from: Annotated[Optional[Path], RunFlags.plan_from()] = None,  # noqa: UP045
    detect: Annotated[Optional[float], RunFlags.detect()] = None,  # noqa: UP045
) -> None:
    """Run an experiment or a study (or preview it with --dry-run)."""
    options = RunOptions.from_command(locals())
    from llenergymeasure.cli.run_cmd import execute_run
    from llenergymeasure.signals import sigterm_as_interrupt

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
    a: Annotated[str, CompareFlags.a()],
    b: Annotated[Optional[str], CompareFlags.b()] = None,  # noqa: UP045
    by: Annotated[Optional[list[str]], CompareFlags.by()] = None,  # noqa: UP045
    fail_if_worse: Annotated[Optional[list[str]], CompareFlags.fail_if_worse()] = None,  # noqa: UP045
    as_json: Annotated[bool, CompareFlags.as_json()] = False,
    markdown: Annotated[bool, CompareFlags.markdown()] = False,
    html: Annotated[Optional[Path], CompareFlags.html()] = None,  # noqa: UP045
    plan: Annotated[bool, CompareFlags.plan()] = False,
    detect: Annotated[Optional[float], CompareFlags.detect()] = None,  # noqa: UP045
    verbose: Annotated[bool, CompareFlags.verbose()] = False,
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
