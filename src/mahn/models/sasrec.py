"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal transformer over the history's item embeddings plus a learned positional embedding. The
state F_t after position t scores item j as r_{t,j} = F_t · M_j, where M is the *input* item
embedding (shared, as in the paper). The paper trains with binary cross-entropy against one sampled
negative per position, -log σ(r_{t,o_t}) - log(1 - σ(r_{t,neg})) (`loss="bce"`, `--preset paper`); our
default is the softmax over every item (`loss="ce"`), which Klenitskiy & Vasilev (RecSys 2023) found far
stronger and our runs confirm on every dataset (docs/investigations/defaults.md).

Defaults from the paper (§IV-B and the authors' TensorFlow code): 2 self-attention blocks, 1 head,
d = 50, max_len 50, learned positional embedding, dropout 0.2 (the paper uses 0.5 on the sparse
Amazon Beauty/Games data; pass `dropout=0.5` to match that), embeddings scaled by sqrt(d),
pre-LayerNorm queries in each attention block (Q = LN(x), K = V = x, as in the authors' code), a
two-layer ReLU feed-forward with a residual, and a final LayerNorm. The trainer's Adam lr 1e-3
matches the paper; the paper's L2 is applied by the trainer's weight decay.

Deliberate deviations:
- Positions are counted back from the most recent item (the last real item is position 0). The
  authors left-pad to a fixed length, so their last item always sits in slot max_len-1; counting
  from the end gives the same embedding to the same item while allowing batches narrower than
  max_len (the trainer pads each batch only to its longest history).
- Padding keys are masked out of attention (the authors' code masks keys whose embedding is all
  zero, which is the same thing); padded query rows are zeroed after every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mahn.errors import DataError
from mahn.models.base import MAX_LEN, Batch, SequentialModel
from mahn.models.losses import check_loss, next_item_loss


@dataclass
class SASRecConfig:
    dim: int = 50
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = MAX_LEN  # longest history the positional embedding covers; longer ones keep their tail
    loss: str = "ce"  # next-item loss (models/losses.py): ce (our default), bce (the paper's), bpr, sampled-ce
    negatives: int = 100  # sampled-ce: uniform negatives shared by a batch

    def __post_init__(self) -> None:
        if self.dim < 1 or self.blocks < 1 or self.heads < 1 or self.max_len < 1:
            raise DataError("dim, blocks, heads and max_len must be positive",
                            "--dim / --max-len / --set blocks=... / --set heads=...")
        if self.dim % self.heads:
            raise DataError(f"dim {self.dim} is not divisible by heads {self.heads}", "--set heads=...")
        if not 0 <= self.dropout < 1:
            raise DataError("dropout must be in [0, 1)", "--set dropout=...")
        check_loss(self.loss, self.negatives, "SASRec")


class Block(nn.Module):
    """One self-attention block: x + Attn(LN(x), x, x), then LN, then a residual point-wise FFN."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        query = self.attention_norm(x)
        attended, _ = self.attention(query, x, x, attn_mask=blocked, need_weights=False)
        x = self.ffn_norm(query + attended)
        return x + self.ffn(x)


def causal_blocks(blocks: nn.ModuleList, x: torch.Tensor, real: torch.Tensor, heads: int) -> torch.Tensor:
    """Run (B, L, d) inputs through the blocks; position t sees only real positions <= t. Padded rows stay zero."""
    width = x.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=x.device).triu(1)
    # True = may not attend: future positions and padded keys; a query may always see itself so that
    # padded rows (zeroed below) never turn into NaN
    blocked = causal.unsqueeze(0) | ~real.unsqueeze(1)
    blocked = (blocked & ~torch.eye(width, dtype=torch.bool, device=x.device)).repeat_interleave(heads, dim=0)
    x = x * real.unsqueeze(-1)
    for block in blocks:
        x = block(x, blocked) * real.unsqueeze(-1)
    return x


class SASRec(SequentialModel):
    Config = SASRecConfig
    search = {"dropout": [0.2, 0.5], "loss": ["bce", "ce"]}
    paper_rival = True

    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.dim
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        for embedding in (self.item_embedding, self.position_embedding):  # Glorot, as the authors' code
            nn.init.xavier_normal_(embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def hidden(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states F_t; F_t sees only positions <= t."""
        histories = histories[:, -self.config.max_len :]
        width = histories.shape[1]
        real = histories != self.pad
        positions = torch.arange(width - 1, -1, -1, device=histories.device)  # 0 = most recent slot
        x = self.item_embedding(histories) * self.config.dim**0.5 + self.position_embedding(positions)
        return self.final_norm(causal_blocks(self.blocks, self.dropout(x), real, self.config.heads))

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden(histories)[:, -1]

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]

    def loss(self, batch: Batch) -> torch.Tensor:
        states = self.hidden(batch.histories)
        targets = batch.targets[:, -states.shape[1] :]
        negatives = batch.negatives[:, -states.shape[1] :]
        real = targets != self.pad
        return next_item_loss(self.config.loss, states[real], targets[real], negatives=negatives[real],
                              items=self.item_embedding, table=self.item_table, n_items=self.n_items,
                              n_sampled=self.config.negatives, excluded=self.excluded)
