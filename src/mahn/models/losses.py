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


def next_item_loss(name: str, states: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
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
        return F.cross_entropy(without_excluded(states @ table().T, excluded), targets)
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
