"""MGT, the modality-gated transformer: ours, not the paper's. SASRec with each item's image and text added
to its ID vector, and MAHN's idea of letting the user's history decide how much each modality counts.

- each item j has a learned ID vector e_j (zero for an item never trained on) and, per content source
  m ∈ {image, text}, a content vector c_j^m = LN_m(W_m f_j^m + b_m) of its fixed feature row f_j^m (zero
  when the item lacks it); LN_m's gain starts at `content_scale`, so the IDs lead at first and the
  content grows only as far as it helps;
- a history item enters as e_k + Σ_m c_k^m (times √d) plus a position embedding, read by SASRec's
  causal self-attention blocks into a state h_t;
- item j scores s_{t,j} = h_t · e_j + Σ_m (g_m(h_t) ⊙ h_t) · c_j^m, with a gate per source and
  dimension g_m(h) = 2σ(G_m h + b_m) that starts at 1: one dot product between
  [h ; g_image ⊙ h ; g_text ⊙ h] and [e ; c^image ; c^text];
- the loss is the softmax over all items (models/losses.py; `loss=` picks another).

Without content (`modalities=none`) MGT is SASRec: the same blocks, scores and loss. An item added
after training has no ID vector, so its content alone places it, in the history and in the ranking.
Training with `id_dropout=R` zeroes the ID vectors of a random share R of the items in each batch, so
the model also learns to rank and read items by content alone (as DropoutNet does for cold-start);
`content_dropout=R` does the same to each source's content vectors, so no item leans on one source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mahn.errors import DataError
from mahn.models.base import MAX_LEN, Batch, SequentialModel, check_id_dropout, load_features, with_rows
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
    id_dropout_count: float = 0.0  # k > 0: instead, item i's ID is zeroed with chance k / (k + its count)
    content_dropout: float = 0.0  # training only: share of items whose content vector of a source is zeroed per batch
    content_scale: float = 0.1  # initial gain of each content vector's LayerNorm
    gates: bool = True  # per-user modality gates on the content scores (False: every gate fixed at 1)
    skip_untrained: bool = True  # the training softmax leaves out items never bought in training (base.py)
    impute_ids: bool = False  # an item without its ID vector gets one predicted from its content (else zero)
    feature_dropout: float = 0.0  # training only: dropout on the raw feature rows, before their projection
    content_projection: str = "learned"  # learned W_m, or fixed: a random W_m never trained (no per-code memory)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.blocks < 1 or self.heads < 1 or self.max_len < 1:
            raise DataError("MGT: dim, blocks, heads and max_len must be positive",
                            "--dim / --max-len / --set blocks=... / --set heads=...")
        if self.dim % self.heads:
            raise DataError(f"MGT: dim {self.dim} is not divisible by heads {self.heads}", "--set heads=...")
        if not self.content_scale > 0:
            raise DataError("MGT: content_scale must be positive", "--set content_scale=...")
        check_id_dropout(self.id_dropout, self.id_dropout_count, "MGT")
        for name in ("dropout", "content_dropout", "feature_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise DataError(f"MGT: {name} must be in [0, 1)", f"--set {name}=...")
        if self.modalities not in ("auto", "none"):
            unknown = [m for m in self.modalities.split(",") if m not in SOURCES]
            if unknown or not self.modalities:
                raise DataError(f"MGT: modalities must be auto, none or a comma list of {', '.join(SOURCES)}; "
                                f"got {self.modalities!r}", "--set modalities=...")
        if self.content_projection not in ("learned", "fixed"):
            raise DataError(f"MGT: content_projection must be learned or fixed; got {self.content_projection!r}",
                            "--set content_projection=...")
        check_loss(self.loss, self.negatives, "MGT")


class Content(nn.Module):
    """One source's fixed feature rows and their learned vectors c = LN(W f + b) (zero for a missing row)."""

    def __init__(self, features: torch.Tensor, present: torch.Tensor, dim: int, scale: float, dropout: float = 0.0,
                 fixed: bool = False):
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        # inputs, not parameters: rebuilt from the dataset's feature store, kept out of the checkpoint
        self.register_buffer("raw", torch.cat([features, features.new_zeros(1, features.shape[1])]), persistent=False)
        self.register_buffer("present", torch.cat([present, present.new_zeros(1)]).unsqueeze(1), persistent=False)
        self.project = nn.Linear(features.shape[1], dim)
        if fixed:  # a random projection keeps the rows' inner products roughly; only the norm's gain is learned
            nn.init.zeros_(self.project.bias)
            self.project.requires_grad_(False)
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.weight, scale)
        self.dropped: torch.Tensor | None = None  # this batch's items whose vector is dropped (content_dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        kept = self.present[ids] if self.dropped is None else self.present[ids] & ~self.dropped[ids]
        return self.vectors(self.raw[ids]) * kept

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(self.input_dropout(rows)))


