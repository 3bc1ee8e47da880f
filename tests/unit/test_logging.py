"""llem's logging: one logger tree, silent as a library, levels and a log file in the CLI.

- every module logs to ``logging.getLogger(__name__)`` under ``llenergymeasure``; the package
  adds only a ``NullHandler``, and no module prints to stderr by hand;
- ``llem`` shows phase messages on stderr (``-q``: warnings and errors only; ``-V``: debug
  lines too) and appends every record to ``--log-file`` (or ``output.log_file``), redacted and
  never through a symlink;
- other libraries' loggers are quieted to WARNING unless ``-V``; CodeCarbon's own handler is
  replaced by propagation; vLLM's processes get WARNING/stderr defaults;
- records of spawned processes travel as lines and are logged again at their level.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llenergymeasure
from llenergymeasure.cli.app import app
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.logs import (
    LOGGER_NAME,
    ConsoleHandler,
    console_level,
    forward_messages,
    message_text,
    process_logging,
    relay,
)
from llenergymeasure.redaction import remember_secret
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

PACKAGE = Path(llenergymeasure.__file__).parent
cli = CliRunner()
RUN = ["run", "--model", "builtin:tiny", "--dataset", "synthetic", "-n", "3"]
SECRET = "PLANTED-log-secret-4711"


@pytest.fixture
def fake_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    """``llem run`` measures with a fake engine (no model, no torch work)."""

    def measure(config, **_):
        orchestrator = ExperimentOrchestrator(
            engine=FakeEngine(), energy_backend=FakeEnergyBackend()
        )
        quick = config.warmup.model_copy(update={"thermal_floor_seconds": 0.0, "n_warmup": 1})
        logging.getLogger("llenergymeasure.harness.fake").info("a message with %s", SECRET)
        return orchestrator.run(config.model_copy(update={"warmup": quick}))

    remember_secret(SECRET)
    monkeypatch.setattr("llenergymeasure.harness.measure.measure", measure)


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Levels and handlers of the loggers a test touches are put back afterwards."""
    names = ["", LOGGER_NAME, "httpx", "fakelib", "codecarbon"]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    propagate = logging.getLogger("codecarbon").propagate
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
    logging.getLogger("codecarbon").propagate = propagate


# --- the logger tree and the library's silence ---------------------------------------------


def _source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_adds_only_a_null_handler_to_its_logger() -> None:
    handlers = logging.getLogger(LOGGER_NAME).handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]


def test_every_module_logs_to_its_own_child_logger() -> None:
    """``logging.getLogger(__name__)`` in modules; other names only where logging is set up
    (``logs.py``) or a library's logger is routed (the CodeCarbon adapter)."""
    allowed = {"logs.py", "codecarbon_backend.py"}
    found = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
            ):
                named = node.args and isinstance(node.args[0], ast.Name)
                if not (named and node.args[0].id == "__name__") and path.name not in allowed:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def _writes_to_stderr(call: ast.Call) -> bool:
    """``print(..., file=sys.stderr)``, ``sys.stderr.write(...)``, ``typer.echo(..., err=True)``."""
    func = ast.unparse(call.func)
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    return (
        (func == "print" and keywords.get("file") == "sys.stderr")
        or func == "sys.stderr.write"
        or (func == "typer.echo" and keywords.get("err") == "True")
    )


def test_no_module_prints_messages_to_stderr_by_hand() -> None:
    """Messages are log records. Only the CLI's error display writes to stderr itself, and
    the server guard (a tiny process that imports nothing of llem) prints its own failure."""
    allowed = {"cli/app.py", "cli/compare_cmd.py", "online/server_guard.py"}
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in _source_files()
        if str(path.relative_to(PACKAGE)) not in allowed
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and _writes_to_stderr(node)
    ]
    assert found == []


def test_the_stderr_check_sees_each_way_of_printing() -> None:
    calls = [
        'print("x", file=sys.stderr)',
        'sys.stderr.write("x")',
        'typer.echo("x", err=True)',
        'print("x")',
        'typer.echo("x")',
    ]
    seen = [_writes_to_stderr(ast.parse(c).body[0].value) for c in calls]  # type: ignore[attr-defined]
    assert seen == [True, True, True, False, False]


