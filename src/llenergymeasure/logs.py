"""llem's logging: one logger tree, and how messages travel between llem's processes.

Every module logs to ``logging.getLogger(__name__)``, a child of the ``llenergymeasure``
logger. Phase messages ("loading ...", "measuring 20 prompts") are INFO, problems that do not
stop a run WARNING, details DEBUG. The package itself only adds a ``NullHandler`` to the
``llenergymeasure`` logger: importing or using llem as a library prints no log line unless the
application configures logging (``logging.basicConfig(level=logging.INFO)`` shows the phase
messages). The ``llem`` command installs its handlers with ``process_logging`` (below).

Processes llem spawns (a study's run workers, a runner container serving an engine group)
send their messages to the process that shows them: ``forward_messages(send)`` turns each
record from INFO up into one line of text (``"warning: ..."`` for a warning) and
``relay(logger, text, run_id=...)`` logs such a line again at its level on the other side,
marked with the run it came from.

``process_logging(quiet=, verbose=, log_file=)`` installs the handlers of a process of llem's
own (the ``llem`` command, a SLURM job, a runner container) for the duration of a block:

- **stderr**: llem's records as ``[llem] message`` (``[llem] warning: ...`` for a warning),
  at INFO, WARNING when ``quiet``, DEBUG when ``verbose``. Lines are written through tqdm when
  it is loaded, so that a progress bar is redrawn below them, not torn.
- **log file**: every llem record from DEBUG up with its time, level and logger, whatever
  ``quiet`` says; appended through ``files.open_log`` (redacted line by line, never through
  a symlink).
- **other libraries**: the loggers in ``THIRD_PARTY_LOGGERS`` are set to WARNING unless
  ``verbose``; records of libraries that propagate reach both handlers (``[name] warning:
  ...``); a record a library already printed through its own stream handler (as
  huggingface_hub does) is not printed twice. vLLM configures its logging from the
  environment in each of its processes: ``VLLM_LOGGING_STREAM`` defaults to stderr (stdout
  holds only llem's summary) and, unless ``verbose``, ``VLLM_LOGGING_LEVEL`` to WARNING (a
  variable the user set is kept).

Every line is redacted by the formatters (and again by the CLI's wrapped standard streams).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from llenergymeasure.redaction import redact_text

__all__ = [
    "FILE_ONLY",
    "LOGGER_NAME",
    "RUN_ATTRIBUTE",
    "THIRD_PARTY_LOGGERS",
    "ConsoleHandler",
    "console_level",
    "forward_messages",
    "message_text",
    "process_logging",
    "relay",
]

#: The root of llem's logger tree; every module's logger is a child of it.
LOGGER_NAME = "llenergymeasure"

#: ``extra=`` of a record meant for the log file only (stderr showed it another way).
FILE_ONLY = {"llem_file_only": True}

#: The record attribute naming the study run a relayed message came from.
RUN_ATTRIBUTE = "llem_run"

#: Loggers of the libraries llem drives, quieted to WARNING by the CLI unless ``--verbose``.
THIRD_PARTY_LOGGERS = (
    "transformers",
    "huggingface_hub",
    "datasets",
    "vllm",
    "tensorrt_llm",
    "codecarbon",
    "zeus",
    "torch",
    "accelerate",
    "urllib3",
    "httpx",
    "httpcore",
    "aiohttp",
    "asyncio",
    "filelock",
    "fsspec",
    "matplotlib",
    "PIL",
)

# The words a relayed line starts with for each level above INFO (the CLI shows them too).
_LEVEL_WORDS = ((logging.ERROR, "error: "), (logging.WARNING, "warning: "))


def message_text(record: logging.LogRecord) -> str:
    """A record as one line of text: its message, after ``warning: `` / ``error: `` above
    INFO, after the run it came from (``run_id: ``) when it was relayed from one."""
    text = record.getMessage()
    for level, word in _LEVEL_WORDS:
        if record.levelno >= level:
            text = word + text
            break
    run = getattr(record, RUN_ATTRIBUTE, None)
    return f"{run}: {text}" if run else text


def relay(logger: logging.Logger, text: str, *, run_id: str | None = None) -> None:
    """Log a line made by ``message_text`` (in another process) at its level again."""
    level = logging.INFO
    for candidate, word in _LEVEL_WORDS:
        if text.startswith(word):
            level, text = candidate, text[len(word) :]
            break
    logger.log(level, "%s", text, extra={RUN_ATTRIBUTE: run_id} if run_id else None)


class _Forwarder(logging.Handler):
    """Sends each record as a line of text; a record logged while sending is dropped."""

    def __init__(self, send: Callable[[str], None], level: int) -> None:
        super().__init__(level)
        self._send = send
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            self._send(message_text(record))
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False


@contextlib.contextmanager
def forward_messages(send: Callable[[str], None], level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, every llem record at ``level`` or above goes to ``send`` as a line.

    Used by the processes llem spawns: a study worker sends the lines over its pipe, a runner
    container writes them as replies; the process that shows them logs them again (``relay``).
    The ``llenergymeasure`` logger is opened to ``level`` for the block and restored after.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _Forwarder(send, level)
    previous = logger.level
    if previous == logging.NOTSET or previous > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- the handlers of llem's own processes --------------------------------------------------

_LLEM_PREFIX = "[llem] "
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FILE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
#: Environment defaults for vLLM's own logging (read by each vLLM process it starts).
_VLLM_STREAM = ("VLLM_LOGGING_STREAM", "ext://sys.stderr")
_VLLM_LEVEL = ("VLLM_LOGGING_LEVEL", "WARNING")


def console_level(*, quiet: bool = False, verbose: bool = False) -> int:
    """The stderr level of ``-q`` / default / ``-V`` (``--verbose`` wins)."""
    if verbose:
        return logging.DEBUG
    return logging.WARNING if quiet else logging.INFO


def _is_llem(record: logging.LogRecord) -> bool:
    return record.name == LOGGER_NAME or record.name.startswith(LOGGER_NAME + ".")


class _ConsoleFormatter(logging.Formatter):
    """``[llem] message`` for llem's records, ``[name] warning: message`` for others."""

    def format(self, record: logging.LogRecord) -> str:
        if _is_llem(record):
            text = _LLEM_PREFIX + message_text(record)
        else:
            text = f"[{record.name}] {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact_text(text)


