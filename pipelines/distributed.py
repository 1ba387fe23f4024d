"""The process group of a torchrun job: rank, world size, device, gathering.

One process (no torchrun) is a world of one; every helper here then does nothing
more than hand back its input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from audio_dcls.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int  # this process's rank (0 with one process)
    world: int  # processes in the job
    local_rank: int  # rank on this machine: the GPU index under torchrun
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_rank() -> int:
    """RANK as torchrun sets it (0 outside torchrun); known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str) -> DistEnv:
    """Read torchrun's environment, pick this process's device and join the process group
    (NCCL on CUDA, gloo on CPU) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = torchrun_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank if world > 1 else None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def dist_info() -> Tuple[int, int]:
    """(rank, world) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


def gather_rows(rows: torch.Tensor, world: int) -> torch.Tensor:
    """all_gather of equally shaped (n, ...) tensors -> (world * n, ...), in rank order.
    The tensors travel on the GPU under NCCL, on the CPU under gloo; the result is on the CPU."""
    if world == 1:
        return rows
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    local = rows.to(dev).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu()


def gather_objects(obj: Any, world: int) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if world == 1:
        return [obj]
    every: List[Any] = [None] * world
    dist.all_gather_object(every, obj)
    return every


def mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of a tensor over all ranks (in place: every rank gets it)."""
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value
