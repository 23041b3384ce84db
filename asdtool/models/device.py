"""Where a run computes: the torchrun process group (DDP) and the torch device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from asdtool.core.errors import AsdError


@dataclass
class Dist:
    """This process's place in a torchrun job (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined_here: bool = False  # this call created the process group, so it also ends it

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes the files."""
        return self.rank == 0

    def close(self) -> None:
        """Wait for every process, then leave the group if this process joined it."""
        if self.world > 1:
            dist.barrier()
            if self.joined_here:
                dist.destroy_process_group()


def init_distributed(device: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), joined_here)


def resolve_device(device: str, d: Dist | None = None) -> torch.device:
    """Return the torch device of `cpu`, `cuda`, `cuda:N` or `auto` (one GPU per process under torchrun)."""
    d = d or Dist()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AsdError(f"--device {device} asked for, but no CUDA device is available")
        if device == "cuda" and d.world > 1:
            device = f"cuda:{d.local_rank}"
    elif device != "cpu":
        raise AsdError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AsdError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
