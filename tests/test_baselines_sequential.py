"""GRU4Rec, Caser, SASRec, BERT4Rec: key equations on hand-made tensors, the shared interface, and
that each overfits a tiny dataset whose next item is predictable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.models.base import Batch
from mahn.models.bert4rec import BERT4Rec, BERT4RecConfig
from mahn.models.caser import Caser, CaserConfig
from mahn.models.gru4rec import GRU4Rec, GRU4RecConfig, bpr_max, top1_max
from mahn.models.sasrec import SASRec, SASRecConfig
from mahn.training import make_batch, training_users
from synthetic import make_dataset

N_ITEMS, N_USERS = 12, 5
PAD = N_ITEMS


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (conftest.py already runs torch on one thread)."""
    torch.manual_seed(0)


def small_models() -> dict[str, torch.nn.Module]:
    return {
        "gru4rec": GRU4Rec(GRU4RecConfig(dim=8), N_ITEMS),
        "caser": Caser(CaserConfig(dim=8, window=3, targets=2, horizontal=2, vertical=2), N_ITEMS, N_USERS),
        "sasrec": SASRec(SASRecConfig(dim=8, heads=2, max_len=10), N_ITEMS),
        "bert4rec": BERT4Rec(BERT4RecConfig(dim=8, max_len=10), N_ITEMS),
    }


def histories_batch() -> tuple[torch.Tensor, torch.Tensor]:
    histories = torch.tensor([[PAD, PAD, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [PAD, 0, 11, 3, 2, 1]])
    return histories, torch.tensor([0, 3, 4])


# --- key equations -------------------------------------------------------------------------------


def test_bpr_max_matches_hand_computation():
    target = torch.tensor([1.0])
    negatives = torch.tensor([[0.0, 2.0, 5.0]])
    valid = torch.tensor([[True, True, False]])  # the third candidate is the target itself: ignored
    s0, s1 = 1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)  # softmax of (0, 2)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -math.log(s0 * sigmoid(1.0) + s1 * sigmoid(-1.0)) + 0.5 * (s0 * 0.0 + s1 * 4.0)
    assert bpr_max(target, negatives, valid, bpreg=0.5).item() == pytest.approx(expected, rel=1e-6)
    expected_top1 = s0 * (sigmoid(-1.0) + sigmoid(0.0)) + s1 * (sigmoid(1.0) + sigmoid(4.0))
    assert top1_max(target, negatives, valid).item() == pytest.approx(expected_top1, rel=1e-6)


def test_gru4rec_scores_with_folded_output_bias():
    model = GRU4Rec(GRU4RecConfig(dim=4, dropout=0.0), N_ITEMS).eval()
    with torch.no_grad():
        model.output_bias.copy_(torch.arange(N_ITEMS, dtype=torch.float))
    histories, _ = histories_batch()
    _, final, _ = model.run(histories)
    expected = final @ model.output_embedding.weight.T + model.output_bias
    assert torch.allclose(model.scores(histories), expected, atol=1e-6)


def test_gru4rec_softmax_is_cross_entropy_of_every_position_over_every_item():
    """loss="ce" (RecBole's GRU4Rec loss): each real position's next item against all items' [W, b]."""
    model = GRU4Rec(GRU4RecConfig(dim=4, dropout=0.0, loss="ce"), N_ITEMS)
    with torch.no_grad():
        model.output_bias.copy_(torch.linspace(-1, 1, N_ITEMS))
    histories = torch.tensor([[PAD, PAD, 1, 2, 3], [5, 6, 7, 8, 9]])
    targets = torch.tensor([[PAD, PAD, 2, 3, 4], [6, 7, 8, 9, 10]])
    batch = Batch(histories=histories, targets=targets, negatives=torch.zeros_like(targets),
                  users=torch.tensor([0, 1]))
    terms = []
    for row, target_row in zip(histories, targets, strict=True):
        for t in range(histories.shape[1]):
            if target_row[t] != PAD:  # the state after reading the history up to t scores the next item
                scores = model.scores(row[: t + 1].unsqueeze(0))[0]
                terms.append(F.cross_entropy(scores.unsqueeze(0), target_row[t].unsqueeze(0)))
    torch.testing.assert_close(model.loss(batch), torch.stack(terms).mean())


