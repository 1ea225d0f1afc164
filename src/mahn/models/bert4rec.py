"""BERT4Rec: bidirectional transformer with a cloze objective (Sun et al., CIKM 2019).

Training replaces a random share ρ of a user's items with a [mask] token and predicts each masked
item from both sides with a softmax over all items. At inference a [mask] is appended after the
history and its output is the user state. The output layer (paper eq. 7) is
P(v) = softmax(GELU(h W_P + b_P) Eᵀ + b_O), with E the shared input item embedding; the transform
GELU(h W_P + b_P) (followed by LayerNorm, as in the authors' code) is part of `encode` and b_O is
folded into the vectors (encode returns [transform(h), 1], item_table returns [E, b_O]).

Defaults from the paper and the authors' code for the Amazon Beauty data (their run_beauty.sh): 2
blocks, 2 heads, d = 64, feed-forward 4d = 256 with GELU, dropout 0.1 (also on attention), learned
positional embedding, max_len 50, ρ = 0.6. The brief suggested ρ = 0.2; the paper's §4.6 finds that
the best ρ depends on sequence length: 0.2 for the long MovieLens histories, 0.6 for Beauty and 0.4
for Steam. Phones and Clothing have short histories like Beauty, so 0.6.

Deliberate deviations:
- Every masked position becomes [mask] (the authors' code also never applies BERT's 80/10/10
  replacement); a sequence with no position drawn gets its last item masked, so each row trains.
  The authors add, per user, copies with only the last item masked; we do not, since the trainer
  redraws masks every epoch (their dupe_factor = 10 fixed copies play the same role).
- Positions count back from the last slot (position 0 = the [mask] at inference, the newest item in
  training) so that batches narrower than max_len get the same positions as the authors' fixed-width
  left padding.
- The trainer's Adam at lr 1e-3 is used, cut to 0.3 of itself after 5 epochs and 250 steps without a
  better validation score; the authors train 400k steps at lr 1e-4 with linear decay. BERT4Rec needs long
  training (Petrov & Macdonald, RecSys 2022): its early stopping waits 20 epochs (settings.MODEL_DEFAULTS),
  and the budget of each run is recorded with its result.
- The pad id is n_items and the mask id n_items + 1, both outside the scored table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahn.errors import DataError
from mahn.models.base import MAX_LEN, Batch, SequentialModel
from mahn.models.losses import without_excluded


@dataclass
class BERT4RecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.1
    mask_prob: float = 0.6  # ρ
    max_len: int = MAX_LEN  # input length including the appended [mask]

    def __post_init__(self) -> None:
        if self.dim < 1 or self.blocks < 1 or self.heads < 1 or self.max_len < 2:
            raise DataError("dim, blocks, heads must be positive and max_len at least 2",
                            "--dim / --max-len / --set blocks=... / --set heads=...")
        if self.dim % self.heads:
            raise DataError(f"dim {self.dim} is not divisible by heads {self.heads}", "--set heads=...")
        if not 0 < self.mask_prob <= 1:
            raise DataError("mask_prob must be in (0, 1]", "--set mask_prob=...")
        if not 0 <= self.dropout < 1:
            raise DataError("dropout must be in [0, 1)", "--set dropout=...")


class BERT4Rec(SequentialModel):
    Config = BERT4RecConfig
    search = {"dropout": [0.1, 0.2], "mask_prob": [0.6, 0.2]}
    paper_rival = True

    def __init__(self, config: BERT4RecConfig, n_items: int):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.mask_id = n_items + 1
        d = config.dim
        self.item_embedding = nn.Embedding(n_items + 2, d, padding_idx=n_items)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.input_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.trunc_normal_(embedding.weight, std=0.02, a=-0.04, b=0.04)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def hidden(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids (items and [mask]) -> (B, L, d) bidirectional states."""
        sequences = sequences[:, -self.config.max_len :]
        width = sequences.shape[1]
        positions = torch.arange(width - 1, -1, -1, device=sequences.device)  # 0 = the last slot
        x = self.item_embedding(sequences) + self.position_embedding(positions)
        x = self.dropout(self.input_norm(x))
        return self.encoder(x, src_key_padding_mask=sequences == self.pad)

    def output(self, states: torch.Tensor) -> torch.Tensor:
        """States -> vectors scored against item_table(): [GELU(h W_P + b_P) (normalised), 1]."""
        transformed = self.transform(states)
        return torch.cat([transformed, transformed.new_ones(*transformed.shape[:-1], 1)], dim=-1)

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        masks = torch.full_like(histories[:, :1], self.mask_id)
        return self.output(self.hidden(torch.cat([histories, masks], dim=1))[:, -1])

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.item_embedding.weight[: self.n_items], self.output_bias.unsqueeze(1)], dim=1)

    def cloze(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each real item with probability ρ (at least one per row). Returns (masked input, chosen)."""
        real = sequences != self.pad
        chosen = (torch.rand(sequences.shape, device=sequences.device) < self.config.mask_prob) & real
        none_chosen = ~chosen.any(1) & real[:, -1]
        chosen[:, -1] |= none_chosen  # left padding: the last column holds each row's newest item
        return sequences.masked_fill(chosen, self.mask_id), chosen

    def loss(self, batch: Batch) -> torch.Tensor:
        sequences = torch.cat([batch.histories, batch.targets[:, -1:]], dim=1)[:, -self.config.max_len :]
        masked, chosen = self.cloze(sequences)
        states = self.hidden(masked)[chosen]
        logits = without_excluded(self.output(states) @ self.item_table().T, self.excluded)
        return F.cross_entropy(logits, sequences[chosen])
