"""The options of ``llem run`` and ``llem compare``: their declarations (flags, help text) and
``RunOptions``, what ``llem run`` was given, shared by the experiment and study paths.

The declarations are built by calls inside the commands' (postponed) annotations, which typer
evaluates each time it builds the CLI: ``--backend``'s help then lists the engines registered
by then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from llenergymeasure.cli.completion import (
    complete_backend,
    complete_dataset,
    complete_precision,
    precision_values,
)

__all__ = ["CompareFlags", "CycleOrder", "RunFlags", "RunOptions"]


class CycleOrder(str, Enum):
    sequential = "sequential"
    interleaved = "interleaved"
    shuffled = "shuffled"


def backend_help() -> str:
    """``--backend`` help from the engine catalogue ("pytorch, vllm or tensorrt.")."""
    from llenergymeasure.config.catalogue import engine_names

    names = list(engine_names())
    return (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]) + "."


def precision_help() -> str:
    """``--precision`` help from the precision table ("fp32, fp16, ... (per engine: ...)")."""
    return ", ".join(precision_values()) + " (each engine accepts a subset)."


def batch_size_help() -> str:
    """``--batch-size`` help: the concurrency field it sets for each engine (the catalogue)."""
    from llenergymeasure.config.catalogue import concurrency_path, engine_names

    fields = [p for b in engine_names() if (p := concurrency_path(b))]
    return f"Requests the engine runs at once: sets {', '.join(fields)} (the backend's)."


class RunFlags:
    """The typer declaration of each parameter of ``llem run``, by the parameter's name."""

    @staticmethod
    def config() -> Any:
        return typer.Argument(help="Experiment or study YAML.", show_default=False)

    @staticmethod
    def model() -> Any:
        return typer.Option("--model", "-m", help="HF model id, local path, or builtin:tiny.")

    @staticmethod
    def backend() -> Any:
        return typer.Option("--backend", "-b", help=backend_help(), autocompletion=complete_backend)

    @staticmethod
    def dataset() -> Any:
        return typer.Option(
            "--dataset",
            "-d",
            help="aienergyscore, synthetic, or a .jsonl path (an HF dataset: --set dataset.hf=).",
            autocompletion=complete_dataset,
        )

    @staticmethod
    def n() -> Any:
        return typer.Option("-n", help="Number of prompts (a synthetic dataset generates as many).")

    @staticmethod
    def batch_size() -> Any:
        return typer.Option("--batch-size", help=batch_size_help())

    @staticmethod
    def precision() -> Any:
        return typer.Option(
            "--precision",
            help=precision_help(),
            autocompletion=complete_precision,
        )

    @staticmethod
    def max_new_tokens() -> Any:
        return typer.Option("--max-new-tokens", help="New tokens per prompt (max_new_tokens).")

    @staticmethod
    def input_len() -> Any:
        return typer.Option("--input-len", help="Synthetic prompts of this many tokens.")

    @staticmethod
    def output_len() -> Any:
        return typer.Option("--output-len", help="Synthetic dataset: new tokens per prompt.")

    @staticmethod
    def seed() -> Any:
        return typer.Option("--seed", help="random_seed: sampling and engine randomness.")

    @staticmethod
    def set_values() -> Any:
        return typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config field, e.g. --set decoder.temperature=0.7 (repeatable; the value is "
            "YAML; a study applies it to its base).",
        )

    @staticmethod
    def output() -> Any:
        return typer.Option("--output", "-o", help="Results directory.")

    @staticmethod
    def dry_run() -> Any:
        return typer.Option("--dry-run", help="Validate and preview; run nothing.")

    @staticmethod
    def quiet() -> Any:
        return typer.Option("--quiet", "-q", help="Only the final summary (and warnings, errors).")

    @staticmethod
    def verbose() -> Any:
        return typer.Option(
            "--verbose",
            "-v",
            "-V",
            help="Debug lines and phase timings on stderr, and tracebacks on errors.",
        )

    @staticmethod
    def log_file() -> Any:
        return typer.Option(
            "--log-file",
            metavar="PATH",
            help="Append the log (DEBUG and up, redacted) to PATH (default: the user config's "
            "output.log_file, else none).",
        )

    @staticmethod
    def as_json() -> Any:
        return typer.Option("--json", help="Print the summary (or the error) as one JSON object.")

    @staticmethod
    def export_csv() -> Any:
        return typer.Option("--export-csv", help="Also write the result as CSV.")

    @staticmethod
    def cycles() -> Any:
        return typer.Option("--cycles", help="Study cycles (default 3 unless the YAML sets it).")

    @staticmethod
    def order() -> Any:
        return typer.Option("--order", help="Cycle order.")

    @staticmethod
    def no_gaps() -> Any:
        return typer.Option("--no-gaps", help="No thermal gaps between runs.")

    @staticmethod
    def reuse_engine() -> Any:
        return typer.Option(
            "--reuse-engine/--no-reuse-engine",
            help="Studies, every engine: runs with the same engine-load fields share one loaded "
            "engine, or each run loads its own (default: execution.reuse_engine, else the user "
            "config, else each engine's default: on where proven equivalent on hardware, i.e. "
            "vLLM; --dry-run shows which and why).",
        )

    @staticmethod
    def resume() -> Any:
        return typer.Option("--resume", help="Continue an interrupted study directory.")

    @staticmethod
    def rebuild_manifest() -> Any:
        return typer.Option(
            "--rebuild-manifest",
            help="With --resume: rebuild a damaged study_manifest.json from the results in the "
            "directory (and the study file, when given), keeping the old one beside.",
        )

    @staticmethod
    def runner() -> Any:
        return typer.Option(
            "--runner", help="Runner for every backend of a study: local, slurm, docker:<image>."
        )

    @staticmethod
    def detach() -> Any:
        return typer.Option("--detach", help="slurm runner: submit the jobs and return at once.")

    @staticmethod
    def plan_from() -> Any:
        return typer.Option(
            "--plan-from",
            metavar="DIR",
            help="With --dry-run: how many cycles each config needs to detect --detect PCT, "
            "from the spread of the runs in DIR (an earlier study or results).",
        )

    @staticmethod
    def detect() -> Any:
        return typer.Option(
            "--detect", metavar="PCT", help="--plan-from: the difference to detect, % (5)."
        )


