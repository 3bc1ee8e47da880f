"""Every numeric limit of llem's inputs, in one table.

Each config field that holds a number is annotated with one of the ``Bound`` objects below
(``Annotated[int, PROMPTS]``); pydantic enforces it at validation, so ``llem run --dry-run``
rejects a value out of range before anything runs, the field reference shows it
(``docs/gen_reference.py``), and a validation error quotes the bound and the reason for it.
``tests/unit/test_config_bounds.py`` walks every config model and fails on a numeric field
without a bound.

The ceilings are generous but finite: no value a user can write may make llem wait for years,
allocate without limit or crash an engine after the model has loaded. The limits of files llem
reads (config YAML, JSONL datasets) are here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types as at

__all__ = [
    "BASELINE_SECONDS",
    "BATCH",
    "BEAMS",
    "BURSTINESS",
    "CARBON_INTENSITY",
    "CONFIG_FILE_MAX_BYTES",
    "CV_TARGET",
    "CYCLES",
    "DATASET_LINE_MAX_BYTES",
    "GAP_SECONDS",
    "GPU_COUNT",
    "GPU_INDEX",
    "GRID_POINTS",
    "JOBS_AT_ONCE",
    "KV_BLOCK_TOKENS",
    "LATENCY_TARGET_MS",
    "LORA_RANK",
    "MAX_LOAD_SECONDS",
    "MEMORY_FRACTION",
    "PENALTY",
    "POLL_SECONDS",
    "PORT",
    "PREFLIGHT_TIMEOUT_SECONDS",
    "PROMPTS",
    "PUE",
    "REQUEST_RATE",
    "RUN_TIMEOUT_SECONDS",
    "SAMPLING_INTERVAL_MS",
    "SEED",
    "SLURM_GPUS",
    "TEMPERATURE",
    "TOKENS",
    "TOP_K",
    "TOP_P",
    "WAIT_TIMEOUT_SECONDS",
    "WARMUP_MAX_RUNS",
    "WARMUP_REQUESTS",
    "WARMUP_RUNS",
    "YAML_MAX_DEPTH",
    "YAML_MAX_NODES",
    "Bound",
    "bound_of",
]

DAY_S = 86_400
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, eq=False)  # identity: typing caches Annotated[...] by equality
class Bound(at.GroupedMetadata):
    """The closed (or, with ``*_open``, open) interval a number must lie in.

    As ``Annotated`` metadata it expands to ``annotated_types`` ``Ge``/``Gt`` and ``Le``/``Lt``,
    which pydantic enforces; the object itself stays in the field's metadata so that docs and
    error messages can show ``unit`` and ``why``.
    """

    lower: float
    upper: float
    lower_open: bool = False
    upper_open: bool = False
    unit: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError("a bound is finite at both ends")
        if self.lower >= self.upper:
            raise ValueError(f"empty bound [{self.lower}, {self.upper}]")

    def __iter__(self) -> Iterator[object]:  # the constraints pydantic applies
        yield at.Gt(self.lower) if self.lower_open else at.Ge(self.lower)
        yield at.Lt(self.upper) if self.upper_open else at.Le(self.upper)

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        above = value > self.lower if self.lower_open else value >= self.lower
        below = value < self.upper if self.upper_open else value <= self.upper
        return above and below

    def interval(self) -> str:
        """``[0, 86,400] s``: brackets include an end, parentheses exclude it."""
        left = "(" if self.lower_open else "["
        right = ")" if self.upper_open else "]"
        unit = f" {self.unit}" if self.unit else ""
        return f"{left}{_number(self.lower)}, {_number(self.upper)}{right}{unit}"

    def explain(self) -> str:
        """The interval and why it was chosen, for error messages and docs."""
        return f"{self.interval()}: {self.why}" if self.why else self.interval()


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


def bound_of(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> Bound | None:
    """The ``Bound`` of a field (its pydantic ``metadata``, or inside ``annotation``), or None.

    Looks through ``Annotated``, ``Optional``/unions and containers, so ``list[Annotated[int,
    GPU_INDEX] | str] | None`` gives ``GPU_INDEX``.
    """
    import typing

    for item in metadata:
        if isinstance(item, Bound):
            return item
    if typing.get_origin(annotation) is typing.Annotated:
        found = bound_of(None, annotation.__metadata__)
        if found is not None:
            return found
    for arg in typing.get_args(annotation):
        found = bound_of(arg)
        if found is not None:
            return found
    return None


_SEED_WHY = "numpy.random.seed, which vLLM's and transformers' seeding call, accepts 0 to 2**32 - 1"

# --- counts --------------------------------------------------------------------------------
#: Prompts of a run (``n``), of a synthetic dataset; requests of an online run.
PROMPTS = Bound(
    1,
    1_000_000,
    why="a million prompts (the AI Energy Score set has 1,000); more is a different experiment",
)
#: Token lengths: ``max_new_tokens``, synthetic ``input_len``/``output_len``, engine sequence
#: lengths, a JSONL row's ``max_new_tokens``.
TOKENS = Bound(
    1,
    2**20,
    unit="tokens",
    why="2**20, above the longest context window of current models (about a million tokens)",
)
#: Sequences processed together: batch sizes, ``max_num_seqs``, ``max_concurrency``.
BATCH = Bound(1, 65_536, why="65,536 sequences at once, far beyond what one GPU node serves")
#: GPUs used by one run: tensor/pipeline parallel sizes, data-parallel processes.
GPU_COUNT = Bound(1, 256, why="more GPUs than any single host has")
#: An NVML GPU index.
GPU_INDEX = Bound(0, 255, why="more GPUs than any single host has")
#: GPUs a SLURM job asks for (0 for CPU-only clusters).
SLURM_GPUS = Bound(0, 256, why="more GPUs than any single host has")
#: Warmup runs before the window.
WARMUP_RUNS = Bound(0, 1_000, why="a thousand runs; warmup converges within a few")
#: Most warmup runs with convergence detection.
WARMUP_MAX_RUNS = Bound(1, 1_000, why="a thousand runs; warmup converges within a few")
#: Warmup requests of an online run.
WARMUP_REQUESTS = Bound(0, 10_000, why="ten thousand requests; a server warms up within a few")
#: Cycles of a study (and the user config's limit on them).
CYCLES = Bound(1, 100_000, why="statistics settle after tens of cycles")
#: Experiments a study may expand to (the user config's limit).
GRID_POINTS = Bound(1, 1_000_000, why="a million experiments; each one runs for minutes")
#: SLURM array jobs running at once.
JOBS_AT_ONCE = Bound(1, 1_000_000, why="a million jobs, the size of the largest grid")

# --- decoding ------------------------------------------------------------------------------
TEMPERATURE = Bound(
    0, 100, why="the distribution is practically uniform long before 100 (1.0 = unchanged)"
)
TOP_P = Bound(0, 1, lower_open=True, why="a probability mass; 0 would keep no token")
TOP_K = Bound(0, 2**20, why="above every vocabulary size (the largest are about 260,000); 0 = off")
PENALTY = Bound(0, 100, lower_open=True, why="a factor on logits; 1.0 = none, > 2 is rarely used")
BEAMS = Bound(1, 128, why="beam search memory grows with the beams; 128 is far above common use")
SEED = Bound(0, 2**32 - 1, why=_SEED_WHY)

# --- engines -------------------------------------------------------------------------------
MEMORY_FRACTION = Bound(0, 1, lower_open=True, why="a fraction of the GPU's memory")
KV_BLOCK_TOKENS = Bound(1, 1_024, unit="tokens", why="vLLM accepts at most 128 today")
LORA_RANK = Bound(1, 1_024, why="vLLM accepts at most 512 today")
PORT = Bound(1, 65_535, why="a TCP port")

# --- durations -------------------------------------------------------------------------------
#: Waits llem makes on purpose: the thermal floor, gaps between a study's runs and cycles.
GAP_SECONDS = Bound(0, DAY_S, unit="s", why="a day, far longer than any cool-down")
#: The idle-power baseline.
BASELINE_SECONDS = Bound(
    0, 3_600, lower_open=True, unit="s", why="an hour; the idle mean settles within a minute"
)
#: A run of a study before it is stopped.
RUN_TIMEOUT_SECONDS = Bound(
    0, WEEK_S, lower_open=True, unit="s", why="a week, longer than any run of a million prompts"
)
#: Waiting for a server: its start (model load, engine build) and one request.
WAIT_TIMEOUT_SECONDS = Bound(
    0, DAY_S, lower_open=True, unit="s", why="a day; a server that is not ready by then is broken"
)
#: One pre-flight call to a server (``GET /v1/models``): it answers at once or is unfit to measure.
PREFLIGHT_TIMEOUT_SECONDS = Bound(
    0, 3_600, lower_open=True, unit="s", why="an hour; a healthy server answers in well under 1 s"
)
#: Latency targets of an online run's SLO.
LATENCY_TARGET_MS = Bound(0, DAY_S * 1_000, lower_open=True, unit="ms", why="a day")
#: Between polls of the SLURM queue.
POLL_SECONDS = Bound(0.01, 3_600, unit="s", why="an hour; a real cluster wants 10 s or more")
#: The power/energy sampler's interval.
SAMPLING_INTERVAL_MS = Bound(
    10,
    10_000,
    unit="ms",
    why="NVML updates power about every 20-100 ms; 10 s would miss whole phases",
)
#: The expected span of an online run's arrival schedule, ``(n - 1) / request_rate``.
MAX_LOAD_SECONDS = WEEK_S

# --- load and statistics ---------------------------------------------------------------------
REQUEST_RATE = Bound(
    0.001,
    1_000_000,
    unit="requests/s",
    why="one request per 17 minutes to a million per second; 'inf' sends all at once",
)
BURSTINESS = Bound(
    0.01, 100, why="a gamma shape: 0.01 is 10x burstier than Poisson, 100 practically constant"
)
CV_TARGET = Bound(
    0, 1, lower_open=True, why="a coefficient of variation; at 1 any three runs converge"
)

# --- machine facts -------------------------------------------------------------------------
CARBON_INTENSITY = Bound(
    0,
    2_000,
    unit="gCO2/kWh",
    why="about twice that of coal power (~1,000), the dirtiest grid source",
)
PUE = Bound(1, 5, why="power usage effectiveness; the least efficient data centres are near 3")

# --- files llem reads ----------------------------------------------------------------------
#: A config YAML (experiment, study, ``base:``, user config), checked before and while reading.
CONFIG_FILE_MAX_BYTES = 1 << 20
#: Nodes of a config YAML with its aliases expanded (an alias "bomb" is refused).
YAML_MAX_NODES = 1_000_000
#: Nesting of mappings and lists in a config YAML.
YAML_MAX_DEPTH = 64
#: One line of a JSONL dataset (a prompt of 2**20 tokens is about 4 MiB of text).
DATASET_LINE_MAX_BYTES = 16 << 20
