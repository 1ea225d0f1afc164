"""MV-RNN: Multi-View Recurrent Neural Network (Q. Cui, S. Wu, Q. Liu, W. Zhong, L. Wang, TKDE 2020),
"MV-RNN: A Multi-View Recurrent Neural Network for Sequential Recommendation".

Each item is seen through three views: a learned ID embedding x_i, its image feature f^v_i and its
text feature f^t_i. The features pass through an autoencoder whose encoder fuses them into one code,
m_i = E f^v_i + V f^t_i, and whose decoder (tied weights, Eᵀ and Vᵀ) reconstructs each feature
from that code. The item's input and output representation is p_i = [x_i ; m_i]; a GRU reads
p_1..p_k and its state h_k scores the next item, s = h_k · p_j. The loss is BPR with one sampled
negative per position plus the reconstruction term

    λ/2 · ( ‖f^v_i − Eᵀ m_i‖² / D_v + ‖f^t_i − Vᵀ m_i‖² / D_t )

for both the positive and the negative item of every position.

The fusion is the paper's full model, the variant it reports best (the authors' `MvGru`): the
"hybrid" fusion that concatenates the ID view with the autoencoder's shared multimodal code,
rather than concatenating raw views (Con.), summing them (Fusion) or running one GRU per view
(2Units). Defaults from the authors' code (github.com/cuiqiang1990/MV-RNN): 20-dimensional ID
embedding, 20-dimensional multimodal code, GRU hidden size 40 (= the item size, so h · p is
defined), λ_ae = 1e-4, E and V without bias, no L2 on E and V (λ_ev = 0).

Missing modalities: an item whose feature is absent (mask False, row zeros) is encoded from the
views it has, and its absent feature is not a reconstruction target. The paper's denoising
training for missing views, zeroing an item's whole feature at random while still reconstructing
the true one, is available as `corrupt` (the probability of dropping each present feature of each
item occurrence during training); the authors' main setting trains on complete data, so it
defaults to 0.

Deviations: the shared trainer's Adam, mini-batches and L2 weight decay instead of per-sequence SGD
(lr 0.1, λ = 1e-3); the BPR and reconstruction terms are averaged over positions rather than
summed over a sequence (their ratio is unchanged); the GRU starts from a zero state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel, left_to_right_padded, load_features
from mahn.models.vbpr import parse_modalities


@dataclass
class MVRNNConfig:
    id_dim: int = 20
    code_dim: int = 20  # size of the fused multimodal code m_i
    modalities: str = "image+text"
    rec_weight: float = 1e-4  # λ_ae
    corrupt: float = 0.0  # denoising: chance of zeroing a present feature of an item occurrence in training

    def __post_init__(self) -> None:
        if self.id_dim < 1 or self.code_dim < 1:
            raise DataError("MV-RNN: id_dim and code_dim must be positive", "--set id_dim=... / code_dim=...")
        if self.rec_weight < 0 or not 0 <= self.corrupt < 1:
            raise DataError("MV-RNN: rec_weight must be >= 0 and corrupt in [0, 1)", "--lambda / --set corrupt=...")
        parse_modalities(self.modalities, "MV-RNN")


class View(nn.Module):
    """One feature view: its fixed raw features (plus a zero pad row) and the tied encoder/decoder matrix."""

    def __init__(self, features: torch.Tensor, mask: torch.Tensor, code_dim: int):
        super().__init__()
        self.register_buffer("raw", torch.cat([features, features.new_zeros(1, features.shape[1])]),
                             persistent=False)
        self.register_buffer("present", torch.cat([mask.bool(), mask.new_zeros(1, dtype=torch.bool)]),
                             persistent=False)
        self.encoder = nn.Linear(features.shape[1], code_dim, bias=False)  # E (or V); Eᵀ decodes

    def reconstruction_error(self, code: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """‖f − Eᵀ m‖² / D per row, zero where the item lacks this view."""
        error = (code @ self.encoder.weight - self.raw[ids]).pow(2).mean(1)
        return error * self.present[ids]


class MVRNN(SequentialModel):
    Config = MVRNNConfig
    search = {"rec_weight": [1e-4, 1e-3], "corrupt": [0.0, 0.2]}
    paper_rival = True
    reads_content = True

    def __init__(self, config: MVRNNConfig, n_items: int, features: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        if not features:
            raise DataError("MV-RNN needs at least one feature view")
        for matrix, mask in features:
            if matrix.shape[0] != n_items or mask.shape != (n_items,):
                raise DataError(f"MV-RNN needs one feature row per item: got {tuple(matrix.shape)} "
                                f"for {n_items} items")
        self.config = config
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, config.id_dim, padding_idx=n_items)
        self.views = nn.ModuleList(View(matrix, mask, config.code_dim) for matrix, mask in features)
        self.item_dim = config.id_dim + config.code_dim
        self.gru = nn.GRU(self.item_dim, self.item_dim, batch_first=True)

    @classmethod
    def from_dataset(cls, config: MVRNNConfig, dataset) -> MVRNN:
        modalities = parse_modalities(config.modalities, "MV-RNN")
        return cls(config, dataset.n_items, load_features(dataset, modalities, "MV-RNN",
                                                          "or choose other --set modalities=..."))

    def code(self, ids: torch.Tensor) -> torch.Tensor:
        """m_i = Σ_views E f_i for 1-D ids; in training with `corrupt`, whole features drop out at random."""
        parts = []
        for view in self.views:
            raw = view.raw[ids]
            if self.training and self.config.corrupt > 0:
                keep = torch.rand(len(ids), 1, device=raw.device) >= self.config.corrupt
                raw = raw * keep
            parts.append(view.encoder(raw))
        return torch.stack(parts).sum(0)

    def represent(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_i = [x_i ; m_i], m_i) for 1-D ids."""
        code = self.code(ids)
        return torch.cat([self.item_embedding(ids), code], 1), code

    def pack(self, ids: torch.Tensor) -> tuple[PackedSequence, torch.Tensor]:
        """Left-padded (B, L) -> packed ids (padding skipped), lengths; an empty history is one pad item."""
        right, lengths = left_to_right_padded(ids, self.pad)
        lengths = lengths.clamp(min=1)
        return pack_padded_sequence(right, lengths.cpu(), batch_first=True, enforce_sorted=False), lengths

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        packed, _ = self.pack(histories)
        _, final = self.gru(packed._replace(data=self.represent(packed.data)[0]))
        return final[-1]

    def item_table(self) -> torch.Tensor:
        return self.represent(torch.arange(self.n_items, device=self.item_embedding.weight.device))[0]

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """p = [0 ; m] for new items: no learned ID view, the code m = Σ E f from their features."""
        names = parse_modalities(self.config.modalities, "MV-RNN")
        code = sum(view.encoder(self.content_input(features, m, view.encoder.in_features))
                   for m, view in zip(names, self.views, strict=True))
        return torch.cat([code.new_zeros(len(code), self.config.id_dim), code], 1)

    def loss(self, batch: Batch) -> torch.Tensor:
        packed, lengths = self.pack(batch.histories)

        def packed_like(ids: torch.Tensor) -> torch.Tensor:
            right = left_to_right_padded(ids, self.pad)[0]
            return pack_padded_sequence(right, lengths.cpu(), batch_first=True, enforce_sorted=False).data

        positives, negatives = packed_like(batch.targets), packed_like(batch.negatives)
        states, _ = self.gru(packed._replace(data=self.represent(packed.data)[0]))
        scored = torch.cat([positives, negatives])
        items, codes = self.represent(scored)
        n = len(positives)
        bpr = -F.logsigmoid((states.data * (items[:n] - items[n:])).sum(1)).mean()
        if self.config.rec_weight == 0:
            return bpr
        rec = sum(view.reconstruction_error(codes, scored) for view in self.views)
        # rec(pos) + rec(neg) per position, averaged over positions
        return bpr + 0.5 * self.config.rec_weight * 2 * rec.mean()
