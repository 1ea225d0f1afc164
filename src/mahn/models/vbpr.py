"""VBPR: Visual Bayesian Personalized Ranking (R. He, J. McAuley, AAAI 2016).

Non-sequential matrix factorisation with a visual preference term. For user u and item i with
content feature f_i:

    x_ui = β_i + γ_u·γ_i + θ_u·(E f_i) + β'·f_i

(the global offset α and user bias β_u of the paper cancel in every comparison of two items for
the same user, so they are left out), trained with BPR, −log σ(x_ui − x_uj), on (user, positive,
negative) triples. Scoring stays one matrix product: the user vector is [γ_u, θ_u, 1] and the item
row is [γ_i, E f_i, β_i + β'·f_i].

Defaults from the paper: K = K' = 10 latent factors for γ and θ (its 20 dimensions in total),
uniform negative items, BPR loss, E and β' without bias.

Deliberate choices and deviations:
- f_i is the item's image feature concatenated with its text feature (`modalities="image+text"`),
  so that VBPR reads the same content as MAHN (the issue asks for it); `modalities="image"` is the
  paper's visual-only model. An item lacking a modality has zeros there (the dataset's convention).
- Regularisation is the trainer's L2 (Adam weight decay on γ, θ, E, β'), not the paper's per-sample
  λ‖Θ‖² with SGD: one optimiser for every model in the comparison.
- Triples come from the trainer's batch: every item in the user's window (the last max_len + 1
  training items) is a positive, paired with the batch's uniform negative for that position; the
  window's first item, which is no batch target, gets a fresh uniform negative.
- User factors start at zero, so a user who never appears in training (or `users=None`, or an id
  outside the training users) has γ_u = θ_u = 0 and is ranked by the item biases alone, i.e. by the
  learned non-personalised popularity β_i + β'·f_i. Item factors start small and random (both zero
  would give zero gradients).
- The history itself is unused; only its user id matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel, load_features

MODALITIES = ("image", "text")


def parse_modalities(spec: str, model: str) -> tuple[str, ...]:
    """'image+text' -> ('image', 'text'); unknown or empty specs are a DataError."""
    names = tuple(m.strip() for m in spec.split("+") if m.strip())
    if not names or any(m not in MODALITIES for m in names) or len(set(names)) != len(names):
        raise DataError(f"{model}: modalities must be 'image', 'text' or 'image+text', got {spec!r}",
                        "--set modalities=...")
    return names


def user_item_pairs(batch: Batch, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat (rows, positives, negatives) of every real item in each row's window (histories + last target).

    `rows` indexes the batch row of each pair, so batch.users[rows] are the users.

    Window position j >= 1 is target j - 1, so it takes that target's negative; the first item of a
    window is no target and draws a uniform negative here.
    """
    window = torch.cat([batch.histories, batch.targets[:, -1:]], 1)
    negatives = torch.cat([torch.full_like(batch.negatives[:, :1], pad), batch.negatives], 1)
    real = window != pad
    unpaired = real & (negatives == pad)
    negatives = negatives.masked_scatter(unpaired, torch.randint(0, pad, (int(unpaired.sum()),),
                                                                 device=window.device))
    rows = torch.arange(len(window), device=window.device).unsqueeze(1).expand_as(window)
    return rows[real], window[real], negatives[real]


@dataclass
class VBPRConfig:
    dim: int = 10  # K: latent factors γ
    visual_dim: int = 10  # K': visual factors θ (E maps f_i to this size)
    modalities: str = "image+text"  # content features concatenated into f_i

    def __post_init__(self) -> None:
        if self.dim < 1 or self.visual_dim < 1:
            raise DataError("VBPR: dim and visual_dim must be positive", "--dim / --set visual_dim=...")
        parse_modalities(self.modalities, "VBPR")