def test_caser_windows_slide_over_history_and_last_target():
    model = Caser(CaserConfig(dim=4, window=2, targets=2), N_ITEMS, N_USERS)
    # sequence is 1 2 3 4 (histories 1 2 3, targets 2 3 4), user 3
    batch = Batch(torch.tensor([[PAD, 1, 2, 3]]), torch.tensor([[PAD, 2, 3, 4]]),
                  torch.tensor([[PAD, 7, 8, 9]]), torch.tensor([3]))
    inputs, targets, negatives, users = model.windows(batch)
    assert inputs.tolist() == [[PAD, 1], [1, 2], [2, 3], [3, 4]][:3]
    assert targets.tolist() == [[2, 3], [3, 4], [4, PAD]]
    assert negatives.tolist() == [[7, 8], [8, 9], [9, PAD]]
    assert users.tolist() == [3, 3, 3]


def test_caser_vertical_conv_is_weighted_sum_of_rows_and_horizontal_is_max_pooled():
    model = Caser(CaserConfig(dim=3, window=3, vertical=1, horizontal=1), N_ITEMS, N_USERS)
    image = torch.randn(1, 1, 3, 3)
    with torch.no_grad():
        model.vertical.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 1, 3, 1))
        model.vertical.bias.zero_()
        model.horizontal[0].weight.fill_(1.0)  # height 1: sum of each row
        model.horizontal[0].bias.zero_()
    rows = image[0, 0]
    assert torch.allclose(model.vertical(image).flatten(), rows[0] - 2 * rows[1] + 0.5 * rows[2], atol=1e-6)
    pooled = F.relu(model.horizontal[0](image).squeeze(3)).amax(2)
    assert pooled.item() == pytest.approx(F.relu(rows.sum(1)).max().item(), rel=1e-6)


def test_sasrec_is_causal_and_its_papers_loss_is_bce_with_one_negative():
    model = SASRec(SASRecConfig(dim=8, max_len=10, loss="bce"), N_ITEMS).eval()
    histories = torch.tensor([[PAD, 1, 2, 3, 4]])
    changed = torch.tensor([[PAD, 1, 2, 9, 9]])
    assert torch.allclose(model.hidden(histories)[0, :3], model.hidden(changed)[0, :3], atol=1e-6)
    assert not torch.allclose(model.hidden(histories)[0, 3:], model.hidden(changed)[0, 3:])

    batch = Batch(histories, torch.tensor([[PAD, 2, 3, 4, 5]]), torch.tensor([[PAD, 7, 8, 9, 10]]), torch.tensor([0]))
    states = model.hidden(histories)[0, 1:]
    table = model.item_embedding.weight
    positive = (states * table[[2, 3, 4, 5]]).sum(1)
    negative = (states * table[[7, 8, 9, 10]]).sum(1)
    expected = -(torch.log(torch.sigmoid(positive)) + torch.log(1 - torch.sigmoid(negative))).mean()
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bert4rec_cloze_masks_real_items_and_predicts_them_with_softmax():
    model = BERT4Rec(BERT4RecConfig(dim=8, max_len=10, mask_prob=0.5), N_ITEMS).eval()
    sequences = torch.tensor([[PAD, PAD, 1, 2, 3, 4]] * 300)
    masked, chosen = model.cloze(sequences)
    assert not chosen[:, :2].any() and chosen.any(1).all()
    assert (masked[chosen] == model.mask_id).all() and (masked[~chosen] == sequences[~chosen]).all()
    assert chosen[:, 2:].float().mean().item() == pytest.approx(0.5 + 0.5**5 / 4, abs=0.05)

    # with ρ = 1 every item is masked: the loss is the mean softmax cross-entropy at every position
    model.config.mask_prob = 1.0
    batch = Batch(torch.tensor([[PAD, 1, 2]]), torch.tensor([[PAD, 2, 3]]), torch.tensor([[PAD, 5, 6]]),
                  torch.tensor([0]))
    states = model.hidden(torch.tensor([[PAD, model.mask_id, model.mask_id, model.mask_id]]))[0, 1:]
    logits = model.output(states) @ model.item_table().T
    log_probs = logits - logits.logsumexp(1, keepdim=True)
    expected = -(log_probs[0, 1] + log_probs[1, 2] + log_probs[2, 3]) / 3
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    # at inference a [mask] is appended after the history and read out
    last = model.output(model.hidden(torch.tensor([[PAD, 1, 2, model.mask_id]]))[:, -1])
    assert torch.allclose(model.encode(torch.tensor([[PAD, 1, 2]])), last, atol=1e-6)