class _FileFormatter(logging.Formatter):
    """``time LEVEL logger: message`` (with the run a relayed message came from)."""

    def __init__(self) -> None:
        super().__init__(_FILE_FORMAT, _FILE_TIME_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        run = getattr(record, RUN_ATTRIBUTE, None)
        if run:
            record.message = f"{run}: {record.message}"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _printed_by_its_library(record: logging.LogRecord) -> bool:
    """Whether a logger between the record's and the root already printed it with a stream
    handler of its own (huggingface_hub installs one and still propagates)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        for handler in logger.handlers:
            if (
                isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)
                and record.levelno >= handler.level
            ):
                return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


class ConsoleHandler(logging.Handler):
    """Writes to the process's ``sys.stderr`` of the moment (the CLI's redacting wrapper),
    above any tqdm bar."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(_ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "llem_file_only", False):
            return
        if not _is_llem(record) and _printed_by_its_library(record):
            return
        try:
            text = self.format(record)
            stream = sys.stderr
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:  # clears and redraws any bar on the stream around the line
                tqdm.tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def process_logging(
    *, quiet: bool = False, verbose: bool = False, log_file: str | Path | None = None
) -> Iterator[None]:
    """llem's handlers on the root logger while the block runs (a ``llem`` command, or a
    process llem started); removed, and every level and variable it set restored, after.

    stderr gets llem's records at INFO (WARNING when ``quiet``, DEBUG when ``verbose``);
    ``log_file`` every llem record from DEBUG up. The log file is opened first: a path that
    cannot be a log (a link, a directory, an input of the command) is an error before anything
    runs, not a lost log later."""
    log = None
    if log_file is not None:
        from llenergymeasure.files import open_log

        log = open_log(Path(log_file).expanduser())
    root = logging.getLogger()
    llem = logging.getLogger(LOGGER_NAME)
    console = ConsoleHandler(console_level(quiet=quiet, verbose=verbose))
    handlers: list[logging.Handler] = [console]
    if log is not None:
        file_handler = logging.StreamHandler(log)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(_FileFormatter())
        handlers.append(file_handler)
    saved = {
        name: logging.getLogger(name).level for name in (LOGGER_NAME, "", *THIRD_PARTY_LOGGERS)
    }
    llem.setLevel(logging.DEBUG if log is not None else console.level)
    # other libraries' records that propagate: warnings, and with --verbose their INFO too
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    env_set = _vllm_environment(verbose)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for key in env_set:
            os.environ.pop(key, None)
            _SET_BY_LLEM.discard(key)
        if log is not None:
            log.close()


#: The environment variables llem itself set for its in-process engines (not the user's).
_SET_BY_LLEM: set[str] = set()


def _vllm_environment(verbose: bool) -> list[str]:
    """Default vLLM's own logging to stderr (and to WARNING unless ``verbose``) for the vLLM
    processes this command starts; returns the variables it set (a user's value stays)."""
    wanted = [_VLLM_STREAM] if verbose else [_VLLM_STREAM, _VLLM_LEVEL]
    set_here = []
    for key, value in wanted:
        if key not in os.environ:
            os.environ[key] = value
            set_here.append(key)
    _SET_BY_LLEM.update(set_here)
    return set_here


def environment_for_servers() -> dict[str, str]:
    """This process's environment without the logging defaults llem set for its own engines: a
    server llem starts logs at its own level into ``server.log`` (its INFO lines are what tells
    why a server did not come up); a variable the user set is kept."""
    return {k: v for k, v in os.environ.items() if k not in _SET_BY_LLEM}
