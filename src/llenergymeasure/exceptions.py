"""Error hierarchy. Every error llem raises on purpose is an ``LLEMError``.

The CLI maps them to exit codes: ``ConfigError``, ``PreFlightError`` (and pydantic validation
errors) -> 2, ``EnvironmentProblem`` (and any ``OSError``) -> 4, other ``LLEMError`` -> 1,
``KeyboardInterrupt`` -> 130; a run whose finished measurement had to be saved to a rescue
folder exits 3.
"""

from __future__ import annotations


class LLEMError(Exception):
    """Base class of every error llem raises deliberately.

    ``hint`` is an optional one-line suggestion shown under the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(LLEMError):
    """Invalid configuration or usage: bad YAML, unknown key, wrong type, invalid combination."""

    exit_code = 2


class UnsafeWriteError(ConfigError):
    """A write llem refuses: through a symbolic link, over a file the same command reads, or
    replacing a measurement with something else (exit 2: choose another path)."""


class EnvironmentProblem(LLEMError):
    """The machine stopped llem: disk full, read-only filesystem, permission denied, not a
    directory, a folder that vanished, a corrupt cache. Exit 4; nothing finished was lost."""

    exit_code = 4

    def __init__(
        self, message: str, *, hint: str | None = None, errno_value: int | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno_value


class MeasurementsRescued(LLEMError):
    """llem had to stop or could not save where asked, but every finished measurement was
    saved to a rescue folder that the message names (exit 3)."""

    exit_code = 3


class BackendError(LLEMError):
    """An inference engine or energy backend failed, or is missing."""


class EngineNotInstalledError(BackendError):
    """The engine a config names is not installed here: a missing prerequisite, found before
    anything runs, so the CLI exits with 2 like other pre-flight problems."""

    exit_code = 2


class PreFlightError(LLEMError):
    """One or more pre-flight checks failed; ``problems`` lists every one of them.

    Pre-flight problems are bad input or a missing prerequisite (file, model, engine), so the
    CLI exits with 2 like other usage errors.
    """

    exit_code = 2

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"pre-flight checks failed ({len(self.problems)}):\n{lines}", hint=hint)


class ExperimentError(LLEMError):
    """An experiment failed while running."""


class StudyError(LLEMError):
    """A study could not be prepared or run."""
