"""JRL: Joint Representation Learning (Y. Zhang, Q. Ai, X. Chen, W. B. Croft, CIKM 2017), "Joint
Representation Learning for Top-N Recommendation with Heterogeneous Information Sources".

Each information source k (here: item ID, image, text) has its own user vector u_k and item vector
i_k. The joint representations are their concatenations, u = [u_id, u_img, u_txt] and
i = [i_id, i_img, i_txt], and the ranking score is u·i + b_i. Each source also has its own loss
that ties its vectors to the source's content: for image (and, adapted, text) a decoder of two
fully connected ELU layers maps both u_k and i_k back to the raw feature of the purchased item,
‖dec_k(u_k) − f_k(i)‖²/2 + ‖dec_k(i_k) − f_k(i)‖²/2. The ranking loss is negative sampling:
−log σ(u·i + b_i) − Σ_j log σ(−(u·j + b_j)) over `negatives` items j drawn from the training
item frequency raised to 0.75.

Defaults from the paper and the authors' code (github.com/QingyaoAi/Joint-Representation-Learning-
for-Top-N-Recommendation): 300 dimensions per source, 5 negatives from the unigram^0.75
distribution, decoder hidden size (feature dim + dim) / 2, image loss weight 1, zero-initialised
user vectors, losses summed per example and averaged over the batch.

Adaptations (the paper's sources are review text, CNN image features and pre-trained BPR rating
factors; here they are the same image and text features MAHN reads, and the item ID):
- Text: the paper learns u_txt and i_txt with a paragraph-vector model over review words; there are
  no reviews here, so the text source is treated like the image source (decoded to the item's text
  feature). Reviews are per user-item pair, the text feature is per item: this is the closest fit.
- ID: the authors' code uses fixed BPR factors learned beforehand; here u_id and i_id are learned
  jointly, with no source loss of their own beyond the ranking terms below.
- Per-source ranking terms: besides the joint ranking loss, each source k gets the same negative
  sampling loss on u_k·i_k + b_k alone (weight `view_weight`), the paper's extendable variant, so
  each source learns to rank by itself (the issue asks for a ranking loss per source and joint);
  `view_weight=0` gives the authors' default joint-only structure.
- The decoder's output layer is linear (the authors' ends in ELU, which cannot go below −1 while our
  features, e.g. sentence embeddings, may be any real number). An item lacking a modality (mask
  False) contributes no decoding error for it.
- Negatives are drawn per positive (the authors' code shares one set of 5 across the batch).
- Item vectors start small and random instead of zero (with zero users and zero items the ID
  source would never receive a gradient). Optimiser: the shared trainer's Adam and L2, not SGD
  with gradient clipping.

The model is non-sequential: the history is unused except for its user id, and a user never seen
in training (or `users=None`) has zero user vectors, so it is ranked by the item biases alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel, load_features
from mahn.models.vbpr import parse_modalities, user_item_pairs


@dataclass
class JRLConfig:
    dim: int = 300  # per source
    modalities: str = "image+text"  # content sources besides the item ID
    negatives: int = 5
    sampling_power: float = 0.75  # negatives ~ training frequency ** power
    feature_weight: float = 1.0  # weight of the decoding losses (the authors' image_weight)
    view_weight: float = 1.0  # weight of each source's own ranking loss (0: joint only)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.negatives < 1:
            raise DataError("JRL: dim and negatives must be positive", "--dim / --set negatives=...")
        if self.feature_weight < 0 or self.view_weight < 0:
            raise DataError("JRL: loss weights must be non-negative", "--set feature_weight=... / view_weight=...")
        parse_modalities(self.modalities, "JRL")


class Decoder(nn.Module):
    """A source's content side: its fixed raw features and the decoder from its vectors back to them."""

    def __init__(self, features: torch.Tensor, mask: torch.Tensor, dim: int):
        super().__init__()
        self.register_buffer("raw", features, persistent=False)
        self.register_buffer("present", mask.float(), persistent=False)
        hidden = (features.shape[1] + dim) // 2
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ELU(), nn.Linear(hidden, features.shape[1]))

    def error(self, decoded: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """‖decoded − f(items)‖² / 2 per row (decoded = self.net(vectors)); zero where the item lacks it."""
        return 0.5 * (decoded - self.raw[items]).pow(2).sum(1) * self.present[items]


class JRL(SequentialModel):
    Config = JRLConfig
    search = {"dim": [300, 100], "negatives": [5, 10]}
    reads_content = True

    def __init__(self, config: JRLConfig, n_items: int, n_users: int,
                 features: list[tuple[torch.Tensor, torch.Tensor]],
                 sampling_weights: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.n_items, self.n_users = n_items, n_users
        for matrix, mask in features:
            if matrix.shape[0] != n_items or mask.shape != (n_items,):
                raise DataError(f"JRL needs one feature row per item: got {tuple(matrix.shape)} "
                                f"for {n_items} items")
        n_views = 1 + len(features)  # the ID source plus one per content modality
        self.users = nn.ModuleList(nn.Embedding(n_users, config.dim) for _ in range(n_views))
        self.items = nn.ModuleList(nn.Embedding(n_items, config.dim) for _ in range(n_views))
        for users, items in zip(self.users, self.items, strict=True):
            nn.init.zeros_(users.weight)
            nn.init.uniform_(items.weight, -0.5 / config.dim**0.5, 0.5 / config.dim**0.5)
        self.decoders = nn.ModuleList(Decoder(matrix, mask, config.dim) for matrix, mask in features)
        self.joint_bias = nn.Parameter(torch.zeros(n_items))
        self.view_bias = nn.ParameterList(nn.Parameter(torch.zeros(n_items)) for _ in range(n_views))
        weights = torch.ones(n_items) if sampling_weights is None else sampling_weights.float()
        if weights.shape != (n_items,) or (weights < 0).any() or weights.sum() <= 0:
            raise DataError("JRL: sampling weights must be non-negative, one per item, not all zero")
        self.register_buffer("sampling_weights", weights, persistent=False)

    @classmethod
    def from_dataset(cls, config: JRLConfig, dataset) -> JRL:
        features = load_features(dataset, parse_modalities(config.modalities, "JRL"), "JRL",
                                 "or choose other --set modalities=...")
        frequency = torch.from_numpy(dataset.item_frequency()).double()
        weights = (frequency**config.sampling_power).float()
        return cls(config, dataset.n_items, dataset.n_users, features, weights)

    def user_views(self, users: torch.Tensor | None, batch_size: int) -> list[torch.Tensor]:
        """Each source's (B, dim) user vectors; zeros for a missing or unknown user."""
        zeros = self.joint_bias.new_zeros(batch_size, self.config.dim)
        if users is None:
            return [zeros for _ in self.users]
        users = users.to(zeros.device)
        known = ((users >= 0) & (users < self.n_users)).unsqueeze(1)
        ids = users.clamp(0, self.n_users - 1)
        return [torch.where(known, table(ids), zeros) for table in self.users]

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, views * dim + 1) [u_id, u_img, u_txt, 1]; the trailing 1 picks up the item bias column."""
        views = self.user_views(users, len(histories))
        return torch.cat([*views, views[0].new_ones(len(histories), 1)], 1)

    def item_table(self) -> torch.Tensor:
        return torch.cat([*(table.weight for table in self.items), self.joint_bias.unsqueeze(1)], 1)

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise DataError("JRL learns every item's vectors from its ID (features only train them through a decoder), "
                        "so a new item has none: new items need MAHN, VBPR or MV-RNN")

    @staticmethod
    def negative_sampling_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Negative sampling: −log σ(positive) − Σ_j log σ(−negative_j), per row."""
        return -F.logsigmoid(positive) - F.logsigmoid(-negative).sum(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        rows, positives, _ = user_item_pairs(batch, self.pad)  # JRL samples its own negatives
        negatives = torch.multinomial(self.sampling_weights, len(positives) * self.config.negatives,
                                      replacement=True).view(len(positives), -1)
        row_views = self.user_views(batch.users, len(batch.users))
        user_views = [view[rows] for view in row_views]
        positive_scores, negative_scores, total = [], [], 0.0
        for user, items, bias in zip(user_views, self.items, self.view_bias, strict=True):
            positive = (user * items(positives)).sum(1)
            negative = torch.einsum("pd,pnd->pn", user, items(negatives))
            positive_scores.append(positive)
            negative_scores.append(negative)
            if self.config.view_weight > 0:
                total = total + self.config.view_weight * self.negative_sampling_loss(
                    positive + bias[positives], negative + bias[negatives])
        joint = self.negative_sampling_loss(sum(positive_scores) + self.joint_bias[positives],
                                               sum(negative_scores) + self.joint_bias[negatives])
        total = total + joint
        if self.config.feature_weight > 0:
            # decode each user and each distinct item once, then compare with every purchased item's feature
            unique, inverse = torch.unique(positives, return_inverse=True)
            for decoder, user, items in zip(self.decoders, row_views[1:], self.items[1:], strict=True):
                decoded_users = decoder.net(user)[rows]
                decoded_items = decoder.net(items(unique))[inverse]
                total = total + self.config.feature_weight * (decoder.error(decoded_users, positives)
                                                              + decoder.error(decoded_items, positives))
        return total.mean()
