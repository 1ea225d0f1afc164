"""MAHN (Han, Niu, Wang 2021); equations and our decisions where the paper is open: docs/model.md.

Layer 1 fuses each history item's visual, ID and text vectors (v ⊕ e ⊕ t or v + e + t) and runs an
LSTM over them. Two gates, one per modality, let the layer-1 state h_k pick what of v_k and t_k
reaches layer 2: a_k = sigmoid((M h_k + b) ⊙ (N v_k + q)). Layer 2 fuses (v̄_k, h_k, t̄_k) and runs a
second LSTM whose state is scored against r_j = v_j ⊕ e_j ⊕ t_j (or the sum). The loss is BPR plus
λ times a tied-weight reconstruction of the raw features from v_i + t_i.

Ablations drop a modality everywhere (fusion, gate, item representation, reconstruction); with
both dropped the model is two stacked LSTMs over ID embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from mahn.errors import DataError
from mahn.models.base import (
    Batch,
    SequentialModel,
    check_id_dropout,
    left_to_right_padded,
    load_features,
    with_rows,
)
from mahn.models.losses import check_loss, next_item_loss

VARIANTS = ("add-add", "add-cat", "cat-add", "cat-cat")
ABLATIONS = ("", "v", "t", "vt")
FEATURE_NORMS = ("none", "l2")
VISUAL, TEXT = "image", "text"  # the dataset modalities feeding v and t


@dataclass
class MAHNConfig:
    dim: int = 50
    variant: str = "cat-cat"  # op1-op2: layer-1 fusion, layer-2 fusion
    ablate: str = ""  # "" (full model), "v" (MAHN-V), "t" (MAHN-T), "vt" (MAHN-V-T)
    rec_weight: float = 1.0  # λ, weight of the reconstruction loss
    loss: str = "ce"  # next-item loss (models/losses.py): ce (our default), bpr (the paper's), bce, sampled-ce
    negatives: int = 100  # sampled-ce: uniform negatives shared by a batch
    feature_norm: str = "none"  # none (the paper's raw features) or l2 (each item's feature row scaled to norm 1)
    id_dropout: float = 0.0  # training only: share of items whose ID vector is zeroed per batch, as a new item's is
    id_dropout_count: float = 0.0  # k > 0: instead, item i's ID is zeroed with chance k / (k + its count)
    skip_untrained: bool = True  # the training softmax leaves out items never bought in training (base.py)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise DataError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}", "--variant")
        if self.ablate not in ABLATIONS:
            raise DataError(f"unknown ablation {self.ablate!r}; choose v, t or vt", "--ablate")
        if self.dim < 1:
            raise DataError("dim must be positive", "--dim")
        check_loss(self.loss, self.negatives, "MAHN")
        check_id_dropout(self.id_dropout, self.id_dropout_count, "MAHN")
        if self.feature_norm not in FEATURE_NORMS:
            raise DataError(f"MAHN: feature_norm must be one of {', '.join(FEATURE_NORMS)}", "--set feature_norm=...")


class Modality(nn.Module):
    """A fixed raw feature matrix, its projection W (no bias), and the gate that modulates it."""

    def __init__(self, features: torch.Tensor, dim: int):
        super().__init__()
        pad_row = features.new_zeros(1, features.shape[1])
        # raw features are inputs, not parameters: kept out of the checkpoint (persistent=False)
        self.register_buffer("raw", torch.cat([features, pad_row]), persistent=False)
        self.register_buffer("raw_norm2", self.raw.pow(2).sum(1), persistent=False)  # ||x||² per item
        self.project = nn.Linear(features.shape[1], dim, bias=False)
        self.gate_state = nn.Linear(dim, dim)  # M h + b
        self.gate_input = nn.Linear(dim, dim)  # N v + q

    def gate(self, state: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate_state(state) * self.gate_input(projected))

    def reconstruction_error(self, shared: torch.Tensor, projected: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """||Wᵀ s − x||² per row, with the projection's own weight (tied); `projected` = W x of the same rows.

        Expanded as sᵀ(W Wᵀ)s − 2 sᵀ(W x) + ||x||², which needs only the (d × d) W Wᵀ and the projection the
        model has already computed: the reconstruction costs O(d²) a row instead of O(d · feature size)."""
        weight = self.project.weight
        quadratic = ((shared @ (weight @ weight.T)) * shared).sum(-1)
        return quadratic - 2 * (shared * projected).sum(-1) + self.raw_norm2[ids]


class MAHN(SequentialModel):
    Config = MAHNConfig
    search = {"rec_weight": [1.0, 0.1], "loss": ["ce", "bpr"]}
    id_only = {"ablate": "vt"}
    reads_added_in_history = True

    @property
    def reads_content(self) -> bool:
        return bool(self.modalities)

    @property
    def name(self) -> str:
        return "MAHN" + "".join(f"-{m.upper()}" for m in self.config.ablate)

    def __init__(self, config: MAHNConfig, n_items: int, visual: torch.Tensor | None = None,
                 text: torch.Tensor | None = None, counts: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.op1, self.op2 = config.variant.split("-")
        d = config.dim
        for name, letter, features in (("visual", "v", visual), ("text", "t", text)):
            if letter not in config.ablate and (features is None or features.shape[0] != n_items):
                raise DataError(f"MAHN needs {name} features with one row per item (or --ablate {letter})")
        self.visual = Modality(normalised(visual, config.feature_norm), d) if "v" not in config.ablate else None
        self.text = Modality(normalised(text, config.feature_norm), d) if "t" not in config.ablate else None
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        nn.init.normal_(self.item_embedding.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        # items never seen in training (new items) have no learned ID vector: e = 0, so their content speaks
        self.track_trained(counts)
        self.projected_cache: tuple[tuple, tuple] | None = None  # (weights' identity, (v, t) of every item)
        n_parts = 1 + len(self.modalities)  # e plus each modality
        self.item_dim = d * n_parts if self.op1 == "cat" else d
        self.lstm1 = nn.LSTM(self.item_dim, d, batch_first=True)
        self.lstm2 = nn.LSTM(d * n_parts if self.op2 == "cat" else d, self.item_dim, batch_first=True)

    @classmethod
    def from_dataset(cls, config: MAHNConfig, dataset) -> MAHN:
        def load(modality: str, letter: str) -> torch.Tensor | None:
            if letter in config.ablate:
                return None
            # rows of items lacking the modality are zeros
            return load_features(dataset, (modality,), "MAHN", f"or train the ablation with --ablate {letter}")[0][0]

        counts = torch.from_numpy(dataset.item_frequency())  # each item's training count
        return cls(config, dataset.n_items, load(VISUAL, "v"), load(TEXT, "t"), counts)

    @property
    def modalities(self) -> list[Modality]:
        return [m for m in (self.visual, self.text) if m is not None]

    def fuse(self, op: str, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, -1) if op == "cat" else torch.stack(parts).sum(0)

    def item_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(v, e, t) for 1-D ids; each distinct item's features are projected once."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        v, t = self.project(unique)
        return (v[inverse] if v is not None else None, self.id_vectors(ids),
                t[inverse] if t is not None else None)

    def project(self, ids: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(v, t) = (W x^v, E x^t) of the given items, or of every row with the padding row last when `ids` is
        None (read in place: gathering the whole feature matrix would copy it). None for an ablated modality."""
        if ids is not None and not torch.is_grad_enabled() and self.modalities:
            # scoring: every item projected once and looked up (gathering each batch's raw rows was half of
            # an evaluation); recomputed whenever a projection's weights or inputs change (an optimiser step or
            # loaded weights bump the version) and dropped at every switch of training mode, so it lives for one
            # evaluation
            key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for m in self.modalities
                        for t in (m.project.weight, m.raw))
            if self.projected_cache is None or self.projected_cache[0] != key:
                self.projected_cache = None  # free the old projections before computing the new ones
                self.projected_cache = (key, self.project(None))
            return tuple(p[ids] if p is not None else None for p in self.projected_cache[1])
        v = self.visual.project(self.visual.raw if ids is None else self.visual.raw[ids]) if self.visual else None
        t = self.text.project(self.text.raw if ids is None else self.text.raw[ids]) if self.text else None
        return v, t

    def train(self, mode: bool = True) -> MAHN:
        self.projected_cache = None
        return super().train(mode)

    def represent(self, v, e, t) -> torch.Tensor:
        """r_j = v ⊕ e ⊕ t (op1 cat) or v + e + t (op1 add), over the parts not ablated."""
        return self.fuse(self.op1, [p for p in (v, e, t) if p is not None])

    def run(self, structure: PackedSequence, v, e, t) -> tuple[PackedSequence, torch.Tensor]:
        """Both layers over packed positions. Returns (layer-2 outputs, final layer-2 state (B, item_dim))."""
        h, _ = self.lstm1(structure._replace(data=self.represent(v, e, t)))
        h = h.data
        v_bar = self.visual.gate(h, v) * v if self.visual else None
        t_bar = self.text.gate(h, t) * t if self.text else None
        y = self.fuse(self.op2, [p for p in (v_bar, h, t_bar) if p is not None])
        out, (final, _) = self.lstm2(structure._replace(data=y))
        return out, final[-1]

    def pack(self, ids: torch.Tensor) -> tuple[PackedSequence, torch.Tensor]:
        """Left-padded (B, L) -> packed sequence of ids (padding skipped), and the lengths."""
        right, lengths = left_to_right_padded(ids, self.pad)
        lengths = lengths.clamp(min=1)  # an empty history is read as a single pad item
        return pack_padded_sequence(right, lengths.cpu(), batch_first=True, enforce_sorted=False), lengths

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        packed, _ = self.pack(histories)
        _, final = self.run(packed, *self.item_parts(packed.data))
        return final

    def item_table(self) -> torch.Tensor:
        ids = torch.arange(self.n_items, device=self.item_embedding.weight.device)
        return self.represent(*self.item_parts(ids))

    def new_item_inputs(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """New items' raw (x^v, x^t) rows, checked and normalised as the model's own; None where ablated."""
        self.require_content()
        v, t = (self.content_input(features, name, m.project.in_features) if m is not None else None
                for name, m in ((VISUAL, self.visual), (TEXT, self.text)))
        if v is not None and t is not None and len(v) != len(t):
            raise DataError(f"MAHN: {len(v)} image rows but {len(t)} text rows for the new items")
        return normalised(v, self.config.feature_norm), normalised(t, self.config.feature_norm)

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """r for new items from raw features: v = W x^v, t = E x^t, e = 0 (no learned ID vector, like an
        item never seen in training; docs/model.md). An ablated modality is not read."""
        v, t = self.new_item_inputs(features)
        v = self.visual.project(v) if v is not None else None
        t = self.text.project(t) if t is not None else None
        some = v if v is not None else t
        return self.represent(v, some.new_zeros(len(some), self.config.dim), t)

    def with_added(self, features: dict[str, torch.Tensor]) -> MAHN:
        inputs = self.new_item_inputs(features)
        grown = self.grown_copy(len(next(x for x in inputs if x is not None)))
        for modality, x in zip((grown.visual, grown.text), inputs, strict=True):
            if modality is not None:
                modality.raw = with_rows(modality.raw, x, self.n_items)
                modality.raw_norm2 = modality.raw.pow(2).sum(1)
        return grown

    def reconstruction(self, v, t, ids: torch.Tensor) -> torch.Tensor:
        """rec(i) per row: ||Wᵀ(v+t) − x^v||² + ||Eᵀ(v+t) − x^t||², over the modalities present."""
        if not self.modalities:
            return torch.zeros(len(ids), device=ids.device)
        shared = self.fuse("add", [p for p in (v, t) if p is not None])
        projected = [p for p in (v, t) if p is not None]  # in the order of self.modalities
        return sum(m.reconstruction_error(shared, p, ids) for m, p in zip(self.modalities, projected, strict=True))

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """r_j for 1-D ids (each distinct item's features projected once)."""
        return self.represent(*self.item_parts(ids))

    def loss(self, batch: Batch) -> torch.Tensor:
        packed, lengths = self.pack(batch.histories)
        positives = pack_padded_sequence(left_to_right_padded(batch.targets, self.pad)[0], lengths.cpu(),
                                         batch_first=True, enforce_sorted=False).data
        negatives = pack_padded_sequence(left_to_right_padded(batch.negatives, self.pad)[0], lengths.cpu(),
                                         batch_first=True, enforce_sorted=False).data
        n = len(packed.data)
        ids = torch.cat([packed.data, positives, negatives])
        unique, inverse = torch.unique(ids, return_inverse=True)
        self.dropped = None  # one draw of dropped IDs per batch, shared by the history and the candidates
        if self.config.loss == "ce":  # the softmax needs every item's vector: project each item once, then gather
            every = torch.arange(self.n_items + 1, device=ids.device)  # with the padding row of empty histories
            v_every, t_every = self.project(None)
            v_unique = v_every[unique] if v_every is not None else None
            t_unique = t_every[unique] if t_every is not None else None
            table = self.represent(*(p[: self.n_items] if p is not None else None
                                     for p in (v_every, self.id_vectors(every), t_every)))
        else:
            v_unique, t_unique = self.project(unique)
            table = None
        v = v_unique[inverse[:n]] if v_unique is not None else None
        t = t_unique[inverse[:n]] if t_unique is not None else None
        out, _ = self.run(packed, v, self.id_vectors(packed.data), t)
        candidates = ids[n:]  # the targets, then the negatives: already projected above

        def vectors(query: torch.Tensor) -> torch.Tensor:  # r_j of the ids the ranking loss asks for
            if not (query.shape == candidates.shape and torch.equal(query, candidates)):
                return self.item_vectors(query)  # sampled-ce's shared negatives: not projected yet
            pick = inverse[n:]
            return self.represent(v_unique[pick] if v_unique is not None else None, self.id_vectors(candidates),
                                  t_unique[pick] if t_unique is not None else None)

        ranking = next_item_loss(self.config.loss, out.data, positives, negatives=negatives, items=vectors,
                                 table=(lambda: table) if table is not None else self.item_table,
                                 n_items=self.n_items, n_sampled=self.config.negatives,
                                 excluded=self.softmax_excluded())
        if not self.modalities or self.config.rec_weight == 0:
            return ranking
        # rec depends only on the item: compute it once per distinct item, then look it up per position
        rec = self.reconstruction(v_unique, t_unique, unique)[inverse[n:]]
        return ranking + self.config.rec_weight * 2 * rec.mean()  # rec(pos) + rec(neg), averaged over positions


def normalised(features: torch.Tensor | None, norm: str) -> torch.Tensor | None:
    """Feature rows as given (none) or scaled to unit length (l2); an all-zero row (item lacking it) stays zero."""
    if features is None or norm == "none":
        return features
    return features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
