"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): one optimiser step of SASRec through
mahn's DistributedDataParallel wrapper, each rank on its share of a batch (rank_part: the shares hold different
numbers of target positions, so the loss weights matter). Rank 0 checks that both ranks end
with the same parameters and that they equal one single-process step on the whole batch, then prints OK."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from mahn.models.base import Batch
from mahn.models.sasrec import SASRec, SASRecConfig
from mahn.training.distributed import join, leave, rank_part, world_from_env, wrap

N_ITEMS = 30


def whole_batch() -> Batch:
    generator = torch.Generator().manual_seed(1)
    histories = torch.randint(0, N_ITEMS, (8, 6), generator=generator)
    targets = torch.randint(0, N_ITEMS, (8, 6), generator=generator)
    for row, pads in enumerate([0, 0, 1, 0, 5, 4, 3, 2]):  # the first half holds 23 target positions, the second 10
        histories[row, :pads] = targets[row, :pads] = N_ITEMS
    negatives = torch.randint(0, N_ITEMS, (8, 6), generator=generator).masked_fill(targets == N_ITEMS, N_ITEMS)
    return Batch(histories, targets, negatives, torch.arange(8))


def fresh() -> tuple[SASRec, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(dim=8, dropout=0.0, max_len=6), N_ITEMS)
    return model, torch.optim.SGD(model.parameters(), lr=0.5)  # linear in the gradient (Adam magnifies float noise)


def check(world) -> None:
    """One DDP step on two processes against the single-process step on the whole batch (rank 0 prints OK)."""
    model, optimizer = fresh()
    step = wrap(model, world, torch.device("cpu"))
    batch = whole_batch()
    part, weight, _ = rank_part(batch, world, N_ITEMS)
    loss = step(part.histories, part.targets, part.negatives, part.users)
    (loss * weight).backward()
    optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world.size)]
    dist.all_gather(gathered, flat)
    if world.main:
        alone, alone_optimizer = fresh()
        alone.loss(batch).backward()
        alone_optimizer.step()
        expected = torch.cat([p.detach().flatten() for p in alone.parameters()])
        assert torch.equal(gathered[0], gathered[1]), "the ranks' parameters differ"
        difference = (gathered[0] - expected).abs().max().item()
        assert difference < 1e-5, f"not the single-process step: max difference {difference}"
        moved = (expected - torch.cat([p.detach().flatten() for p in fresh()[0].parameters()])).abs().max()
        assert moved > 1e-3, "the step changed nothing"
        print("OK", difference)


def main() -> None:
    world = world_from_env()
    join(world, torch.device("cpu"))
    finished = False
    try:
        check(world)  # its DDP wrapper is gone when leave() tears the group down, as in the trainer
        finished = True
    finally:
        leave(world, finished)


if __name__ == "__main__":
    sys.exit(main())
