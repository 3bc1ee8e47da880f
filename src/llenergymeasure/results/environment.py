"""The machine and software side of an experiment result: the environment snapshot and the
host CPU's conditions during the window."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from llenergymeasure.results.base import FORBID


class CpuConditions(BaseModel):
    """The host's CPU side of the measurement window: threads, their settings, load, governor.

    Read when the window opens (the load average again when it closes), so that a CPU run
    records what its figures depend on. ``oversubscribed`` lists why the run got the
    ``host_oversubscribed`` warning (empty: it did not; see the methodology page).
    """

    model_config = FORBID

    usable_cpus: int | None = Field(
        description="Logical CPUs this process may run on (os.sched_getaffinity)."
    )
    host_cpus: int | None = Field(description="Logical CPUs of the host (os.cpu_count).")
    cgroup_cpu_limit: float | None = Field(
        None,
        description=(
            "CPU quota of the process's cgroup v2 (cpu.max quota / period), in CPUs; None = no "
            "quota or not readable."
        ),
    )
    torch_num_threads: int | None = Field(
        None,
        description=(
            "torch.get_num_threads() at the window's start (intra-op threads); None = torch was "
            "not loaded by this run."
        ),
    )
    torch_num_interop_threads: int | None = Field(
        None,
        description="torch.get_num_interop_threads() at the window's start; None = no torch.",
    )
    thread_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Thread settings in the environment, as set: OMP_*, MKL_*, KMP_*, OPENBLAS_* "
            "variables (absent = not set)."
        ),
    )
    cpu_governor: str = Field(
        "unknown",
        description=(
            "CPU frequency governor of the usable CPUs (cpufreq scaling_governor; several "
            "comma-separated when they differ; unknown where the kernel does not expose it)."
        ),
    )
    load_average_start: list[float] | None = Field(
        None,
        description="Host load average (1, 5, 15 min) when the window opened; None = unknown.",
    )
    load_average_end: list[float] | None = Field(
        None,
        description="Host load average (1, 5, 15 min) when the window closed; None = unknown.",
    )
    oversubscribed: list[str] = Field(
        default_factory=list,
        description="Why the run carries host_oversubscribed (empty: it does not).",
    )


class EnvironmentSnapshot(BaseModel):
    """Machine and software the experiment ran on."""

    model_config = FORBID

    python_version: str = Field(description="Python version.")
    os: str = Field(description="Operating system and kernel.")
    cpu_model: str | None = Field(description="CPU model name.")
    cpu_count: int | None = Field(description="Logical CPUs.")
    gpus: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each measured GPU: index, UUID, name, memory, power limit, energy counter.",
    )
    driver_version: str | None = Field(None, description="NVIDIA driver version.")
    cuda_version: str | None = Field(None, description="CUDA version.")
    cuda_version_source: str | None = Field(None, description="Where cuda_version was read.")
    persistence_mode: list[bool | None] = Field(
        default_factory=list, description="Persistence mode of each GPU."
    )
    engine: str = Field(description="Engine that ran.")
    engine_version: str | None = Field(description="Version of the engine's library.")
    library_versions: dict[str, str | None] = Field(
        default_factory=dict,
        description="Versions of torch, transformers and other libraries that matter.",
    )
    pip_freeze_sha256: str | None = Field(
        None, description="SHA-256 of the sorted pip freeze (same hash = same packages)."
    )
    llem_version: str = Field(description="llenergymeasure version.")
    hostname: str | None = Field(None, description="Host name.")
    cuda_visible_devices: str | None = Field(
        None, description="CUDA_VISIBLE_DEVICES as the run saw it."
    )
    cpu_conditions: CpuConditions | None = Field(
        None,
        description=(
            "Threads, thread settings, host load and CPU governor around the measurement window; "
            "None = not recorded."
        ),
    )
