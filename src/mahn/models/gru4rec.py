"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas, Tikk, ICLR 2016) with the BPR-max loss of Hidasi &
Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based Recommendations" (CIKM 2018).

A GRU reads the history's item embeddings; its hidden state h_t scores item j as
r_{t,j} = h_t · W_j + b_j with a separate output embedding W and bias b (the bias is folded into the
vectors: encode returns [h, 1], item_table returns [W, b]).

Loss (BPR-max, CIKM 2018): for the target i and the negatives j of a position,
    s_j = softmax_j(r_j),   L = -log Σ_j s_j σ(r_i - r_j) + λ Σ_j s_j r_j²
The negatives are the batch's other targets (mini-batch sampling, i.e. popularity-proportional, as in
both papers) plus the batch's uniform negatives (the CIKM 2018 paper's additional samples, here with
α = 0: uniform). The CIKM 2018 paper proposes both BPR-max and TOP1-max (`loss="bpr-max"`, the paper's
and `--preset paper`'s; `loss="top1-max"`):
    L = Σ_j s_j (σ(r_j - r_i) + σ(r_j²)).
Our default is the softmax over every item shared by the other sequential models (`loss="ce"`, the loss
RecBole trains its GRU4Rec with), the strongest on our data (docs/investigations/defaults.md);
`"sampled-ce"`, `"bpr"` and `"bce"` are there too. All score the same [h, 1] · [W, b].

Defaults: one GRU layer of 100 hidden units (the ICLR 2016 setting), the item embedding the same
size as the hidden state, dropout 0.25 on the embedding and the hidden output, λ (bpreg) = 1.0.
The papers tune dropout and λ per dataset and give no value for Amazon data: these are our choices.

Deliberate deviations:
- Session-parallel mini-batches are replaced by the trainer's batches: every position of a
  user's history predicts the next item, with the hidden state starting at zero for each user, which
  is what session-parallel training computes for a session.
- In-batch negatives equal to the position's own target are masked out (the original counts them as
  negatives).
- Training uses the trainer's Adam (the papers use Adagrad), so all baselines share one optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel, left_to_right_padded
from mahn.models.losses import LOSSES as SHARED_LOSSES
from mahn.models.losses import next_item_loss

LOSSES = ("bpr-max", "top1-max", *SHARED_LOSSES)


@dataclass
class GRU4RecConfig:
    dim: int = 100  # hidden units (and embedding size)
    dropout: float = 0.25
    loss: str = "ce"  # softmax over every item (our default); bpr-max (the paper's), top1-max, or a shared loss
    bpreg: float = 1.0  # λ, the score regulariser of BPR-max
    negatives: int = 100  # sampled items of loss="sampled-ce"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise DataError(f"unknown GRU4Rec loss {self.loss!r}; choose one of {', '.join(LOSSES)}",
                            "--set loss=...")
        if self.dim < 1:
            raise DataError("dim must be positive", "--dim")
        if not 0 <= self.dropout < 1:
            raise DataError("dropout must be in [0, 1)", "--set dropout=...")
        if self.negatives < 1:
            raise DataError("negatives must be at least 1", "--set negatives=...")


def bpr_max(target_scores: torch.Tensor, negative_scores: torch.Tensor, valid: torch.Tensor,
            bpreg: float) -> torch.Tensor:
    """Per-position BPR-max. target_scores (P,), negative_scores (P, N), valid (P, N) bool."""
    weights = torch.softmax(negative_scores.masked_fill(~valid, -torch.inf), dim=1)
    ranked = (weights * torch.sigmoid(target_scores.unsqueeze(1) - negative_scores)).sum(1)
    return -torch.log(ranked + 1e-24) + bpreg * (weights * negative_scores.pow(2)).sum(1)


def top1_max(target_scores: torch.Tensor, negative_scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(negative_scores.masked_fill(~valid, -torch.inf), dim=1)
    terms = torch.sigmoid(negative_scores - target_scores.unsqueeze(1)) + torch.sigmoid(negative_scores.pow(2))
    return (weights * terms).sum(1)


class GRU4Rec(SequentialModel):
    Config = GRU4RecConfig
    search = {"dropout": [0.25, 0.5], "loss": ["ce", "bpr-max"]}
    paper_rival = True

    def __init__(self, config: GRU4RecConfig, n_items: int):
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.dim
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.output_embedding = nn.Embedding(n_items, d)
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.output_embedding.weight, std=d**-0.5)

    def run(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRU over each history's real items. Returns (outputs of every real position, packed in the
        order of `pack`, the final hidden state (B, d), the lengths)."""
        right, lengths = left_to_right_padded(histories, self.pad)
        packed = pack_padded_sequence(right, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        inputs = packed._replace(data=self.dropout(self.item_embedding(packed.data)))
        outputs, final = self.gru(inputs)
        return self.dropout(outputs.data), self.dropout(final[-1]), lengths

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        _, final, _ = self.run(histories)
        return torch.cat([final, final.new_ones(len(final), 1)], dim=1)

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.output_embedding.weight, self.output_bias.unsqueeze(1)], dim=1)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of item_table(), without building the whole table."""
        return torch.cat([self.output_embedding(ids), self.output_bias[ids].unsqueeze(1)], dim=1)

    def loss(self, batch: Batch) -> torch.Tensor:
        states, _, lengths = self.run(batch.histories)
        lengths = lengths.clamp(min=1).cpu()

        def packed(ids: torch.Tensor) -> torch.Tensor:  # aligned with the rows of `states`
            right, _ = left_to_right_padded(ids, self.pad)
            return pack_padded_sequence(right, lengths, batch_first=True, enforce_sorted=False).data

        targets, sampled = packed(batch.targets), packed(batch.negatives)
        real = targets != self.pad
        states, targets, sampled = states[real], targets[real], sampled[real]
        states = torch.cat([states, states.new_ones(len(states), 1)], dim=1)  # [h, 1] against [W, b]
        if self.config.loss in SHARED_LOSSES:
            return next_item_loss(self.config.loss, states, targets, negatives=sampled, items=self.item_vectors,
                                  table=self.item_table, n_items=self.n_items, n_sampled=self.config.negatives,
                                  excluded=self.excluded)
        candidates = torch.cat([targets, sampled])  # in-batch targets, then the uniform extra samples
        table = self.item_vectors(candidates)
        scores = states @ table.T  # (P, 2P)
        rows = torch.arange(len(targets), device=scores.device)
        target_scores = scores[rows, rows]
        valid = candidates.unsqueeze(0) != targets.unsqueeze(1)
        if self.config.loss == "bpr-max":
            per_position = bpr_max(target_scores, scores, valid, self.config.bpreg)
        else:
            per_position = top1_max(target_scores, scores, valid)
        return per_position.mean()
