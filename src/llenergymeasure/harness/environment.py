"""Environment snapshot: the machine and software an experiment ran on.

``capture_environment`` runs before the model loads. The CPU side of the measurement window
(``CpuConditions``: threads, thread settings, load average, governor) is read by
``window_opened`` / ``window_closed``, called where the window opens and closes, since torch
is loaded, and its threads set, only by then.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from llenergymeasure._version import __version__
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.installed import engine_version
from llenergymeasure.energy.devices import effective_cuda_visible_devices
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.results.environment import CpuConditions, EnvironmentSnapshot

LoadAverageReader = Callable[[], tuple[float, float, float] | None]
"""Returns the host's (1, 5, 15)-minute load averages, or None where unknown."""

#: Environment variables that set thread counts or placement of the CPU math libraries.
THREAD_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "OPENBLAS_")
_CPUFREQ = Path("/sys/devices/system/cpu")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

#: Libraries whose versions every result records, besides each catalogue engine's distribution.
_KEY_LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "bitsandbytes",
    "flash-attn",
    "nvidia-ml-py",
    "zeus",
    "zeus-ml",
    "codecarbon",
    "pydantic",
    "numpy",
)


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or None)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    engines = [spec.distribution for spec in ENGINES.values()]
    for name in dict.fromkeys([*_KEY_LIBRARIES, *engines]):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def pip_freeze_digest() -> str | None:
    """SHA-256 of the sorted ``name==version`` list of installed distributions."""
    try:
        items = sorted(
            f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions()
        )
    except Exception:
        return None
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def cuda_version() -> tuple[str | None, str | None]:
    """CUDA version and where it came from: torch, then version.json, then nvcc."""
    if "torch" in sys.modules:
        version = getattr(sys.modules["torch"].version, "cuda", None)
        if version:
            return str(version), "torch.version.cuda"
    for candidate in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            text = Path(candidate).read_text()
        except OSError:
            continue
        match = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', text) or re.search(
            r"CUDA Version\s+([\d.]+)", text
        )
        if match:
            return match.group(1), candidate
    try:
        out = subprocess.run(
            ["nvcc", "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        match = re.search(r"release ([\d.]+)", out)
        if match:
            return match.group(1), "nvcc --version"
    except (OSError, subprocess.SubprocessError):
        pass
    return None, None


def _driver_version() -> str | None:
    try:
        import pynvml

        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def capture_environment(backend: str, sensor: GpuSensor | None) -> EnvironmentSnapshot:
    """Snapshot of this machine and its software for the result."""
    gpus: list[dict[str, Any]] = []
    persistence: list[bool | None] = []
    if sensor is not None:
        for i in range(sensor.device_count()):
            info = sensor.device_info(i)
            gpus.append(
                {
                    "index": info.index,
                    "uuid": info.uuid,
                    "name": info.name,
                    "total_memory_bytes": info.total_memory_bytes,
                    "power_limit_w": info.power_limit_w,
                    "supports_energy_counter": info.supports_energy_counter,
                }
            )
            persistence.append(info.persistence_mode)
    cuda, cuda_source = cuda_version()
    return EnvironmentSnapshot(
        python_version=sys.version.split()[0],
        os=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        gpus=gpus,
        driver_version=_driver_version() if gpus else None,
        cuda_version=cuda,
        cuda_version_source=cuda_source,
        persistence_mode=persistence,
        engine=backend,
        engine_version=engine_version(backend),
        library_versions=_versions(),
        pip_freeze_sha256=pip_freeze_digest(),
        llem_version=__version__,
        hostname=socket.gethostname(),
        cuda_visible_devices=effective_cuda_visible_devices(),
    )


# -- the CPU side of the measurement window --------------------------------------------------


def read_load_average() -> tuple[float, float, float] | None:
    """``os.getloadavg()``, or None where the platform has none."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None


def usable_cpus() -> int | None:
    """Logical CPUs this process may run on (its affinity mask; the CPU count without one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def cgroup_cpu_limit(path: Path = _CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in CPUs (``cpu.max``: quota period), None for ``max`` or none."""
    try:
        quota, period = path.read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def thread_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The OMP_*, MKL_*, KMP_* and OPENBLAS_* variables that are set, sorted by name."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in sorted(env) if k.startswith(THREAD_ENV_PREFIXES)}


def cpu_governor(cpus: Iterable[int] | None = None, root: Path = _CPUFREQ) -> str:
    """The cpufreq governor of ``cpus`` (default: the usable ones): one name, several names
    comma-separated when they differ, or "unknown" where the kernel exposes none."""
    if cpus is None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = range(os.cpu_count() or 0)
    seen: set[str] = set()
    for cpu in cpus:
        try:
            seen.add((root / f"cpu{cpu}" / "cpufreq" / "scaling_governor").read_text().strip())
        except OSError:
            continue
    seen.discard("")
    return ",".join(sorted(seen)) if seen else "unknown"


def torch_threads() -> tuple[int | None, int | None]:
    """torch's intra-op and inter-op thread counts; (None, None) when torch is not imported.

    Never imports torch: a run that did not load it has no torch threads to report.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None
    try:
        return int(torch.get_num_threads()), int(torch.get_num_interop_threads())
    except Exception:  # a half-initialised torch must not stop a measurement
        return None, None


def _rounded(load: tuple[float, float, float] | None) -> list[float] | None:
    return None if load is None else [round(float(x), 2) for x in load]


def window_opened(
    environment: EnvironmentSnapshot, read_load: LoadAverageReader | None = None
) -> None:
    """Record the CPU side of the window as it opens into ``environment.cpu_conditions``.

    ``read_load``: the load-average reader (None: ``os.getloadavg``; tests inject one).
    """
    intra, interop = torch_threads()
    environment.cpu_conditions = CpuConditions(
        usable_cpus=usable_cpus(),
        host_cpus=os.cpu_count(),
        cgroup_cpu_limit=cgroup_cpu_limit(),
        torch_num_threads=intra,
        torch_num_interop_threads=interop,
        thread_env=thread_environment(),
        cpu_governor=cpu_governor(),
        load_average_start=_rounded((read_load or read_load_average)()),
    )


def window_closed(
    environment: EnvironmentSnapshot, read_load: LoadAverageReader | None = None
) -> None:
    """Record the load average as the window closes, and whether the host was oversubscribed."""
    conditions = environment.cpu_conditions
    if conditions is None:
        return
    conditions.load_average_end = _rounded((read_load or read_load_average)())
    conditions.oversubscribed = oversubscription(conditions, cpu_run=not environment.gpus)


def compute_threads(conditions: CpuConditions) -> int | None:
    """The run's compute threads: torch's intra-op threads, else OMP_NUM_THREADS when set."""
    if conditions.torch_num_threads is not None:
        return conditions.torch_num_threads
    try:
        return int(conditions.thread_env["OMP_NUM_THREADS"].split(",")[0])
    except (KeyError, ValueError):
        return None


def oversubscription(conditions: CpuConditions, *, cpu_run: bool) -> list[str]:
    """Why a CPU run's host was oversubscribed (empty: it was not, or not a CPU run).

    Two rules, each a reason:

    - threads: the run's compute threads (``compute_threads``) exceed the CPUs it may use:
      ``usable_cpus``, lowered to the cgroup quota where one is set;
    - load: the host's 1-minute load average when the window opened or when it closed
      exceeds the host's logical CPUs: more runnable tasks than CPUs, so some wait. The run's
      own busy threads count in the load, so a run alone on the host stays at or below it.
      Compared with the host's CPUs, not the usable ones: the load average is host-wide, and
      a job pinned to a few CPUs of a busy node is not contended by work on the others.
    """
    if not cpu_run:
        return []
    reasons: list[str] = []
    limit: float | None = conditions.usable_cpus
    if conditions.cgroup_cpu_limit is not None:
        limit = min(limit or conditions.cgroup_cpu_limit, conditions.cgroup_cpu_limit)
    threads = compute_threads(conditions)
    if threads is not None and limit is not None and threads > limit:
        reasons.append(f"{threads} compute threads on {limit:g} usable CPUs")
    host = conditions.host_cpus
    for when, load in (
        ("opened", conditions.load_average_start),
        ("closed", conditions.load_average_end),
    ):
        if host is not None and load is not None and load[0] > host:
            reasons.append(
                f"1-minute load average {load[0]:.2f} when the window {when}, above the "
                f"host's {host} logical CPUs"
            )
    return reasons
