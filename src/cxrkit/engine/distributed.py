"""Data-parallel training under ``torchrun`` (one process per GPU, or gloo on CPU).

``cxrkit train`` is launched the same way on one CPU, one GPU or many:
``torchrun --nproc_per_node N -m cxrkit.cli train CONFIG`` (multi-node: add torchrun's
``--nnodes/--node_rank/--rdzv_endpoint``). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` reads them. Only rank 0 logs and writes; metrics are computed on
predictions gathered from every rank, de-duplicated by dataset index (the distributed
sampler pads the last shard), so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  #: "nccl"/"gloo" when a process group is up, "" for a plain process

    @property
    def enabled(self) -> bool:
        """A process group is up (torchrun, even with one process): wrap in DDP, shard."""
        return bool(self.backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Initialise the process group if launched by torchrun; else a single process.

    ``torchrun --nproc_per_node 1`` also gets a group (and DDP): that is how one GPU
    proves the NCCL path (bench/gpu/check.sh).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend())


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_objects(d: Dist, obj):
    """Every rank's ``obj`` as a list (a one-element list when not distributed)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
