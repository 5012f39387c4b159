"""Data-parallel training under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA).

``torchrun --nproc_per_node 2 -m model_core.cli train ...`` runs the ordinary training command on every
process. Each rank takes a strided shard of every global minibatch; all ranks start from the same seed,
so they draw the same weight sample per step (the ELBO's one-sample estimate is then the single-process
one), and DDP averages gradients, which with the per-rank normaliser of :func:`elbo_loss` equals the
single-process gradient. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (no-op when run as a single process)."""
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistContext:
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def shutdown() -> None:
    """Leave the process group together: rank 0 may still be calibrating and writing the checkpoint, and
    a rank that tears gloo down alone can abort ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
