"""Training on many processes with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc-per-node 2 -m mahn train DATA --out RUN ...   (or: mahn train ... --nproc 2)

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `train` reads them (`World`),
joins the process group (gloo on CPUs, NCCL on GPUs, one GPU per process) and then:

- every rank builds the same model from the same seed, and DDP keeps the copies equal by averaging the
  gradients of each step;
- every rank draws each epoch's user order and each step's whole batch (its users and negatives) from the
  same seeded generator a single process would use, and trains on its contiguous share of the batch rows,
  its loss weighted by its share of the batch's target positions: for a loss that is a mean over target
  positions the averaged gradient is the whole batch's, so N processes take the steps of one process (up
  to float rounding and dropout, which each rank draws from (seed, epoch, rank)); losses that average over
  something else or sample from the batch get a weighted mix of the shares' losses (docs/model.md);
- rank 0 alone evaluates on validation, writes the run directory (config, checkpoints, best weights,
  metrics, summary) and tells the others the result, so early stopping is decided once;
- a resumed run reads rank 0's checkpoint (weights, optimiser and the shared generator) on every rank, so
  a resumed distributed run continues exactly as if it had not stopped.

One process (no torchrun) keeps the single-process trainer unchanged.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mahn.models.base import Batch, SequentialModel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The process's place among torchrun's processes (one process: rank 0 of 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


def launch(nproc: int) -> int:
    """Run this process's own `mahn ...` command again under torchrun on `nproc` local processes, without its
    --nproc flag; returns torchrun's exit code."""
    import subprocess
    import sys

    arguments, skip = [], False
    for argument in sys.argv[1:]:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            arguments.append(argument)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mahn", *arguments]
    return subprocess.call(command)


def join(world: World, device: torch.device) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def leave(world: World, finished: bool) -> None:
    """Leave the process group; after a finished run, only once every rank is done with it (a rank that tears
    its connections down while another still uses them can abort the other at exit)."""
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        # DistributedDataParallel's reducer holds the group and sits in reference cycles: freed here, while the
        # group can still be torn down in order, not at interpreter exit (where gloo's threads abort the process)
        gc.collect()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def from_main(world: World, value):
    """Rank 0's `value` on every rank (any picklable object made by this program, never read from a file)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(world: World, *values: float) -> list[float]:
    """Each value summed over the ranks."""
    if not world.distributed:
        return list(values)
    summed = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(summed)
    return summed.tolist()


def rank_part(batch: Batch, world: World, pad: int) -> tuple[Batch, float, int]:
    """This rank's contiguous share of a batch every rank built alike, the weight of its loss, and its row count.

    The weight (the rank's share of the batch's target positions, times the world size) makes the gradient
    DDP averages over the ranks the gradient of the mean loss over the whole batch. A batch with fewer rows than
    ranks (the last of an epoch) leaves some ranks a stand-in row whose loss counts zero times."""
    rows = len(batch.users)
    lo, hi = world.rank * rows // world.size, (world.rank + 1) * rows // world.size
    part = slice(lo, hi) if hi > lo else slice(0, 1)
    positions = (batch.targets != pad).sum(1)
    share = int(positions[part].sum()) / max(1, int(positions.sum())) if hi > lo else 0.0
    return (Batch(batch.histories[part], batch.targets[part], batch.negatives[part], batch.users[part]),
            share * world.size, hi - lo)


def epoch_rng(world: World, seed: int, epoch: int) -> np.random.Generator:
    """This rank's dropout seed for `epoch`, independent of what any rank drew before (exact resume)."""
    return np.random.default_rng([seed, epoch, world.rank, 1])


class LossStep(nn.Module):
    """The model's loss as a forward pass, so DistributedDataParallel sees the computation it synchronises."""

    def __init__(self, model: SequentialModel):
        super().__init__()
        self.model = model

    def forward(self, histories, targets, negatives, users) -> torch.Tensor:
        return self.model.loss(Batch(histories, targets, negatives, users))


def wrap(model: SequentialModel, world: World, device: torch.device) -> nn.Module:
    step = LossStep(model)
    ids = [device.index] if device.type == "cuda" else None
    # no model here updates a buffer while training; broadcasting them every step would copy MAHN's raw feature
    # matrices (hundreds of MiB) from rank 0 at each forward pass
    return nn.parallel.DistributedDataParallel(step, device_ids=ids, broadcast_buffers=False)
