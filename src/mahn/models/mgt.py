"""MGT, the modality-gated transformer: ours, not the paper's. MAHN's idea on SASRec's backbone.

MAHN lets the user's history decide how much each modality counts (its gates, docs/model.md). MGT
keeps that idea and replaces MAHN's two LSTMs with a causal self-attention encoder, which our
measurements found stronger on the rare items of these datasets:

- each item has one vector per source m ∈ {id, image, text}: x_j^id = e_j (learned, zero for an
  item never trained on), x_j^m = LN_m(W_m f_j^m) for a content feature row f_j^m (zero when the
  item lacks it);
- a history item enters as e_k + Σ_m x_k^m plus a position embedding, read by SASRec's blocks
  into a state h_t;
- the state gates each source: q_t^m = σ(G_m h_t + b_m) ⊙ P_m h_t, and item j scores
  s_{t,j} = Σ_m q_t^m · x_j^m, one dot product between [q^id ; q^image ; q^text] and
  [x^id ; x^image ; x^text];
- the loss is the softmax over all items (models/losses.py; `loss=` picks another).

An item added after training has no ID vector, so its image and text alone place it. Training with
`id_dropout=R` zeroes the ID vectors of a random share R of the items in each batch, so the model
also learns to rank items by content alone (as DropoutNet does for cold-start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mahn.errors import DataError
from mahn.models.base import MAX_LEN, Batch, SequentialModel, load_features
from mahn.models.losses import check_loss, next_item_loss
from mahn.models.sasrec import Block, causal_blocks

SOURCES = ("image", "text")  # the dataset modalities MGT can read, in item-table order after the ID part


@dataclass
class MGTConfig:
    dim: int = 50
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = MAX_LEN
    modalities: str = "auto"  # auto (every modality the dataset has), none, or a comma list of image,text
    loss: str = "ce"  # next-item loss (models/losses.py): ce, sampled-ce, bce, bpr
    negatives: int = 100  # sampled-ce: uniform negatives shared by a batch
    id_dropout: float = 0.0  # training only: share of items whose ID vector is zeroed per batch, as a new item's is
    content_gain: float = 1.0  # initial gain of each content projection's LayerNorm (the ID rows start near 0.02)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.blocks < 1 or self.heads < 1 or self.max_len < 1:
            raise DataError("MGT: dim, blocks, heads and max_len must be positive",
                            "--dim / --max-len / --set blocks=... / --set heads=...")
        if self.dim % self.heads:
            raise DataError(f"MGT: dim {self.dim} is not divisible by heads {self.heads}", "--set heads=...")
        if not self.content_gain > 0:
            raise DataError("MGT: content_gain must be positive", "--set content_gain=...")
        if not 0 <= self.dropout < 1 or not 0 <= self.id_dropout < 1:
            raise DataError("MGT: dropout and id_dropout must be in [0, 1)", "--set dropout=... / id_dropout=...")
        if self.modalities not in ("auto", "none"):
            unknown = [m for m in self.modalities.split(",") if m not in SOURCES]
            if unknown or not self.modalities:
                raise DataError(f"MGT: modalities must be auto, none or a comma list of {', '.join(SOURCES)}; "
                                f"got {self.modalities!r}", "--set modalities=...")
        check_loss(self.loss, self.negatives, "MGT")


class Content(nn.Module):
    """One modality's fixed feature rows and their learned projection x = LN(W f) (zero for a missing row)."""

    def __init__(self, features: torch.Tensor, present: torch.Tensor, dim: int, gain: float = 1.0):
        super().__init__()
        # inputs, not parameters: rebuilt from the dataset's feature store, kept out of the checkpoint
        self.register_buffer("raw", torch.cat([features, features.new_zeros(1, features.shape[1])]), persistent=False)
        self.register_buffer("present", torch.cat([present, present.new_zeros(1)]).unsqueeze(1), persistent=False)
        self.project = nn.Linear(features.shape[1], dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.weight, gain)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vectors(self.raw[ids]) * self.present[ids]

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(rows))


class MGT(SequentialModel):
    Config = MGTConfig

    def __init__(self, config: MGTConfig, n_items: int, content: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 trained: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.dim
        self.sources = [m for m in SOURCES if m in content]
        self.content = nn.ModuleDict({m: Content(*content[m], d, config.content_gain) for m in self.sources})
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.position_embedding = nn.Embedding(config.max_len, d)
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.xavier_normal_(embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        self.track_trained(trained)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        n_parts = 1 + len(self.sources)
        self.gates = nn.Linear(d, d * n_parts)  # G_m h + b_m, every source at once
        self.queries = nn.Linear(d, d * n_parts, bias=False)  # P_m h

    @classmethod
    def from_dataset(cls, config: MGTConfig, dataset) -> MGT:
        have = dataset.feature_modalities()
        if config.modalities == "auto":
            wanted = [m for m in SOURCES if m in have]
        else:
            wanted = [] if config.modalities == "none" else config.modalities.split(",")
        loaded = load_features(dataset, tuple(wanted), "MGT", "or leave it out with --set modalities=...")
        trained = torch.from_numpy(dataset.item_frequency() > 0)
        return cls(config, dataset.n_items, dict(zip(wanted, loaded, strict=True)), trained)

    def item_parts(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [self.id_vectors(ids)] + [self.content[m](ids) for m in self.sources]

    def hidden(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states h_t; h_t sees only positions <= t (as SASRec)."""
        histories = histories[:, -self.config.max_len :]
        width = histories.shape[1]
        real = histories != self.pad
        positions = torch.arange(width - 1, -1, -1, device=histories.device)  # 0 = most recent slot
        x = torch.stack(self.item_parts(histories)).sum(0) * self.config.dim**0.5 + self.position_embedding(positions)
        return self.final_norm(causal_blocks(self.blocks, self.dropout(x), real, self.config.heads))

    def gated(self, states: torch.Tensor) -> torch.Tensor:
        """[q^id ; q^image ; q^text] = σ(G h + b) ⊙ P h for states (..., d)."""
        return torch.sigmoid(self.gates(states)) * self.queries(states)

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.gated(self.hidden(histories)[:, -1])

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.item_parts(ids), -1)

    def item_table(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.n_items, device=self.item_embedding.weight.device))

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item-table rows of new items from their raw features; the ID part is zero."""
        if not self.sources:
            raise DataError("MGT trained without modalities ranks items by their ID only: new items need image "
                            "or text features")
        rows = [self.content[m].vectors(self.content_input(features, m, self.content[m].project.in_features))
                for m in self.sources]
        if len({len(r) for r in rows}) > 1:
            raise DataError(f"MGT: the new items have {' and '.join(str(len(r)) for r in rows)} rows of "
                            f"{' and '.join(self.sources)} features")
        return torch.cat([rows[0].new_zeros(len(rows[0]), self.config.dim), *rows], -1)

    def loss(self, batch: Batch) -> torch.Tensor:
        self.dropped = None  # one draw of dropped IDs per batch, shared by the history and the candidates
        states = self.hidden(batch.histories)
        targets = batch.targets[:, -states.shape[1] :]
        negatives = batch.negatives[:, -states.shape[1] :]
        real = targets != self.pad
        return next_item_loss(self.config.loss, self.gated(states[real]), targets[real], negatives[real],
                              self.item_vectors, self.item_table, self.n_items, self.config.negatives, self.excluded)
