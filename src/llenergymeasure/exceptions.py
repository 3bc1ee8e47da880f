"""Error hierarchy. Every error llem raises on purpose is an ``LLEMError``.

The CLI maps them to exit codes: ``ConfigError``, ``PreFlightError`` (and pydantic validation
errors) -> 2, other ``LLEMError`` -> 1, ``KeyboardInterrupt`` -> 130.
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