def test_the_library_prints_nothing_until_the_application_configures_logging(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    script = (
        "import logging, sys\n"
        "import llenergymeasure as llem\n"
        "kw = dict(model='builtin:tiny', dataset={'input_len': 4, 'output_len': 2}, n=2,\n"
        "          warmup={'n_warmup': 0, 'thermal_floor_seconds': 0},\n"
        "          baseline={'enabled': False}, passthrough_kwargs={'trust_remote_code': True})\n"
        "llem.run_experiment(**kw)\n"
        "sys.stderr.write('--- configured ---\\n')\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')\n"
        "llem.run_experiment(**kw)\n"
    )
    env = {**os.environ, "LLEM_CACHE_DIR": str(tiny_model_dir.parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    before, _, after = proc.stderr.partition("--- configured ---\n")
    assert before == ""  # not even the trust_remote_code warning: the application decides
    assert proc.stdout == ""
    assert "INFO llenergymeasure.harness.orchestrator pre-flight checks" in after
    assert "WARNING llenergymeasure.harness.orchestrator passthrough_kwargs.trust_remote_code" in (
        after
    )


# --- the CLI: levels ----------------------------------------------------------------------


def test_console_levels_of_quiet_default_and_verbose() -> None:
    assert console_level() == logging.INFO
    assert console_level(quiet=True) == logging.WARNING
    assert console_level(verbose=True) == logging.DEBUG
    assert console_level(quiet=True, verbose=True) == logging.DEBUG


def test_phase_messages_are_on_stderr_and_the_summary_alone_on_stdout(
    tmp_path: Path, fake_measure: None
) -> None:
    result = cli.invoke(app, [*RUN, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "[llem] pre-flight checks\n" in result.stderr
    assert "[llem] measuring 3 prompts\n" in result.stderr
    assert "[llem]" not in result.stdout and result.stdout.startswith("llem result")
    assert "phase timings" not in result.stderr  # debug


def test_quiet_keeps_the_summary_and_verbose_adds_debug_lines(
    tmp_path: Path, fake_measure: None
) -> None:
    quiet = cli.invoke(app, [*RUN, "-o", str(tmp_path), "-q"])
    verbose = cli.invoke(app, [*RUN, "-o", str(tmp_path), "-V"])
    assert quiet.exit_code == verbose.exit_code == 0, quiet.output + verbose.output
    assert quiet.stderr == "" and quiet.stdout.startswith("llem result")
    assert "[llem] pre-flight checks" in verbose.stderr
    assert "[llem] phase timings" in verbose.stderr  # DEBUG records
    assert "[llem]   measurement window" in verbose.stderr


def test_the_cli_removes_its_handlers_after_the_command(tmp_path: Path, fake_measure: None):
    before = list(logging.getLogger().handlers)
    levels = (logging.getLogger().level, logging.getLogger(LOGGER_NAME).level)
    assert cli.invoke(app, [*RUN, "-o", str(tmp_path)]).exit_code == 0
    assert logging.getLogger().handlers == before
    assert (logging.getLogger().level, logging.getLogger(LOGGER_NAME).level) == levels


# --- the log file --------------------------------------------------------------------------


def test_the_log_file_gets_every_record_redacted_even_with_quiet(
    tmp_path: Path, fake_measure: None
) -> None:
    log = tmp_path / "llem.log"
    result = cli.invoke(app, [*RUN, "-o", str(tmp_path / "out"), "-q", "--log-file", str(log)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    text = log.read_text()
    assert SECRET not in text and "a message with <redacted>" in text
    lines = text.splitlines()
    started = "INFO llenergymeasure.harness.orchestrator: pre-flight checks"
    assert any(line.endswith(started) for line in lines)
    assert any("DEBUG llenergymeasure.cli.run_experiment_cmd: phase timings" in x for x in lines)
    # appended, never replaced
    again = cli.invoke(app, [*RUN, "-o", str(tmp_path / "out"), "-q", "--log-file", str(log)])
    assert again.exit_code == 0
    assert log.read_text().startswith(text) and log.read_text().count("pre-flight checks") == 2


def test_the_user_config_log_file_is_used_without_the_flag(
    tmp_path: Path, fake_measure: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "configured.log"
    config = tmp_path / "config.yaml"
    config.write_text(f"output:\n  log_file: {log}\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    assert cli.invoke(app, [*RUN, "-o", str(tmp_path / "out")]).exit_code == 0
    assert "pre-flight checks" in log.read_text()
    flag = tmp_path / "flag.log"
    flagged = cli.invoke(app, [*RUN, "-o", str(tmp_path / "o2"), "--log-file", str(flag)])
    assert flagged.exit_code == 0
    assert "pre-flight checks" in flag.read_text()
    assert log.read_text().count("pre-flight checks") == 1  # the flag wins


def test_a_log_file_that_is_a_symlink_is_refused_before_anything_runs(
    tmp_path: Path, fake_measure: None
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "llem.log"
    link.symlink_to(victim)
    result = cli.invoke(app, [*RUN, "-o", str(tmp_path / "out"), "--log-file", str(link)])
    assert result.exit_code == 2
    assert "link" in result.stderr
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "out").exists()  # nothing ran


def test_an_error_is_in_the_log_file_with_its_traceback_and_once_on_stderr(
    tmp_path: Path,
) -> None:
    log = tmp_path / "llem.log"
    result = cli.invoke(app, ["run", str(tmp_path / "missing.yaml"), "--log-file", str(log)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: config file not found")
    assert result.stderr.count("config file not found") == 1
    text = log.read_text()
    assert "ERROR llenergymeasure.cli.app: exit code 2: ConfigError: config file not found" in text
    assert "Traceback (most recent call last)" in text


# --- other libraries -----------------------------------------------------------------------


def test_other_libraries_are_quieted_to_warning_unless_verbose(
    capsys: pytest.CaptureFixture[str], clean_logging: None
) -> None:
    httpx = logging.getLogger("httpx")
    httpx.setLevel(logging.DEBUG)  # as a library may set itself
    with process_logging():
        httpx.info("HTTP Request: GET /health")
        httpx.warning("retrying")
    err = capsys.readouterr().err
    assert "HTTP Request" not in err
    assert "[httpx] warning: retrying\n" in err
    assert httpx.level == logging.DEBUG  # restored
    with process_logging(verbose=True):
        httpx.info("HTTP Request: GET /health")
    assert "[httpx] info: HTTP Request: GET /health" in capsys.readouterr().err


def test_a_library_that_prints_through_its_own_handler_is_not_printed_twice(
    capsys: pytest.CaptureFixture[str], clean_logging: None
) -> None:
    own = io.StringIO()
    fakelib = logging.getLogger("fakelib")
    fakelib.addHandler(logging.StreamHandler(own))  # as huggingface_hub does, and propagates
    with process_logging():
        fakelib.warning("deprecated option")
    assert own.getvalue() == "deprecated option\n"
    assert "deprecated option" not in capsys.readouterr().err


def test_vllm_logging_defaults_to_stderr_and_warning_and_a_users_setting_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    with process_logging():
        assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
        assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert "VLLM_LOGGING_STREAM" not in os.environ
    monkeypatch.delenv("VLLM_LOGGING_LEVEL")
    with process_logging():
        assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    with process_logging(verbose=True):
        assert "VLLM_LOGGING_LEVEL" not in os.environ


def test_codecarbon_info_lines_are_dropped_and_its_errors_reach_our_handlers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_logging: None
) -> None:
    """A stand-in for codecarbon 3.x: a stderr handler of its own, no propagation, and an INFO
    line in the tracker's constructor before its ``log_level`` applies."""
    codecarbon_logger = logging.getLogger("codecarbon")

    class OfflineEmissionsTracker:
        def __init__(self, **kwargs: object) -> None:
            codecarbon_logger.info("offline tracker init")
            codecarbon_logger.setLevel(str(kwargs["log_level"]).upper())
            codecarbon_logger.handlers.clear()
            codecarbon_logger.addHandler(logging.StreamHandler(sys.stderr))
            codecarbon_logger.propagate = False

    module = types.ModuleType("codecarbon")
    module.OfflineEmissionsTracker = OfflineEmissionsTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codecarbon", module)
    codecarbon_logger.setLevel(logging.INFO)  # what importing codecarbon does
    codecarbon_logger.addHandler(logging.StreamHandler(sys.stderr))
    codecarbon_logger.propagate = False
    from llenergymeasure.energy.codecarbon_backend import _default_tracker_factory

    with process_logging():
        _default_tracker_factory(log_level="error")
        codecarbon_logger.info("Energy consumed for RAM : 0.000071 kWh")
        codecarbon_logger.error("could not read RAPL")
    err = capsys.readouterr().err
    assert "offline tracker init" not in err and "Energy consumed" not in err
    assert err.count("could not read RAPL") == 1
    assert "[codecarbon] error: could not read RAPL" in err


# --- records across processes --------------------------------------------------------------


def test_forwarded_records_become_lines_and_are_logged_again_at_their_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[str] = []
    child = logging.getLogger("llenergymeasure.harness.orchestrator")
    with forward_messages(sent.append):
        child.debug("not forwarded")
        child.info("loading %s", "builtin:tiny")
        child.warning("sampler error")
    child.info("after the block")
    assert sent == ["loading builtin:tiny", "warning: sampler error"]

    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    parent = logging.getLogger("llenergymeasure.study.progress")
    for line in sent:
        relay(parent, line, run_id="cfg1_c1")
    relayed = [r for r in caplog.records if r.name == parent.name]
    assert [(r.levelno, message_text(r)) for r in relayed] == [
        (logging.INFO, "cfg1_c1: loading builtin:tiny"),
        (logging.WARNING, "cfg1_c1: warning: sampler error"),
    ]


def test_a_record_logged_while_forwarding_is_not_forwarded_again() -> None:
    sent: list[str] = []
    logger = logging.getLogger("llenergymeasure.study.worker")

    def send(text: str) -> None:
        sent.append(text)
        logger.info("echo of %s", text)  # e.g. a relay in the same process

    with forward_messages(send):
        logger.info("once")
    assert sent == ["once"]


def test_a_console_line_is_written_above_a_tqdm_bar(
    capsys: pytest.CaptureFixture[str], clean_logging: None
) -> None:
    from tqdm import tqdm

    logger = logging.getLogger("llenergymeasure.study.progress")
    with process_logging():
        bar = tqdm(total=2, file=sys.stderr, desc="study")
        bar.update(1)
        logger.info("run 2/2 cfg2")
        bar.close()
    err = capsys.readouterr().err
    before, _, after = err.partition("[llem] run 2/2 cfg2\n")
    assert after, err  # the line is whole, on its own line
    assert before.endswith("\r")  # the bar was cleared first
    assert "study" in after  # and drawn again below it


def test_the_console_handler_writes_to_the_stderr_of_the_moment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = ConsoleHandler()
    record = logging.LogRecord("llenergymeasure.x", logging.WARNING, __file__, 1, "hot", (), None)
    handler.handle(record)
    assert capsys.readouterr().err == "[llem] warning: hot\n"
    swapped = io.StringIO()
    original = sys.stderr
    sys.stderr = swapped
    try:
        handler.handle(record)
    finally:
        sys.stderr = original
    assert swapped.getvalue() == "[llem] warning: hot\n"


def test_json_output_stays_clean_of_log_lines(tmp_path: Path, fake_measure: None) -> None:
    result = cli.invoke(app, [*RUN, "-o", str(tmp_path), "--json", "-V"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_requests"] == 3
    assert "[llem] phase timings" in result.stderr


def test_a_started_server_keeps_its_own_log_level_but_a_users_setting_stays(monkeypatch):
    from llenergymeasure.logs import environment_for_servers, process_logging

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    with process_logging():
        assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"  # llem's own engines
        assert "VLLM_LOGGING_LEVEL" not in environment_for_servers()
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    with process_logging():
        assert environment_for_servers()["VLLM_LOGGING_LEVEL"] == "DEBUG"