class CompareFlags:
    """The typer declaration of each parameter of ``llem compare``, by the parameter's name."""

    @staticmethod
    def a() -> Any:
        return typer.Argument(
            help="Side A (the baseline): result.json, experiment or study directory, a folder "
            "holding them, or a comma-separated list.",
            show_default=False,
            metavar="A",
        )

    @staticmethod
    def b() -> Any:
        return typer.Argument(
            help="Side B (the candidate), the same kinds.", show_default=False, metavar="B"
        )

    @staticmethod
    def by() -> Any:
        return typer.Option(
            "--by",
            metavar="FIELD",
            help="Match configs equal apart from this config field (repeatable), e.g. "
            "--by precision. Default: equal measurement_config_hash.",
        )

    @staticmethod
    def fail_if_worse() -> Any:
        return typer.Option(
            "--fail-if-worse",
            metavar="METRIC=PCT",
            help="Exit 1 when B is worse than A by more than PCT % with confidence "
            "(repeatable). Metrics: j_per_token, j_per_token_adjusted, tokens_per_s, "
            "ttft_p50, ttft_p99, itl_p50, itl_p99, j_per_request, j_per_request_adjusted, "
            "peak_memory.",
        )

    @staticmethod
    def as_json() -> Any:
        return typer.Option("--json", help="Print the comparison (or the error) as JSON.")

    @staticmethod
    def markdown() -> Any:
        return typer.Option("--markdown", help="Print Markdown tables (a pull-request comment).")

    @staticmethod
    def html() -> Any:
        return typer.Option(
            "--html", help="Also write the comparison as a self-contained HTML page."
        )

    @staticmethod
    def plan() -> Any:
        return typer.Option(
            "--plan",
            help="Print how many cycles a study needs to detect --detect PCT, from the spread "
            "of A (and B).",
        )

    @staticmethod
    def detect() -> Any:
        return typer.Option(
            "--detect", metavar="PCT", help="--plan: the difference to detect, % (5)."
        )

    @staticmethod
    def verbose() -> Any:
        return typer.Option("--verbose", "-v", help="Tracebacks on errors.")


@dataclass(frozen=True)
class RunOptions:
    """Everything ``llem run`` was given on the command line."""

    config: Path | None = None
    model: str | None = None
    backend: str | None = None
    dataset: str | None = None
    n: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    max_new_tokens: int | None = None
    input_len: int | None = None  # synthetic dataset: dataset.input_len
    output_len: int | None = None  # synthetic dataset: dataset.output_len
    seed: int | None = None  # random_seed
    set_values: tuple[str, ...] = ()  # --set key.path=value, in order
    output: Path | None = None
    dry_run: bool = False
    quiet: bool = False
    verbose: bool = False
    export_csv: bool = False
    cycles: int | None = None
    order: str | None = None
    no_gaps: bool = False
    reuse_engine: bool | None = None  # studies: --reuse-engine / --no-reuse-engine
    resume: Path | None = None
    runner: str | None = None  # --runner for every backend of a study
    detach: bool = False  # slurm runner: submit and return
    as_json: bool = False  # --json: the summary (or error) as one JSON object on stdout
    plan_from: Path | None = None  # --dry-run: plan cycles from an earlier study's spread
    detect_pct: float | None = None  # --plan-from: the difference to detect, %
    rebuild_manifest: bool = False  # with --resume: rebuild a damaged manifest from the results

    @classmethod
    def from_command(cls, given: Mapping[str, Any]) -> RunOptions:
        """From the parameters of the ``llem run`` command, by name: ``--set`` values as a
        tuple, ``--order``'s value, ``--detect`` as ``detect_pct``; ``--log-file`` belongs to
        the command's logging, not to the run. ``TypeError`` for a parameter it does not know.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(given) - fields - {"detect", "log_file"}
        if unknown:
            raise TypeError(f"llem run parameters without a RunOptions field: {sorted(unknown)}")
        values = {name: value for name, value in given.items() if name in fields}
        values["set_values"] = tuple(given["set_values"] or ())
        order = given["order"]
        values["order"] = order.value if order else None
        values["detect_pct"] = given["detect"]
        return cls(**values)
