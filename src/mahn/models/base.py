"""The interface every sequential recommender in mahn implements, and the training batch they share.

Histories are (B, L) int64 tensors, left-padded with the pad id `n_items` (ids 0..n_items-1 are
real items). A model turns a history into a user state with `encode`, represents every item with
`item_table`, and scores by one matrix product of the two, so full ranking and sampled ranking
share the same code. `loss` is the model's own training objective on a `Batch`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mahn.errors import DataError

# The history window: the trainer, the evaluator and position-aware models (SASRec, BERT4Rec) all read the
# last MAX_LEN items; the settings resolver gives them one value.
MAX_LEN = 50


@dataclass
class Batch:
    """Training examples: every position of `histories` predicts the item at the same position of `targets`.

    histories, targets, negatives: (B, L) int64, left-padded with n_items; a position is a training
    example where targets != n_items. users: (B,) int64 user ids (for models with user embeddings).
    """

    histories: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor
    users: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.histories, self.targets, self.negatives,
                                                                  self.users)))


def check_id_dropout(rate: float, count: float, model: str) -> None:
    """id_dropout (one rate for every item) and id_dropout_count (a rate that falls with the item's count) are two
    ways to set the same thing: at most one of them."""
    if not 0 <= rate < 1:
        raise DataError(f"{model}: id_dropout must be in [0, 1)", "--set id_dropout=...")
    if count < 0:
        raise DataError(f"{model}: id_dropout_count must be 0 (off) or positive", "--set id_dropout_count=...")
    if rate and count:
        raise DataError(f"{model}: set id_dropout or id_dropout_count, not both", "--set id_dropout_count=...")


class SequentialModel(nn.Module):
    """Base class: subclasses implement `encode`, `item_table` and `loss`."""

    Config: type  # the model's settings dataclass (`mahn models --settings` lists its fields)
    trainable: bool = True  # False: nothing to learn (popularity); the trainer scores it once and saves it
    # settings that make a model that reads content its own ID-only twin (e.g. {"ablate": "vt"}); None: the model
    # reads no content, or cannot do without it
    id_only: dict | None = None
    # the `full` budget of `mahn reproduce` and `mahn tune` search these two settings of the model's own (beside the
    # learning rate and weight decay: mahn.search), chosen on validation
    search: dict[str, list] = {}
    # one of the paper's sequential baselines: a candidate for MAHN's rival in the frequency-group figure
    paper_rival: bool = False

    @property
    def reads_content(self) -> bool:
        """Whether the model reads items' image or text features (and so can place an item it never trained on)."""
        return False

    # whether with_added gives a copy that reads added items in a history (MAHN, MGT), when the model reads content
    reads_added_in_history: bool = False

    @property
    def name(self) -> str:
        """The model's name in messages (an ablation names itself: MAHN-V-T)."""
        return type(self).__name__

    def require_content(self) -> None:
        """A DataError unless the model reads content: the one refusal of every place that needs new items placed."""
        if not self.reads_content:
            raise DataError(f"{self.name} ranks items by their ID only: new items need a model with image or text "
                            "features")
    n_items: int
    # bool (n_items,) on the model's device: items that must not be training candidates (the new items of a
    # new-item split, which arrive after training); set by the trainer, never saved
    excluded: torch.Tensor | None = None

    @classmethod
    def from_dataset(cls, config, dataset) -> SequentialModel:
        """Build from a prepared dataset; models that need more than n_items (features, users) override this."""
        return cls(config, dataset.n_items)

    @property
    def pad(self) -> int:
        return self.n_items

    @property
    def device(self) -> torch.device:
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, D) user state after the last real position."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """(n_items, D) item representations that user states are scored against."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of one batch."""
        raise NotImplementedError

    # --- learned ID vectors that may be left out (MAHN, MGT: an item_embedding and config.id_dropout) ---

    def grow_ids(self, m: int) -> None:
        """Make room for m new items (with_added): zero ID vectors, never trained, inserted before the pad row."""
        weight = self.item_embedding.weight.detach()
        self.item_embedding = nn.Embedding.from_pretrained(with_rows(weight, weight.new_zeros(m, weight.shape[1]),
                                                                     self.n_items), freeze=True)
        self.counts = with_rows(self.counts, self.counts.new_zeros(m, 1), self.n_items)
        self.trained = self.counts > 0  # kept beside the counts: every forward pass reads it

    def track_trained(self, counts: torch.Tensor | None) -> None:
        """Keep each item's training count (n_items; None: every item once) as self.counts and whether it was
        trained on as self.trained, (n_items + 1, 1) buffers with the pad row 0 / False, not saved (they are rebuilt
        from the dataset); self.dropped holds a training batch's dropped IDs."""
        counts = torch.ones(self.n_items) if counts is None else counts.float()
        self.register_buffer("counts", torch.cat([counts, counts.new_zeros(1)]).unsqueeze(1), persistent=False)
        self.register_buffer("trained", self.counts > 0, persistent=False)
        self.dropped: torch.Tensor | None = None

    def softmax_excluded(self) -> torch.Tensor | None:
        """Items the training softmax leaves out: the trainer's `excluded` and, for a model that reads content and
        whose config sets skip_untrained, every item never bought in training. Such an item is only ever a
        negative there; for a model that places items by their content, pushing it down teaches the content
        encoder that looking like an item nobody has bought yet is a reason to rank it low."""
        if not (getattr(self.config, "skip_untrained", False) and self.reads_content):
            return self.excluded
        untrained = ~self.trained[: self.n_items, 0]
        return untrained if self.excluded is None else self.excluded | untrained

    def id_kept(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., 1) bool: whether each of `ids` has its learned ID vector. Not for items never trained on (their
        content speaks alone) and, while training with id_dropout, not for this batch's dropped items: one draw per
        batch (reset self.dropped to None at the start of each loss), shared by the history and the candidates,
        so the model learns to rank items by content alone."""
        kept = self.trained[ids]
        rate, k = self.config.id_dropout, getattr(self.config, "id_dropout_count", 0.0)
        if self.training and (rate > 0 or k > 0):
            if self.dropped is None:  # with k: item i's chance is k / (k + its count), rare items' IDs drop most
                chance = k / (k + self.counts) if k > 0 else rate
                self.dropped = torch.rand(self.n_items + 1, 1, device=kept.device) < chance
            kept = kept & ~self.dropped[ids]
        return kept

    def id_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The learned ID vectors e of `ids`, zero where `id_kept` says they do not count."""
        return self.item_embedding(ids) * self.id_kept(ids)

    def content_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(m, D) item-table rows (the space of `item_table()`) of m new items known only by their raw content
        features: modality ("image", "text") -> float (m, dim), the dataset's feature rows for those items.
        Models that read no content cannot place a new item."""
        self.require_content()
        raise NotImplementedError(f"{self.name} reads content but does not place new items")

    def with_added(self, features: dict[str, torch.Tensor]) -> SequentialModel:
        """A copy of this model that also knows m new items (ids n_items..n_items+m-1) by their raw content
        `features` (as `content_vectors` takes them): it reads them in a history and scores them, and its pad id
        moves to n_items + m. Models that cannot read an item they were not trained on in a history refuse."""
        raise DataError(f"{self.name} cannot read items added after training in a history")

    def grown_copy(self, m: int) -> SequentialModel:
        """An eval-mode copy with m more items (ids n_items..n_items+m-1) whose ID vectors are zero; the caller
        inserts their content rows before the pad row (with_rows at this model's n_items)."""
        grown = copy.deepcopy(self).eval()
        grown.grow_ids(m)
        grown.n_items += m
        return grown

    def content_input(self, features: dict[str, torch.Tensor], modality: str, width: int | None) -> torch.Tensor:
        """features[modality] as float32 on the model's device, checked to be (m, width) (any width: None)."""
        if modality not in features:
            raise DataError(f"{type(self).__name__} needs '{modality}' features of the new items")
        x = torch.as_tensor(features[modality]).to(self.device, torch.float32)
        if x.ndim != 2 or (width is not None and x.shape[1] != width):
            raise DataError(f"{type(self).__name__}: new items' '{modality}' features have shape {tuple(x.shape)}, "
                            f"the model reads {width} values per item")
        return x

    def scores(self, histories: torch.Tensor, users: torch.Tensor | None = None,
               table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items) scores of every item; pass a precomputed `item_table()` to reuse it across batches."""
        table = self.item_table() if table is None else table
        return self.encode(histories, users) @ table.T


def with_rows(table: torch.Tensor, rows: torch.Tensor, n_items: int) -> torch.Tensor:
    """`table` (n_items + 1 rows, the pad row last) with `rows` inserted before the pad row."""
    return torch.cat([table[:n_items], rows.to(table.device, table.dtype), table[n_items:]])


def left_to_right_padded(ids: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real ids (a left-padded suffix) to the front. Returns (right-padded ids, lengths)."""
    lengths = (ids != pad).sum(1)
    width = ids.shape[1]
    index = torch.arange(width, device=ids.device).unsqueeze(0) + (width - lengths).unsqueeze(1)
    moved = ids.gather(1, index.clamp(max=width - 1))
    moved = moved.masked_fill(index >= width, pad)
    return moved, lengths


Features = list[tuple[torch.Tensor, torch.Tensor]]  # per modality: (float32 (items, dim), bool mask (items,))


def load_features(dataset, modalities: tuple[str, ...], model: str, hint: str) -> Features:
    """[(float32 features (items, dim), bool mask (items,))] per modality, read from the dataset's feature store.

    Rows of items that lack a modality are zeros (mask False). A missing modality is a DataError that
    names the model and ends with `hint` (how to do without it).
    """
    loaded = []
    for modality in modalities:
        if modality not in dataset.feature_modalities():
            raise DataError(f"{model} needs '{modality}' features: run `mahn features DIR` first, {hint}",
                            dataset.root)
        matrix, mask = dataset.features(modality)
        loaded.append((torch.from_numpy(np.array(matrix, dtype=np.float32)),
                       torch.from_numpy(np.array(mask, dtype=bool))))
    return loaded