class MGT(SequentialModel):
    Config = MGTConfig
    search = {"dropout": [0.2, 0.5], "id_dropout": [0.0, 0.3]}
    id_only = {"modalities": "none"}
    reads_added_in_history = True

    @property
    def reads_content(self) -> bool:
        return bool(self.sources)

    def __init__(self, config: MGTConfig, n_items: int, content: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 counts: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.dim
        self.sources = [m for m in SOURCES if m in content]
        fixed = config.content_projection == "fixed"
        self.content = nn.ModuleDict({m: Content(*content[m], d, config.content_scale, config.feature_dropout, fixed)
                                      for m in self.sources})
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.position_embedding = nn.Embedding(config.max_len, d)
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.xavier_normal_(embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        self.track_trained(counts)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        # the ID vector of an item that has none (new, or dropped this batch), predicted from its content vectors
        self.imputed = nn.Linear(d * len(self.sources), d, bias=False) if self.sources and config.impute_ids else None
        if self.imputed is not None:
            nn.init.zeros_(self.imputed.weight)
        self.gates = nn.Linear(d, d * len(self.sources)) if self.sources else None  # G_m h + b_m, every source
        if self.gates is not None:  # 0 at the start: every gate 2σ(0) = 1
            nn.init.zeros_(self.gates.weight)
            nn.init.zeros_(self.gates.bias)

    @classmethod
    def from_dataset(cls, config: MGTConfig, dataset) -> MGT:
        have = dataset.feature_modalities()
        if config.modalities == "auto":
            wanted = [m for m in SOURCES if m in have]
        else:
            wanted = [] if config.modalities == "none" else config.modalities.split(",")
        loaded = load_features(dataset, tuple(wanted), "MGT", "or leave it out with --set modalities=...")
        counts = torch.from_numpy(dataset.item_frequency())  # each item's training count
        return cls(config, dataset.n_items, dict(zip(wanted, loaded, strict=True)), counts)

    def item_parts(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """[e, c^image, c^text] of `ids` (any shape), each (..., d)."""
        content = [self.content[m](ids) for m in self.sources]
        kept = self.id_kept(ids)
        return [self.with_imputed(self.item_embedding(ids) * kept, kept, content)] + content

    def with_imputed(self, ids: torch.Tensor, kept: torch.Tensor, content: list[torch.Tensor]) -> torch.Tensor:
        """ID vectors where kept, and (with impute_ids) the content's prediction of one elsewhere."""
        if self.imputed is None:
            return ids
        return torch.where(kept, ids, self.imputed(torch.cat(content, -1)))

    def hidden(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states h_t; h_t sees only positions <= t (as SASRec)."""
        histories = histories[:, -self.config.max_len :]
        width = histories.shape[1]
        real = histories != self.pad
        positions = torch.arange(width - 1, -1, -1, device=histories.device)  # 0 = most recent slot
        x = torch.stack(self.item_parts(histories)).sum(0) * self.config.dim**0.5 + self.position_embedding(positions)
        return self.final_norm(causal_blocks(self.blocks, self.dropout(x), real, self.config.heads))

    def query(self, states: torch.Tensor) -> torch.Tensor:
        """[h ; g_image ⊙ h ; g_text ⊙ h] for states (..., d), g_m = 2σ(G_m h + b_m) (1 without gates)."""
        if not self.sources:
            return states
        if not self.config.gates:
            return states.repeat(*[1] * (states.ndim - 1), 1 + len(self.sources))
        gates = 2 * torch.sigmoid(self.gates(states))
        return torch.cat([states, gates * states.repeat(*[1] * (states.ndim - 1), len(self.sources))], -1)

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.query(self.hidden(histories)[:, -1])

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.item_parts(ids), -1)

    def item_table(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.n_items, device=self.item_embedding.weight.device))

    def new_item_inputs(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """New items' raw feature rows, one (m, width) tensor per source, checked."""
        self.require_content()
        inputs = [self.content_input(features, m, self.content[m].project.in_features) for m in self.sources]
        if len({len(x) for x in inputs}) > 1:
            raise DataError(f"MGT: the new items have {' and '.join(str(len(x)) for x in inputs)} rows of "
                            f"{' and '.join(self.sources)} features")
        return inputs

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item-table rows of new items from their raw features; the ID part is zero."""
        rows = [self.content[m].vectors(x) for m, x in zip(self.sources, self.new_item_inputs(features), strict=True)]
        none = rows[0].new_zeros(len(rows[0]), self.config.dim)
        return torch.cat([self.with_imputed(none, none[:, :1].bool(), rows), *rows], -1)

    def with_added(self, features: dict[str, torch.Tensor]) -> MGT:
        inputs = self.new_item_inputs(features)
        grown = self.grown_copy(len(inputs[0]))
        for m, x in zip(self.sources, inputs, strict=True):
            source = grown.content[m]
            source.raw = with_rows(source.raw, x, self.n_items)
            source.present = with_rows(source.present, source.present.new_ones(len(x), 1), self.n_items)
        return grown

    def loss(self, batch: Batch) -> torch.Tensor:
        # one draw of dropped IDs (and content) per batch, shared by the history and the candidates
        self.dropped = None
        for source in self.content.values():
            rate = self.config.content_dropout
            source.dropped = (torch.rand(self.n_items + 1, 1, device=source.raw.device) < rate) if rate else None
        try:
            states = self.hidden(batch.histories)
            targets = batch.targets[:, -states.shape[1] :]
            negatives = batch.negatives[:, -states.shape[1] :]
            real = targets != self.pad
            return next_item_loss(self.config.loss, self.query(states[real]), targets[real],
                                  negatives=negatives[real], items=self.item_vectors, table=self.item_table,
                                  n_items=self.n_items, n_sampled=self.config.negatives,
                                  excluded=self.softmax_excluded())
        finally:
            for source in self.content.values():
                source.dropped = None