class VBPR(SequentialModel):
    Config = VBPRConfig
    search = {"dim": [10, 20], "visual_dim": [10, 20]}
    reads_content = True

    def __init__(self, config: VBPRConfig, n_items: int, n_users: int, features: torch.Tensor):
        super().__init__()
        if features.ndim != 2 or features.shape[0] != n_items:
            raise DataError(f"VBPR needs one feature row per item: got {tuple(features.shape)} "
                            f"for {n_items} items")
        self.config = config
        self.n_items, self.n_users = n_items, n_users
        self.register_buffer("content", features, persistent=False)  # f_i, fixed input
        self.user_factors = nn.Embedding(n_users, config.dim)  # γ_u
        self.user_visual = nn.Embedding(n_users, config.visual_dim)  # θ_u
        self.item_factors = nn.Embedding(n_items, config.dim)  # γ_i
        self.item_bias = nn.Parameter(torch.zeros(n_items))  # β_i
        self.embed = nn.Linear(features.shape[1], config.visual_dim, bias=False)  # E
        self.visual_bias = nn.Linear(features.shape[1], 1, bias=False)  # β'
        nn.init.zeros_(self.user_factors.weight)
        nn.init.zeros_(self.user_visual.weight)
        nn.init.zeros_(self.visual_bias.weight)
        nn.init.normal_(self.item_factors.weight, std=0.1)

    @classmethod
    def from_dataset(cls, config: VBPRConfig, dataset) -> VBPR:
        parts = load_features(dataset, parse_modalities(config.modalities, "VBPR"), "VBPR",
                              "or choose other --set modalities=...")
        return cls(config, dataset.n_items, dataset.n_users, torch.cat([matrix for matrix, _ in parts], 1))

    def user_vectors(self, users: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(B, K + K') [γ_u, θ_u]; zeros for a missing or unknown user."""
        width = self.config.dim + self.config.visual_dim
        out = self.item_bias.new_zeros(batch_size, width)
        if users is None:
            return out
        users = users.to(self.item_bias.device)
        known = (users >= 0) & (users < self.n_users)
        ids = users.clamp(0, self.n_users - 1)
        vectors = torch.cat([self.user_factors(ids), self.user_visual(ids)], 1)
        return torch.where(known.unsqueeze(1), vectors, out)

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K + K' + 1) [γ_u, θ_u, 1]: the trailing 1 picks up the item bias column."""
        state = self.user_vectors(users, len(histories))
        return torch.cat([state, state.new_ones(len(state), 1)], 1)

    def item_rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """[γ_i, E f_i, β_i + β'·f_i] for `ids` (all items when None)."""
        content = self.content if ids is None else self.content[ids]
        factors = self.item_factors.weight if ids is None else self.item_factors(ids)
        bias = self.item_bias if ids is None else self.item_bias[ids]
        bias = bias + self.visual_bias(content).squeeze(1)
        return torch.cat([factors, self.embed(content), bias.unsqueeze(1)], 1)

    def item_table(self) -> torch.Tensor:
        return self.item_rows()

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[0, E f, β'·f] for new items: no learned γ_i or β_i, so the content terms alone place them."""
        parts = [self.content_input(features, m, None) for m in parse_modalities(self.config.modalities, "VBPR")]
        if len({len(p) for p in parts}) > 1 or sum(p.shape[1] for p in parts) != self.embed.in_features:
            raise DataError(f"VBPR: new items' features have shapes {[tuple(p.shape) for p in parts]}, "
                            f"the model reads {self.embed.in_features} values per item ({self.config.modalities})")
        content = torch.cat(parts, 1)
        factors = content.new_zeros(len(content), self.config.dim)
        return torch.cat([factors, self.embed(content), self.visual_bias(content)], 1)

    def loss(self, batch: Batch) -> torch.Tensor:
        rows, positives, negatives = user_item_pairs(batch, self.pad)
        state = self.encode(batch.histories, batch.users)[rows]
        # each distinct item's content is projected once (features can be thousands of dimensions wide)
        unique, inverse = torch.unique(torch.cat([positives, negatives]), return_inverse=True)
        items = self.item_rows(unique)[inverse]
        difference = (state * (items[: len(rows)] - items[len(rows) :])).sum(1)
        return -F.logsigmoid(difference).mean()
