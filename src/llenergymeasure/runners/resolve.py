"""Runner resolution: ``LLEM_RUNNER_<BACKEND>`` > user config ``runners`` > local."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llenergymeasure.config.catalogue import ENGINES, engine_names
from llenergymeasure.exceptions import StudyError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = ["RunnerSpec", "check_runner_isolation", "resolve_runner", "study_runner_kind"]


@dataclass(frozen=True)
class RunnerSpec:
    """How one backend's experiments run: ``local``, ``docker`` (with ``image``) or ``slurm``."""

    backend: str
    kind: Literal["local", "docker", "slurm"]
    image: str | None = None
    source: str = "default"  # "default", "user config (<path>)" or "env LLEM_RUNNER_<BACKEND>"

    @property
    def value(self) -> str:
        """The setting as written: ``local`` or ``docker:<image>``."""
        return f"docker:{self.image}" if self.kind == "docker" else self.kind

    @classmethod
    def parse(cls, backend: str, value: str, source: str = "default") -> RunnerSpec:
        """Parse ``local`` / ``docker:<image>`` / ``slurm`` (already validated by user config)."""
        if value.startswith("docker:"):
            return cls(backend, "docker", value[len("docker:") :], source)
        if value == "slurm":
            return cls(backend, "slurm", None, source)
        return cls(backend, "local", None, source)


def resolve_runner(backend: str, *, user_config: Path | None = None) -> RunnerSpec:
    """The runner of ``backend``: env ``LLEM_RUNNER_<BACKEND>`` > user config > ``local``."""
    from llenergymeasure.config.user_config import effective_settings

    if backend not in ENGINES:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(engine_names())}")
    setting = effective_settings(user_config)[f"runners.{backend}"]
    return RunnerSpec.parse(backend, str(setting.value), setting.source)


def check_runner_isolation(
    backends: Iterable[str], *, user_config: Path | None = None
) -> list[str]:
    """Problems with running ``backends`` in one study (empty list = fine).

    vLLM and TensorRT-LLM cannot share a process or an environment: a study that uses both
    needs at least one of them on a ``docker:<image>`` runner.
    """
    used = [b for b in dict.fromkeys(backends) if b in ENGINES and ENGINES[b].isolated]
    if len(used) < 2:
        return []
    specs = {b: resolve_runner(b, user_config=user_config) for b in used}
    local = [b for b, s in specs.items() if s.kind == "local"]
    if len(local) < 2:
        return []
    sources = ", ".join(f"{b}: local ({specs[b].source})" for b in local)
    return [
        f"this study uses {' and '.join(local)}, which cannot share one process or Python "
        f"environment, but both run locally ({sources}); run at least one in a container: "
        "set runners.vllm: docker:<image> (or runners.tensorrt) in the user config, or "
        "LLEM_RUNNER_VLLM=docker:<image> / LLEM_RUNNER_TENSORRT=docker:<image>"
    ]


def study_runner_kind(experiments: list[ExperimentConfig], runner: str | None) -> str:
    """``slurm`` when every backend of ``experiments`` runs on SLURM (``runner`` overrides
    every backend's), else ``local``. Mixing is a ``StudyError``."""
    backends = sorted({c.backend for c in experiments})
    specs = [
        RunnerSpec.parse(b, runner, "--runner") if runner is not None else resolve_runner(b)
        for b in backends
    ]
    slurm = [s.backend for s in specs if s.kind == "slurm"]
    if slurm and len(slurm) != len(specs):
        others = ", ".join(f"{s.backend}: {s.value} ({s.source})" for s in specs)
        raise StudyError(
            f"a study runs either entirely on SLURM or not at all; runners: {others}",
            hint="use --runner slurm, or set runners.<backend>: slurm for every backend",
        )
    return "slurm" if slurm else "local"
