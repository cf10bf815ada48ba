"""The process group of a run under ``torchrun``, for the parts of the library that shard work."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def join_torchrun_group() -> int:
    """Joins the process group ``torchrun`` describes in the environment (NCCL on GPUs, gloo on
    CPUs), if there is one and it is not joined yet; returns the local rank (0 without torchrun)."""
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and dist.is_available()
        and not dist.is_initialized()
    ):
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("LOCAL_RANK", "0"))
