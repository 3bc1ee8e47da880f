"""How many processes a PyTorch config runs in, on which GPUs, and whether the visible devices
can host them.

Shared by the PyTorch engine's pre-flight and the data-parallel engine, so that neither has to
import the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llenergymeasure.energy.devices import (
    DeviceSlot,
    effective_cuda_visible_devices,
    visible_gpu_slots,
)

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = ["data_parallel_nvml_indices", "device_problems", "num_processes"]


def num_processes(config: ExperimentConfig) -> int:
    """``pytorch.num_processes`` resolved (None -> 1)."""
    pt = config.pytorch
    return int(pt.num_processes) if pt is not None and pt.num_processes else 1


def data_parallel_nvml_indices(config: ExperimentConfig, *, nvml: Any | None = None) -> list[int]:
    """NVML indices of the GPUs a pytorch run of ``config`` uses: the first ``num_processes``
    visible ones (one for a single-process run). These are the devices to measure."""
    slots = visible_gpu_slots(nvml=nvml)[: num_processes(config)]
    return [s.nvml_index for s in slots if s.nvml_index is not None]


def device_problems(
    config: ExperimentConfig, slots: Sequence[DeviceSlot], *, allow_cpu: bool = False
) -> list[str]:
    """Why ``slots`` cannot host ``config``'s data-parallel processes (empty = fine)."""
    n = num_processes(config)
    if n <= 1:
        return []
    gpus = [s for s in slots if not s.is_cpu or allow_cpu]
    if not gpus:
        return [
            f"pytorch.num_processes={n}: data parallel needs one GPU per process, but no GPU "
            "is visible (CPU run); set pytorch.num_processes to 1"
        ]
    if len(gpus) < n:
        env = effective_cuda_visible_devices()
        shown = f" (CUDA_VISIBLE_DEVICES={env})" if env is not None else ""
        return [
            f"pytorch.num_processes={n}: data parallel needs one GPU per process, but only "
            f"{len(gpus)} GPU(s) are visible{shown}"
        ]
    return []
