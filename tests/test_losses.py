"""The shared next-item losses, the optimizer options and the settings presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.models import build_model
from mahn.models.losses import LOSSES, BlockedSoftmaxCE, next_item_loss
from mahn.settings import PRESETS, resolve
from mahn.training import make_batch, make_optimizer, training_users
from synthetic import make_dataset

N_ITEMS, D = 12, 5


@pytest.fixture
def parts():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(N_ITEMS, D, generator=generator)
    states = torch.randn(7, D, generator=generator)
    targets = torch.tensor([0, 3, 3, 5, 11, 2, 7])
    negatives = torch.tensor([1, 4, 9, 6, 0, 8, 10])
    return table, states, targets, negatives


def loss(name, table, states, targets, negatives, n_sampled=4):
    return next_item_loss(name, states, targets, negatives=negatives, items=lambda ids: table[ids],
                          table=lambda: table, n_items=N_ITEMS, n_sampled=n_sampled)


def test_pairwise_losses_follow_their_formulas(parts):
    table, states, targets, negatives = parts
    positive = (states * table[targets]).sum(1)
    negative = (states * table[negatives]).sum(1)
    expected_bpr = -torch.log(torch.sigmoid(positive - negative)).mean()
    expected_bce = -(torch.log(torch.sigmoid(positive)) + torch.log(1 - torch.sigmoid(negative))).mean()
    torch.testing.assert_close(loss("bpr", *parts), expected_bpr)
    torch.testing.assert_close(loss("bce", *parts), expected_bce)


def test_full_softmax_is_cross_entropy_over_every_item(parts):
    table, states, targets, _ = parts
    logits = states @ table.T
    expected = (torch.logsumexp(logits, 1) - logits[torch.arange(len(targets)), targets]).mean()
    torch.testing.assert_close(loss("ce", *parts), expected)


def test_blocked_softmax_has_the_plain_softmaxs_value_and_gradients():
    """The softmax is computed a block of positions at a time with its own backward pass: value and gradients
    must be those of F.cross_entropy over the whole logits, with excluded items, in blocks that do not divide
    the positions; and gradcheck in float64."""
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(37, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    table = torch.randn(23, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    excluded = torch.zeros(23, dtype=torch.bool)
    excluded[[3, 5]] = True
    targets = torch.randint(0, 23, (37,), generator=generator)
    targets[excluded[targets]] = 4
    torch.autograd.gradcheck(lambda a, b: BlockedSoftmaxCE.apply(a, b, targets, excluded, 8), (states, table))
    for rows in (1, 8, 37, 100):
        blocked = BlockedSoftmaxCE.apply(states, table, targets, excluded, rows)
        plain = F.cross_entropy((states @ table.T).masked_fill(excluded, -torch.inf), targets)
        torch.testing.assert_close(blocked, plain)
        for mine, theirs in zip(torch.autograd.grad(blocked, (states, table)),
                                torch.autograd.grad(plain, (states, table)), strict=True):
            torch.testing.assert_close(mine, theirs)
    with torch.no_grad():  # no gradient wanted: the forward pass computes the value alone
        torch.testing.assert_close(BlockedSoftmaxCE.apply(states, table, targets, excluded, 8), plain)
    excluded_gradient = torch.autograd.grad(BlockedSoftmaxCE.apply(states, table, targets, excluded, 8), table)[0][3]
    assert excluded_gradient.abs().max() == 0  # an excluded item is never pushed


def test_sampled_softmax_shares_negatives_and_masks_accidental_hits(parts):
    table, states, targets, negatives = parts
    torch.manual_seed(3)
    value = loss("sampled-ce", *parts, n_sampled=6)
    torch.manual_seed(3)
    sampled = torch.randint(0, N_ITEMS, (6,))
    rows = []
    for state, target in zip(states, targets, strict=True):
        others = [state @ table[j] for j in sampled if j != target]  # a sampled copy of the target is no negative
        logits = torch.stack([state @ table[target], *others])
        rows.append(torch.logsumexp(logits, 0) - logits[0])
    torch.testing.assert_close(value, torch.stack(rows).mean())
    assert (sampled.unsqueeze(1) == targets.unsqueeze(0)).any(), "the seed should produce an accidental hit"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("d") / "small", users=12, items=24, length=6))


@pytest.mark.parametrize("model", ["mahn", "sasrec", "gru4rec", "caser"])
@pytest.mark.parametrize("name", LOSSES)
def test_models_train_with_every_shared_loss(small, model, name):
    dataset = small
    settings = resolve(("test", {"model": model, "loss": name, "negatives": 5, "dim": 8, "max_len": 6}))
    torch.manual_seed(0)
    net = build_model(model, settings.model_config, dataset)
    batch = make_batch(dataset, training_users(dataset), 6, np.random.default_rng(0))
    before, rank_before = net.loss(batch).item(), target_rank(net, batch)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):  # fit one batch: the loss must teach the model to rank each target above the other items
        optimizer.zero_grad()
        value = net.loss(batch)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        optimizer.step()
    assert net.loss(batch).item() < before and target_rank(net, batch) < 0.8 * rank_before, (before, rank_before)


def target_rank(net, batch) -> float:
    """Mean number of items scored above each row's last target, by the model's own full ranking."""
    net.eval()
    with torch.no_grad():
        scores = net.scores(batch.histories, batch.users)
    net.train()
    target = scores.gather(1, batch.targets[:, -1:])
    return float((scores > target).sum(1).float().mean())


def test_caser_softmax_scores_each_window_against_every_item_once_per_target(small):
    settings = resolve(("test", {"model": "caser", "loss": "ce", "dim": 8, "max_len": 6, "dropout": 0.0}))
    torch.manual_seed(0)
    net = build_model("caser", settings.model_config, small)
    batch = make_batch(small, training_users(small), 6, np.random.default_rng(0))
    inputs, targets, _, users = net.windows(batch)
    logits = net.state(inputs, users) @ net.item_table().T
    real = targets != net.pad
    expected = torch.stack([F.cross_entropy(logits[w : w + 1], targets[w, k : k + 1])
                            for w, k in real.nonzero().tolist()]).mean()
    assert real.sum() > len(inputs)  # windows with more than one target
    torch.testing.assert_close(net.loss(batch), expected)


def test_unknown_losses_are_refused():
    with pytest.raises(DataError, match="unknown loss 'hinge'"):
        resolve(("x", {"model": "mahn", "loss": "hinge"}))
    with pytest.raises(DataError, match="negatives must be at least 1"):
        resolve(("x", {"model": "sasrec", "loss": "sampled-ce", "negatives": 0}))


def test_optimizer_options_choose_the_class_and_the_decayed_parameters(small):
    dataset = small
    for optimizer, embedding_decay in (("adam", True), ("adamw", False)):
        settings = resolve(("x", {"model": "sasrec", "dim": 8, "optimizer": optimizer,
                                  "embedding_decay": embedding_decay, "weight_decay": 0.01}))
        model = build_model("sasrec", settings.model_config, dataset)
        adam, _ = make_optimizer(model, settings.train)
        assert type(adam) is (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)
        decayed = {id(p) for p in adam.param_groups[0]["params"]}
        assert adam.param_groups[0]["weight_decay"] == 0.01 and adam.param_groups[1]["weight_decay"] == 0.0
        assert (id(model.item_embedding.weight) in decayed) is embedding_decay
        assert id(model.blocks[0].ffn[0].weight) in decayed  # other matrices are always decayed
        assert all(id(p) not in decayed for p in model.parameters() if p.ndim < 2)  # never biases or norms


def test_the_paper_preset_pins_the_papers_settings_under_any_defaults():
    paper = resolve(("x", {"model": "mahn", "loss": None}), preset="paper")
    assert (paper.model_config.loss, paper.model_config.feature_norm) == ("bpr", "none")
    assert (paper.train.optimizer, paper.train.embedding_decay, paper.train.lr_gamma) == ("adam", True, 0.5)
    # the preset sits below everything the user gives
    assert resolve(("flags", {"model": "mahn", "loss": "ce"}), preset="paper").model_config.loss == "ce"
    # a preset entry for another model's setting does not leak
    assert not hasattr(resolve(("x", {"model": "gru4rec"}), preset="paper").model_config, "feature_norm")
    assert set(PRESETS["paper"]["mahn"]) <= {"loss", "feature_norm", "rec_weight", "negatives", "skip_untrained"}
    # the papers' schedule and early stopping, over any model's own trainer defaults (BERT4Rec waits 20 epochs)
    for model, loss in (("sasrec", "bce"), ("gru4rec", "bpr-max"), ("caser", "bce"), ("bert4rec", None)):
        ours, theirs = resolve(("x", {"model": model})), resolve(("x", {"model": model}), preset="paper")
        assert (theirs.train.lr_schedule, theirs.train.lr_step, theirs.train.patience, theirs.train.patience_steps,
                theirs.train.epochs) == ("step", 10, 5, 0, 100)
        assert ours.train.lr_schedule == ("plateau" if model == "bert4rec" else "constant")
        assert ours.train.patience_steps > 0 and theirs.train.lr_gamma == 0.5
        if loss is not None:
            assert (ours.model_config.loss, theirs.model_config.loss) == ("ce", loss)
    bert4rec = resolve(("x", {"model": "bert4rec"})).train
    assert (bert4rec.patience, bert4rec.lr_step, bert4rec.lr_gamma, bert4rec.plateau_steps) == (20, 5, 0.3, 250)
    assert resolve(("x", {"model": "bert4rec"})).train.epochs == 2000
    assert resolve(("x", {"model": "bert4rec", "epochs": 3})).train.epochs == 3  # a flag still wins
    with pytest.raises(DataError, match="unknown preset 'best'"):
        resolve(("x", {}), preset="best")
