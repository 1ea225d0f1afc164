"""VBPR, JRL, MV-RNN and popularity: their key equations on hand-made tensors, the shared interface,
and that each learns a tiny dataset (loss falls, training items reach the top of the ranking)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate, expected_metrics
from mahn.models.base import Batch
from mahn.models.jrl import JRL, JRLConfig
from mahn.models.mvrnn import MVRNN, MVRNNConfig
from mahn.models.popularity import Popularity, PopularityConfig
from mahn.models.vbpr import VBPR, VBPRConfig, user_item_pairs
from mahn.training import make_batch, training_users
from synthetic import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", users=30, items=24)


SMALL = {
    "vbpr": (VBPR, VBPRConfig(dim=6, visual_dim=4)),
    "jrl": (JRL, JRLConfig(dim=6)),
    "mvrnn": (MVRNN, MVRNNConfig(id_dim=6, code_dim=6)),
    "popularity": (Popularity, PopularityConfig()),
}


def build(name: str, dataset: Dataset, seed: int = 0):
    torch.manual_seed(seed)
    model_class, config = SMALL[name]
    return model_class.from_dataset(config, dataset)


def overfit(model, dataset: Dataset, steps: int, lr: float = 0.03) -> list[float]:
    """Full-batch Adam on every training user; returns the loss of each step."""
    rng = np.random.default_rng(0)
    users = training_users(dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(make_batch(dataset, users, max_len=10, rng=rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# --- key equations on hand-made tensors ---


def test_user_item_pairs_cover_the_whole_window():
    pad = 9
    batch = Batch(histories=torch.tensor([[pad, 0, 1], [3, 4, 5]]),
                  targets=torch.tensor([[pad, 1, 2], [4, 5, 6]]),
                  negatives=torch.tensor([[pad, 7, 8], [0, 1, 2]]), users=torch.tensor([4, 2]))
    rows, positives, negatives = user_item_pairs(batch, pad)
    assert positives.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert batch.users[rows].tolist() == [4, 4, 4, 2, 2, 2, 2]
    # the first item of each window is no target: it gets a fresh negative; the others keep their target's
    assert negatives[[1, 2, 4, 5, 6]].tolist() == [7, 8, 0, 1, 2]
    assert 0 <= negatives[0] < pad and 0 <= negatives[3] < pad


def test_vbpr_score_is_bias_plus_latent_plus_visual_preference():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    model = VBPR(VBPRConfig(dim=2, visual_dim=1), n_items=3, n_users=2, features=features)
    with torch.no_grad():
        model.user_factors.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))  # γ_u
        model.user_visual.weight.copy_(torch.tensor([[2.0], [-1.0]]))  # θ_u
        model.item_factors.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, -1.0]]))  # γ_i
        model.item_bias.copy_(torch.tensor([0.1, 0.2, 0.3]))  # β_i
        model.embed.weight.copy_(torch.tensor([[1.0, -1.0]]))  # E (1 x 2)
        model.visual_bias.weight.copy_(torch.tensor([[0.5, 0.25]]))  # β'
    scores = model.scores(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0, 1]))
    # user 1, item 2: β=0.3, γ_u·γ_i = 0.5*3 + (-1)(-1) = 2.5, E f = 1-1 = 0 so θ term 0, β'·f = 0.75
    assert scores[1, 2].item() == pytest.approx(0.3 + 2.5 + 0.0 + 0.75)
    # user 0, item 1: 0.2 + (0 + 0) + 2 * (0 - 2) + 0.5 = -3.3
    assert scores[0, 1].item() == pytest.approx(0.2 + 0.0 - 4.0 + 0.5)
    # a user never seen in training has zero factors: ranked by β_i + β'·f_i alone
    unknown = model.scores(torch.zeros(1, 1, dtype=torch.long), torch.tensor([7]))
    assert unknown[0].tolist() == pytest.approx([0.1 + 0.5, 0.2 + 0.5, 0.3 + 0.75])
    assert torch.equal(model.scores(torch.zeros(1, 1, dtype=torch.long), None), unknown)

    batch = Batch(torch.tensor([[0]]), torch.tensor([[2]]), torch.tensor([[1]]), torch.tensor([1]))
    torch.manual_seed(5)
    _, positives, negatives = user_item_pairs(batch, 3)
    torch.manual_seed(5)
    loss = model.loss(batch)
    expected = -F.logsigmoid(scores[1, positives] - scores[1, negatives]).mean()
    assert loss.item() == pytest.approx(expected.item())


def test_jrl_joint_score_and_loss_terms():
    features = [(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([True, True, False]))]
    sampling = torch.tensor([0.0, 0.0, 1.0])  # every negative is item 2
    model = JRL(JRLConfig(dim=2, negatives=2), n_items=3, n_users=1, features=features,
                sampling_weights=sampling)
    with torch.no_grad():
        model.users[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.users[1].weight.copy_(torch.tensor([[0.5, -1.0]]))
        model.items[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.items[1].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, -1.0]]))
        model.joint_bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.view_bias[0].copy_(torch.tensor([0.0, 0.5, 1.0]))
        model.view_bias[1].copy_(torch.tensor([-0.5, 0.0, 0.5]))
    scores = model.scores(torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))
    # item 0: u_id·i_id = 1, u_img·i_img = 1, bias 0.1
    assert scores[0].tolist() == pytest.approx([2.1, 2.0 - 0.0 + 0.2, 3.0 + 1.5 + 0.3])

    # one user, window [0, 1]: positives 0 and 1, each against two copies of item 2
    batch = Batch(torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[2]]), torch.tensor([0]))
    loss = model.loss(batch)

    def ns(positive: float, negative: float) -> float:
        return -F.logsigmoid(torch.tensor(positive)).item() - 2 * F.logsigmoid(torch.tensor(-negative)).item()

    user_img = torch.tensor([[0.5, -1.0]])
    decode = model.decoders[0].net
    total = 0.0
    for item, joint in ((0, 2.1), (1, 2.2)):
        total += ns(joint, 4.8)  # joint score of item 2 is 4.8
        total += ns([1.0, 2.0][item] + [0.0, 0.5][item], 3.0 + 1.0)  # ID view + its bias
        total += ns([1.0, 0.0][item] + [-0.5, 0.0][item], 1.5 + 0.5)  # image view + its bias
        target = features[0][0][item]
        total += 0.5 * (decode(user_img) - target).pow(2).sum().item()
        total += 0.5 * (decode(model.items[1].weight[item : item + 1]) - target).pow(2).sum().item()
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_mvrnn_item_fusion_gru_state_and_reconstruction():
    image = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([True, True, True]))
    text = (torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([True, False, True]))
    model = MVRNN(MVRNNConfig(id_dim=1, code_dim=1, rec_weight=0.5), n_items=3, features=[image, text])
    with torch.no_grad():
        model.item_embedding.weight[:3] = torch.tensor([[0.3], [-0.2], [0.1]])
        model.views[0].encoder.weight.copy_(torch.tensor([[1.0, -1.0]]))  # E
        model.views[1].encoder.weight.copy_(torch.tensor([[0.5]]))  # V
    table = model.item_table()
    # p_i = [x_i, E f^v_i + V f^t_i]: item 0 [0.3, 1 + 1], item 1 [-0.2, -1 + 0], item 2 [0.1, 0 + 0.5]
    assert torch.allclose(table, torch.tensor([[0.3, 2.0], [-0.2, -1.0], [0.1, 0.5]]))

    cell = torch.nn.GRUCell(2, 2)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in model.gru.state_dict().items()})
    state = torch.zeros(1, 2)
    for item in (2, 0):
        state = cell(table[item : item + 1], state)
    encoded = model.encode(torch.tensor([[3, 3, 2, 0]]))
    assert torch.allclose(encoded, state, atol=1e-6)

    # loss at the one position: BPR(h after item 2; pos 0, neg 1) + λ/2 (rec(0) + rec(1))
    batch = Batch(torch.tensor([[2]]), torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([0]))
    after_2 = cell(table[2:3], torch.zeros(1, 2))
    bpr = -F.logsigmoid((after_2 * (table[0] - table[1])).sum())
    # rec(0): code 2 -> image (2,-2) vs (1,0): (1+4)/2; text 1.0 vs 2: 1/1 -> 3.5
    # rec(1): code -1 -> image (-1,1) vs (0,1): 1/2; text is missing for item 1: no term -> 0.5
    expected = bpr + 0.5 * 0.5 * (3.5 + 0.5)
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_popularity_scores_training_frequency(tiny):
    dataset = Dataset(tiny)
    model = build("popularity", dataset)
    assert model.trainable is False and not list(model.parameters())
    frequency = dataset.item_frequency()
    scores = model.scores(torch.zeros(3, 1, dtype=torch.long), torch.arange(3))
    assert scores.shape == (3, dataset.n_items)
    assert (scores == torch.from_numpy(frequency).float()).all()
    result = evaluate(model, dataset, EvalConfig(split="valid", groups=False))
    # every metric from counting, per user, the candidates more (and as) frequent as the target
    evalset, negatives = dataset.eval_set("valid"), dataset.negatives("valid")
    counts = {"uni100": ([], []), "full": ([], [])}
    for user, end, target in zip(evalset.users, evalset.input_ends, evalset.targets, strict=True):
        seen = set(dataset.items[dataset.offsets[user] : end].tolist()) - {target}
        candidates = {"uni100": negatives[user],
                      "full": [i for i in range(dataset.n_items) if i != target and i not in seen]}
        for protocol, (greater, ties) in counts.items():
            others = frequency[candidates[protocol]]
            greater.append((others > frequency[target]).sum())
            ties.append((others == frequency[target]).sum())
    for protocol, size in (("uni100", negatives.shape[1] + 1), ("full", dataset.n_items)):
        expected = expected_metrics(*map(np.array, counts[protocol]), size)
        assert result[protocol] == pytest.approx({m: v.mean() for m, v in expected.items()})


# --- the shared interface ---


@pytest.mark.parametrize("name", list(SMALL))
def test_interface_shapes_scores_and_padding(tiny, name):
    dataset = Dataset(tiny)
    model = build(name, dataset).eval()
    pad = dataset.n_items
    histories = torch.tensor([[pad, pad, 0, 3], [5, 1, 2, 4]])
    users = torch.tensor([0, 1])
    state, table = model.encode(histories, users), model.item_table()
    assert state.ndim == 2 and state.shape[0] == 2
    assert table.shape == (dataset.n_items, state.shape[1])
    assert torch.equal(model.scores(histories, users), state @ table.T)
    # more left padding, or other content in the padding rows of embeddings and features: same output
    wider = torch.cat([torch.full((2, 3), pad), histories], 1)
    assert torch.allclose(model.encode(wider, users), state, atol=1e-6)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding) and module.num_embeddings == pad + 1:
                module.weight[pad] = 5.0
            if hasattr(module, "raw") and len(module.raw) == pad + 1:
                module.raw[pad] = 5.0
    assert torch.allclose(model.encode(histories, users), state, atol=1e-6)


@pytest.mark.parametrize("name", ["vbpr", "jrl", "mvrnn"])
def test_missing_modality_is_a_clear_error(tmp_path, name):
    root = make_dataset(tmp_path / "text-only", users=6, items=24, modalities=("text",))
    model_class, config = SMALL[name]
    with pytest.raises(DataError, match="'image' features"):
        model_class.from_dataset(config, Dataset(root))
    text_only = type(config)(**{**config.__dict__, "modalities": "text"})
    assert model_class.from_dataset(text_only, Dataset(root)).item_table().shape[0] == Dataset(root).n_items
    with pytest.raises(DataError, match="modalities"):
        type(config)(modalities="audio")


def test_mvrnn_absent_features_are_no_reconstruction_target(tmp_path):
    root = make_dataset(tmp_path / "gaps", users=6, items=24, missing={"text": [0, 3]})
    dataset = Dataset(root)
    model = build("mvrnn", dataset)
    absent = torch.from_numpy(np.flatnonzero(~dataset.features("text")[1]))
    assert len(absent) == 2
    code = torch.randn(len(absent), 6)
    assert (model.views[1].reconstruction_error(code, absent) == 0).all()
    # the image view is present for these items: its error is ‖f − Eᵀ m‖² / D
    image = torch.tensor(dataset.features("image")[0])[absent]
    decoded = code @ model.views[0].encoder.weight
    assert torch.allclose(model.views[0].reconstruction_error(code, absent), (decoded - image).pow(2).mean(1))


# --- each model learns the tiny dataset ---


def top_share_of_training_items(model, dataset: Dataset) -> float:
    """Mean over training users of the share of their n training items among their top-n scores."""
    users = training_users(dataset)
    starts, ends = dataset.train_histories()
    with torch.no_grad():
        scores = model.scores(torch.zeros(len(users), 1, dtype=torch.long), torch.from_numpy(users))
    shares = []
    for row, user in enumerate(users):
        train_items = set(dataset.items[starts[user] : ends[user]].tolist())
        top = set(scores[row].topk(len(train_items)).indices.tolist())
        shares.append(len(top & train_items) / len(train_items))
    return float(np.mean(shares))


@pytest.mark.parametrize("name,steps", [("vbpr", 150), ("jrl", 150)])
def test_non_sequential_models_overfit(tiny, name, steps):
    dataset = Dataset(tiny)
    model = build(name, dataset)
    before = top_share_of_training_items(model.eval(), dataset)
    losses = overfit(model.train(), dataset, steps)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    after = top_share_of_training_items(model, dataset)
    assert after > 0.9 and after > before + 0.3


def test_mvrnn_overfits_next_items(tiny):
    dataset = Dataset(tiny)
    model = build("mvrnn", dataset)
    losses = overfit(model.train(), dataset, 150)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    batch = make_batch(dataset, training_users(dataset), max_len=10, rng=np.random.default_rng(1))
    real = batch.targets != dataset.n_items
    hits = []
    with torch.no_grad():
        table = model.item_table()
        for width in range(1, batch.histories.shape[1] + 1):  # every prefix of every training sequence
            prefix = batch.histories[:, :width]
            rows = real[:, width - 1]
            scores = model.encode(prefix[rows]) @ table.T
            target = batch.targets[rows, width - 1]
            hits.append((scores.topk(3).indices == target.unsqueeze(1)).any(1).float())
    assert torch.cat(hits).mean() > 0.9
    result = evaluate(model, dataset, EvalConfig(split="valid", groups=False))
    assert result["full"]["HR@10"] > 0.8  # the next item of a cluster walk is predictable


@pytest.mark.parametrize("name", ["vbpr", "jrl", "mvrnn"])
def test_shared_trainer_runs_saves_and_reloads(tiny, tmp_path, monkeypatch, name):
    """The model trains under mahn.training.train and its saved run reloads to the same scores."""
    from mahn import models
    from mahn.settings import RunSettings, TrainConfig
    from mahn.training import load_run, train

    model_class, config = SMALL[name]
    monkeypatch.setitem(models.MODELS, name, model_class)
    summary = train(tiny, tmp_path / "run",
                    RunSettings(name, config, TrainConfig(epochs=2, batch_size=8, max_len=6, progress=False)))
    users = len(training_users(Dataset(tiny)))  # 30 users in batches of 8: 4 steps an epoch
    assert summary["epochs"] == 2 and summary["steps"] == 2 * math.ceil(users / 8)
    assert summary["sequences"] == 2 * users
    model, dataset, _ = load_run(tmp_path / "run")
    # the saved weights are those of the best epoch: they score validation as training recorded
    valid = evaluate(model, dataset, EvalConfig(split="valid", max_len=6, groups=False))
    for protocol in ("uni100", "full"):
        assert valid[protocol] == pytest.approx(summary["valid"][protocol], rel=1e-6)
    histories, users = torch.tensor([[0, 3]]), torch.tensor([1])
    again, _, _ = load_run(tmp_path / "run")
    assert torch.equal(model.scores(histories, users), again.scores(histories, users))
    result = evaluate(model, dataset, EvalConfig(split="test", groups=False))
    assert result["users"] == dataset.evaluated.sum()
