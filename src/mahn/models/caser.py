"""Caser: convolutional sequence embedding (Tang & Wang, WSDM 2018).

The last L items form an L x d "image" E. A vertical convolution (n_v filters of shape L x 1) takes
weighted sums of E's rows, Σ_l w_l E_l; horizontal convolutions (n_h filters of each height
h = 1..L, full width d) each yield φ(conv) over the L-h+1 windows, max-pooled to one number. Their
concatenation, after dropout, goes through a fully connected layer z = φ(W1 [o ⊕ o'] + b1); the user
embedding P_u is concatenated and item j scores y_j = W2_j · [z ⊕ P_u] + b2_j (bias folded in:
encode returns [z, P_u, 1], item_table returns [W2, b2]).

Training (paper §3.4): sliding windows of L previous items predict the T next items with binary
cross-entropy, -Σ_targets log σ(y) - Σ_negatives log(1 - σ(y)) (`loss="bce"`, `--preset paper`). Our
default is the shared softmax over every item for each of the T targets (`loss="ce"`, models/losses.py,
the loss RecBole trains its Caser with): four times the paper's loss on Office and far above it on Phones
(docs/investigations/defaults.md). `"sampled-ce"` and `"bpr"` are options too.

Defaults from the paper and the authors' PyTorch code: L = 5, T = 3, d = 50, n_v = 4, n_h = 16,
dropout 0.5, ReLU for both the convolutions and the fully connected layer, 3 negatives per window.

Deliberate deviations:
- Windows are cut from the trainer's batch: the user's sequence is histories plus targets[:, -1].
  Every window with at least one real input item and one real target is used (short sequences are
  left-padded, as in the authors' code; targets past the end are padding and left out of the loss),
  so users with fewer than L + T items still train.
- The negatives of a window are the trainer's uniform negatives at its T target positions (one per
  target, drawn to avoid the user's window), instead of Caser's own sampler; this keeps sampling
  seeded by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel
from mahn.models.losses import check_loss, next_item_loss


@dataclass
class CaserConfig:
    dim: int = 50
    window: int = 5  # L, previous items read
    targets: int = 3  # T, next items predicted per window in training
    horizontal: int = 16  # n_h, filters per height
    vertical: int = 4  # n_v
    dropout: float = 0.5
    loss: str = "ce"  # a shared next-item loss (models/losses.py): ce (ours, RecBole's), bpr, sampled-ce; bce (paper)
    negatives: int = 100  # sampled-ce: uniform negatives shared by a batch

    def __post_init__(self) -> None:
        for name in ("dim", "window", "targets", "horizontal", "vertical"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be at least 1", f"--set {name}=...")
        if not 0 <= self.dropout < 1:
            raise DataError("dropout must be in [0, 1)", "--set dropout=...")
        check_loss(self.loss, self.negatives, "Caser")


class Caser(SequentialModel):
    Config = CaserConfig
    search = {"dropout": [0.5, 0.2], "targets": [3, 1]}
    paper_rival = True

    def __init__(self, config: CaserConfig, n_items: int, n_users: int):
        super().__init__()
        self.config = config
        self.n_items = n_items
        d, L = config.dim, config.window
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.user_embedding = nn.Embedding(n_users, d)
        self.vertical = nn.Conv2d(1, config.vertical, (L, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, config.horizontal, (h, d)) for h in range(1, L + 1))
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.vertical * d + config.horizontal * L, d)
        self.output_embedding = nn.Embedding(n_items, 2 * d)
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        for embedding in (self.item_embedding, self.user_embedding, self.output_embedding):
            nn.init.normal_(embedding.weight, std=1.0 / embedding.embedding_dim)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    @classmethod
    def from_dataset(cls, config: CaserConfig, dataset) -> Caser:
        return cls(config, dataset.n_items, dataset.n_users)

    def last_window(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L): the last L ids of each left-padded history, padded on the left if shorter."""
        L = self.config.window
        if histories.shape[1] < L:
            histories = F.pad(histories, (L - histories.shape[1], 0), value=self.pad)
        return histories[:, -L:]

    def state(self, windows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids and (B,) users -> (B, 2d+1) = [z, P_u, 1]."""
        image = self.item_embedding(windows).unsqueeze(1)  # (B, 1, L, d)
        vertical = self.vertical(image).flatten(1)  # (B, n_v * d)
        horizontal = [F.relu(conv(image).squeeze(3)).amax(2) for conv in self.horizontal]  # each (B, n_h)
        z = F.relu(self.fc(self.dropout(torch.cat([vertical, *horizontal], dim=1))))
        return torch.cat([z, self.user_embedding(users), z.new_ones(len(z), 1)], dim=1)

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        if users is None:
            raise ValueError("Caser needs the user ids to encode a history")
        return self.state(self.last_window(histories), users)

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.output_embedding.weight, self.output_bias.unsqueeze(1)], dim=1)

    def windows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training windows of the batch: (inputs (W, L), targets (W, T), negatives (W, T), users (W,))."""
        L, T = self.config.window, self.config.targets
        sequence = torch.cat([batch.histories, batch.targets[:, -1:]], dim=1)  # (B, S) left-padded
        # negatives[:, k] belongs to sequence[:, k + 1]; the first item of a sequence is never a target
        negatives = torch.cat([torch.full_like(batch.negatives[:, :1], self.pad), batch.negatives], dim=1)
        padded = F.pad(sequence, (L, T - 1), value=self.pad)
        padded_negatives = F.pad(negatives, (L, T - 1), value=self.pad)
        width = sequence.shape[1]
        inputs = padded.unfold(1, L, 1)[:, :width]  # window k reads padded[k : k+L]
        targets = padded[:, L:].unfold(1, T, 1)  # and predicts padded[k+L : k+L+T]
        window_negatives = padded_negatives[:, L:].unfold(1, T, 1)
        keep = (inputs != self.pad).any(2) & (targets != self.pad).any(2)
        users = batch.users.unsqueeze(1).expand(-1, width)
        return inputs[keep], targets[keep], window_negatives[keep], users[keep]

    def loss(self, batch: Batch) -> torch.Tensor:
        inputs, targets, negatives, users = self.windows(batch)
        state = self.state(inputs, users).unsqueeze(1)  # (W, 1, 2d+1)
        table = self.item_table()
        real = targets != self.pad
        if self.config.loss != "bce":  # each real (window, target) pair is a position of the shared loss
            states = state.expand(-1, targets.shape[1], -1)[real]
            return next_item_loss(self.config.loss, states, targets[real], negatives=negatives[real],
                                  items=lambda ids: table[ids], table=lambda: table, n_items=self.n_items,
                                  n_sampled=self.config.negatives, excluded=self.excluded)
        positive = (state * table[targets.clamp(max=self.n_items - 1)]).sum(-1)
        negative = (state * table[negatives.clamp(max=self.n_items - 1)]).sum(-1)
        per_target = -(F.logsigmoid(positive) + F.logsigmoid(-negative))
        return per_target[real].mean()
