"""Next-item losses shared by the models that score a state against item vectors at every position.

Every loss here takes the states at the real positions (n, D), the target ids (n,), the batch's
uniform negatives (n,), and a way to get item vectors, so a model only chooses one by name:

- `bpr`: −log σ(s⁺ − s⁻) with the batch's one uniform negative per position (MAHN's paper).
- `bce`: −log σ(s⁺) − log(1 − σ(s⁻)), the same negatives (SASRec's and Caser's papers).
- `ce`: softmax cross-entropy over every item (the full-softmax loss of BERT4Rec, and of SASRec in
  later work). Costs one (n × items) product per batch.
- `sampled-ce`: softmax cross-entropy over the target and `negatives` items drawn uniformly once per
  batch and shared by every position; a sampled item equal to the position's target is masked out.

Why the choice matters for rare items: with one uniform negative, every item is pushed down equally
often but pushed up only as often as it is bought, and the pairwise losses keep pushing until the
margin is large, so the learned scores fold an item's popularity into every user's ranking. A
softmax pushes each item down in proportion to the probability the model gives it, so an item
stops being pushed once it is unlikely (docs/investigations/rare-items.md measures the difference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mahn.errors import DataError

LOSSES = ("bpr", "bce", "ce", "sampled-ce")


def check_loss(name: str, negatives: int, model: str) -> None:
    if name not in LOSSES:
        raise DataError(f"{model}: unknown loss {name!r}; choose one of {', '.join(LOSSES)}", "--set loss=...")
    if negatives < 1:
        raise DataError(f"{model}: negatives must be at least 1", "--set negatives=...")


def without_excluded(logits: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """Logits over every item with the excluded items' columns at -inf, so a softmax never sees them."""
    return logits if excluded is None else logits.masked_fill(excluded, -torch.inf)


SOFTMAX_BLOCK_BYTES = 4 << 20  # logits of a block of positions: small enough to stay in the CPU's cache


class BlockedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of (n, D) states against every (items, D) vector, a block of positions at a
    time, so the (n x items) logits never exist whole. Each block's logits become, in place and while they are in
    the CPU's cache, the block's log-sum-exp and its gradient (softmax - one-hot), which two products turn into
    the block's rows of the states' gradient and its share of the table's; the backward pass only scales those.
    Three products and one exp a block in all: written out whole, the logits went through memory five times a
    step, and a backward pass that recomputed them cost a fourth product and a second exp."""

    @staticmethod
    def forward(ctx, states, table, targets, excluded, rows):
        n = len(states)
        logsumexp = states.new_empty(n)
        wanted = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        d_states = torch.empty_like(states) if wanted else None
        d_table = torch.zeros_like(table) if wanted else None
        for lo in range(0, n, rows):
            block = states[lo : lo + rows]
            logits = block @ table.T
            if excluded is not None:
                logits.masked_fill_(excluded, -torch.inf)
            if not wanted:
                torch.logsumexp(logits, 1, out=logsumexp[lo : lo + rows])
                continue
            peak = logits.amax(1, keepdim=True)
            probabilities = logits.sub_(peak).exp_()
            total = probabilities.sum(1, keepdim=True)
            logsumexp[lo : lo + rows] = (peak + total.log()).squeeze(1)
            probabilities.div_(total)
            probabilities[torch.arange(len(block)), targets[lo : lo + rows]] -= 1  # softmax - one-hot
            probabilities.mul_(1.0 / n)  # the mean over positions
            torch.mm(probabilities, table, out=d_states[lo : lo + rows])
            d_table.addmm_(probabilities.T, block)
        ctx.save_for_backward(d_states, d_table)
        return (logsumexp - (states * table[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad):
        d_states, d_table = ctx.saved_tensors
        return d_states * grad, d_table * grad, None, None, None


def softmax_cross_entropy(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                          excluded: torch.Tensor | None = None) -> torch.Tensor:
    """F.cross_entropy(states @ table.T, targets) with excluded items' logits at -inf, computed in blocks
    (BlockedSoftmaxCE); under autocast (bf16) the plain form, whose casts autocast knows."""
    if torch.is_autocast_enabled(states.device.type) or states.dtype != table.dtype:
        return F.cross_entropy(without_excluded(states @ table.T, excluded), targets)
    rows = max(16, SOFTMAX_BLOCK_BYTES // (table.element_size() * max(1, len(table))))
    return BlockedSoftmaxCE.apply(states, table, targets, excluded, rows)


def next_item_loss(name: str, states: torch.Tensor, targets: torch.Tensor, *, negatives: torch.Tensor,
                   items: Callable[[torch.Tensor], torch.Tensor], table: Callable[[], torch.Tensor],
                   n_items: int, n_sampled: int, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over positions. `items(ids)` gives (len(ids), D) item vectors, `table()` all (n_items, D).
    `excluded` (bool, n_items): items that are never candidates (the softmaxes skip them; the pairwise losses'
    negatives come from the batch, which never draws them)."""
    if name in ("bpr", "bce"):
        vectors = items(torch.cat([targets, negatives]))
        positive = (states * vectors[: len(targets)]).sum(-1)
        negative = (states * vectors[len(targets) :]).sum(-1)
        if name == "bpr":
            return -F.logsigmoid(positive - negative).mean()
        return -(F.logsigmoid(positive) + F.logsigmoid(-negative)).mean()
    if name == "ce":
        return softmax_cross_entropy(states, table(), targets, excluded)
    if excluded is None:
        sampled = torch.randint(0, n_items, (n_sampled,), device=states.device)
    else:
        allowed = (~excluded).nonzero().squeeze(1)
        sampled = allowed[torch.randint(0, len(allowed), (n_sampled,), device=states.device)]
    vectors = items(torch.cat([targets, sampled]))
    positive = (states * vectors[: len(targets)]).sum(-1, keepdim=True)
    negative = states @ vectors[len(targets) :].T
    negative = negative.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(1), -torch.inf)
    logits = torch.cat([positive, negative], 1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))