# --- interface -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gru4rec", "caser", "sasrec", "bert4rec"])
def test_interface_shapes_and_scores(name):
    model = small_models()[name].eval()
    histories, users = histories_batch()
    state, table = model.encode(histories, users), model.item_table()
    assert state.shape[0] == 3 and table.shape[0] == N_ITEMS and state.shape[1] == table.shape[1]
    assert torch.allclose(model.scores(histories, users), state @ table.T)
    batch = make_fake_batch(histories, users)
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name", ["gru4rec", "caser", "sasrec", "bert4rec"])
def test_padding_is_ignored(name):
    model = small_models()[name].eval()
    histories, users = histories_batch()
    before = model.encode(histories, users)
    wider = torch.cat([torch.full((3, 3), PAD), histories], dim=1)
    assert torch.allclose(model.encode(wider, users), before, atol=1e-5)
    with torch.no_grad():
        model.item_embedding.weight[PAD].normal_()
    # Caser reads a short history's pad slots as zero rows, like its authors; its histories here are >= L
    assert torch.allclose(model.encode(histories, users), before, atol=1e-5)


def make_fake_batch(histories: torch.Tensor, users: torch.Tensor) -> Batch:
    targets = torch.cat([histories[:, 1:], torch.tensor([[5], [11], [7]])], dim=1)
    targets = torch.where(histories == PAD, PAD, targets)
    negatives = torch.where(targets == PAD, PAD, (targets + 3) % N_ITEMS)
    return Batch(histories, targets, negatives, users)


def test_configs_reject_bad_values():
    with pytest.raises(DataError):
        GRU4RecConfig(loss="hinge")
    with pytest.raises(DataError):
        SASRecConfig(dim=10, heads=3)
    with pytest.raises(DataError):
        BERT4RecConfig(mask_prob=0.0)
    with pytest.raises(DataError):
        CaserConfig(window=0)


# --- overfitting a tiny dataset ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("data") / "tiny", users=30, items=24, modalities=()))


def share_of_last_items_in_top(model, dataset: Dataset, k: int) -> float:
    """Share of users whose last training item ranks in the top k given the training items before it."""
    from mahn.data import left_padded

    users = training_users(dataset)
    starts, ends = dataset.train_histories()
    histories = torch.from_numpy(left_padded(dataset.items, starts[users], ends[users] - 1, 50, dataset.n_items))
    model.eval()
    with torch.no_grad():
        top = model.scores(histories, torch.from_numpy(users)).topk(k, dim=1).indices.numpy()
    model.train()
    return (top == dataset.items[ends[users] - 1][:, None]).any(1).mean()


# name: (model, training steps, batch max_len, k of the top-k check), each with its paper's loss. SASRec and
# Caser learn from one uniform negative per target, which is never one of the user's own items (the trainer
# redraws those), so nothing pushes the next item above the rest of the user's cluster: their check is the top
# 3 of 24. With the softmax (the default loss) every item competes, and the next item must be first.
OVERFIT = {
    "gru4rec": (lambda d: GRU4Rec(GRU4RecConfig(dim=16, dropout=0.0, loss="bpr-max"), d.n_items), 60, 10, 1),
    "caser": (lambda d: Caser(CaserConfig(dim=32, window=3, targets=2, dropout=0.0, loss="bce"), d.n_items,
                              d.n_users), 120, 10, 3),
    "sasrec": (lambda d: SASRec(SASRecConfig(dim=32, dropout=0.0, max_len=10, loss="bce"), d.n_items), 150, 10, 3),
    "sasrec-ce": (lambda d: SASRec(SASRecConfig(dim=32, dropout=0.0, max_len=10), d.n_items), 150, 10, 1),
    "gru4rec-ce": (lambda d: GRU4Rec(GRU4RecConfig(dim=16, dropout=0.0), d.n_items), 60, 10, 1),
    "bert4rec": (lambda d: BERT4Rec(BERT4RecConfig(dim=16, dropout=0.0, max_len=10, mask_prob=0.4), d.n_items),
                 150, 10, 1),
}


@pytest.mark.parametrize("name", list(OVERFIT))
def test_overfits_tiny_dataset(name, tiny):
    build, steps, max_len, k = OVERFIT[name]
    model = build(tiny)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    users = training_users(tiny)
    losses = []
    for _ in range(steps):
        loss = model.loss(make_batch(tiny, users, max_len=max_len, rng=rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert share_of_last_items_in_top(model, tiny, k) > 0.85  # random: k/24
