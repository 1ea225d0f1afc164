"""MGT (ours): its scoring equation on the model's own tensors, causality and padding, the modality
choice, new items placed by content alone, and that it learns a tiny dataset through the shared trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mahn.data import Dataset
from mahn.data.cold import cold_split
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate
from mahn.models import build_model, make_config
from mahn.models.base import Batch
from mahn.models.mgt import MGT, MGTConfig
from mahn.settings import resolve
from mahn.training import load_run, train
from synthetic import make_dataset


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (conftest.py already runs torch on one thread)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("data") / "tiny", users=30, items=24))


def small(dataset: Dataset, **values) -> MGT:
    return build_model("mgt", make_config("mgt", {"dim": 8, "heads": 2, "max_len": 10, **values}), dataset)


def test_score_is_the_state_against_the_id_vector_plus_the_gated_state_against_each_content_vector(tiny):
    model = small(tiny).eval()
    assert model.sources == ["image", "text"]
    with torch.no_grad():  # gates away from their starting value of 1
        model.gates.weight.normal_()
        model.gates.bias.normal_()
    histories = torch.tensor([[tiny.n_items, 1, 2, 3], [4, 5, 6, 7]])
    with torch.no_grad():
        h = model.hidden(histories)[:, -1]
        d = model.config.dim
        expected = h @ model.item_embedding.weight[: tiny.n_items].T
        for part, m in enumerate(("image", "text")):
            source = model.content[m]
            c = source.norm(source.raw[:-1] @ source.project.weight.T + source.project.bias) * source.present[:-1]
            rows = slice(part * d, (part + 1) * d)
            gate = 2 * torch.sigmoid(h @ model.gates.weight[rows].T + model.gates.bias[rows])
            expected += (gate * h) @ c.T
        assert torch.allclose(model.scores(histories), expected, atol=1e-5)
        items = torch.arange(tiny.n_items)
        assert torch.allclose(model.item_vectors(items), model.item_table())


def test_gates_start_at_one_and_without_content_mgt_is_sasrec(tiny):
    model = small(tiny).eval()
    histories = torch.tensor([[tiny.n_items, 1, 2, 3], [4, 5, 6, 7]])
    with torch.no_grad():
        h = model.hidden(histories)[:, -1]
        assert torch.equal(model.encode(histories), torch.cat([h, h, h], 1))  # every gate 2σ(0) = 1
    ids_only = small(tiny, modalities="none")
    sasrec = build_model("sasrec", make_config("sasrec", {"dim": 8, "heads": 2, "max_len": 10, "loss": "ce"}), tiny)
    assert ids_only.state_dict().keys() == sasrec.state_dict().keys()
    ids_only.load_state_dict(sasrec.state_dict())
    targets = torch.tensor([[tiny.n_items, 2, 3, 9], [5, 6, 7, 8]])
    batch = Batch(histories, targets, (targets + 5) % tiny.n_items, torch.tensor([0, 1]))
    ids_only.eval(), sasrec.eval()  # no dropout: the same draws are not needed
    torch.testing.assert_close(ids_only.loss(batch), sasrec.loss(batch))
    with torch.no_grad():
        torch.testing.assert_close(ids_only.scores(histories), sasrec.scores(histories))


def test_states_are_causal_and_ignore_padding(tiny):
    model = small(tiny).eval()
    pad = tiny.n_items
    histories = torch.tensor([[pad, pad, 1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        before = model.hidden(histories)
        changed = histories.clone()
        changed[:, -1] = torch.tensor([9, 10])
        after = model.hidden(changed)
        assert torch.allclose(after[:, :-1], before[:, :-1], atol=1e-5)
        assert not torch.allclose(after[:, -1], before[:, -1], atol=1e-3)
        wider = torch.cat([torch.full((2, 4), pad), histories], 1)
        assert torch.allclose(model.encode(wider), model.encode(histories), atol=1e-5)


def test_modalities_follow_the_dataset_or_the_setting(tiny, tmp_path):
    assert small(tiny, modalities="text").sources == ["text"]
    assert small(tiny, modalities="none").item_table().shape == (tiny.n_items, 8)
    assert small(tiny).item_table().shape == (tiny.n_items, 24)
    plain = Dataset(make_dataset(tmp_path / "plain", users=10, items=16, modalities=()))
    assert small(plain).sources == []  # auto: what the dataset has
    with pytest.raises(DataError, match="needs 'image' features"):
        small(plain, modalities="image")
    with pytest.raises(DataError, match="modalities must be"):
        MGTConfig(modalities="audio")
    with pytest.raises(DataError, match="id_dropout"):
        MGTConfig(id_dropout=1.0)
    with pytest.raises(DataError, match="not divisible"):
        MGTConfig(dim=10, heads=3)
    with pytest.raises(DataError, match="content_scale"):
        MGTConfig(content_scale=0.0)
    with pytest.raises(DataError, match="content_dropout"):
        MGTConfig(content_dropout=1.0)


def test_content_scale_sets_the_scale_content_vectors_start_at(tiny):
    default, scaled = small(tiny), small(tiny, content_scale=0.05)
    scaled.load_state_dict(default.state_dict() | {k: v * 0.05 for k, v in default.state_dict().items()
                                                   if k.endswith("norm.weight") and k.startswith("content")})
    ids = torch.arange(tiny.n_items)
    for m in default.sources:  # LayerNorm(W f + b) times the gain: the same directions, 1/20 of the length
        torch.testing.assert_close(scaled.content[m](ids), default.content[m](ids) * 0.05)
    fresh = small(tiny, content_scale=0.05)
    assert all(torch.all(fresh.content[m].norm.weight == 0.05) for m in fresh.sources)


def test_a_new_item_is_placed_by_its_content_alone(tiny):
    trained = torch.ones(tiny.n_items, dtype=torch.bool)
    trained[5] = False
    base = small(tiny)
    model = MGT(base.config, tiny.n_items, {m: (c.raw[:-1], c.present[:-1, 0]) for m, c in base.content.items()},
                trained).eval()
    with torch.no_grad():
        table = model.item_table()
        assert torch.all(table[5, :8] == 0) and torch.any(table[6, :8] != 0)
        features = {m: tiny.features(m)[0][[5, 6]] for m in ("image", "text")}
        rows = model.content_vectors(features)
        assert torch.allclose(rows[0], table[5], atol=1e-5)  # a new item: exactly its content
        assert torch.allclose(rows[1, 8:], table[6, 8:], atol=1e-5) and torch.all(rows[1, :8] == 0)
    with pytest.raises(DataError, match="needs 'text' features"):
        model.content_vectors({"image": features["image"]})
    with pytest.raises(DataError, match="ID only"):
        small(tiny, modalities="none").content_vectors(features)


def test_id_dropout_drops_one_set_of_items_per_batch_and_nothing_at_evaluation(tiny):
    model = small(tiny, id_dropout=0.5).train()
    ids = torch.arange(tiny.n_items)
    first = model.id_vectors(ids)
    again = model.id_vectors(ids)
    dropped = (first == 0).all(1)
    assert 0 < dropped.sum() < tiny.n_items and torch.equal(dropped, (again == 0).all(1))
    model.eval()
    assert not (model.id_vectors(ids) == 0).all(1).any()


def test_id_dropout_count_drops_rare_items_ids_more_often_than_frequent_ones(tiny):
    """With id_dropout_count K, item i's ID is dropped with chance K / (K + its training count): over many batches
    each item's drop frequency comes near that rate, and an untrained item (count 0) never has an ID to drop."""
    base = small(tiny)
    counts = torch.tensor([0.0] + [1.0] * 5 + [100.0] * (tiny.n_items - 6))
    config = MGTConfig(**{**base.config.__dict__, "id_dropout_count": 5.0})
    model = MGT(config, tiny.n_items, {m: (c.raw[:-1], c.present[:-1, 0]) for m, c in base.content.items()},
                counts).train()
    ids = torch.arange(tiny.n_items)
    torch.manual_seed(0)
    dropped = torch.zeros(tiny.n_items)
    for _ in range(2000):
        model.dropped = None  # a new batch
        dropped += (model.id_vectors(ids) == 0).all(1).float()
    share = dropped / 2000
    assert share[0] == 1  # never trained: no ID
    assert abs(share[1:6].mean() - 5 / 6) < 0.03 and abs(share[6:].mean() - 5 / 105) < 0.01
    with pytest.raises(DataError, match="not both"):
        MGTConfig(id_dropout=0.5, id_dropout_count=5.0)
    with pytest.raises(DataError, match="id_dropout_count"):
        MGTConfig(id_dropout_count=-1.0)


def test_content_dropout_drops_each_sources_vectors_for_one_batch_only(tiny):
    model = small(tiny, content_dropout=0.5).train()
    histories = torch.tensor([[tiny.n_items, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[tiny.n_items, 2, 3, 9], [5, 6, 7, 8]])
    seen = {}
    original = model.item_vectors

    def spy(ids):  # the candidates' vectors inside the loss: some content parts zero
        vectors = original(ids)
        seen["zero"] = (vectors[:, 8:16] == 0).all(1) | (vectors[:, 16:] == 0).all(1)
        return vectors

    model.item_vectors = spy
    model.config.loss = "sampled-ce"
    model.loss(Batch(histories, targets, (targets + 5) % tiny.n_items, torch.tensor([0, 1])))
    assert seen["zero"].any()
    assert all(source.dropped is None for source in model.content.values())  # nothing left for evaluation
    model.eval()
    assert not (model.item_table()[:, 8:] == 0).all(1).any()


def test_a_model_with_added_items_reads_them_in_a_history(tiny):
    model = small(tiny).eval()
    features = {m: torch.from_numpy(tiny.features(m)[0][[5, 6]]) for m in ("image", "text")}
    grown = model.with_added(features)
    n = tiny.n_items
    assert grown.n_items == n + 2 and model.n_items == n and grown.pad == n + 2
    with torch.no_grad():
        trained_only = torch.tensor([[n, 1, 2, 3]])
        assert torch.equal(grown.encode(torch.where(trained_only == n, n + 2, trained_only)),
                           model.encode(trained_only))
        torch.testing.assert_close(grown.item_table()[n:], model.content_vectors(features))
        torch.testing.assert_close(grown.item_table()[:n], model.item_table())
        with_new = grown.encode(torch.tensor([[1, 2, 3, n]]))  # the added copy of item 5, read by its content
        assert not torch.allclose(with_new, grown.encode(torch.tensor([[n + 2, 1, 2, 3]])), atol=1e-4)
        only_new = grown.encode(torch.tensor([[n, n + 1]]))
        assert torch.isfinite(only_new).all()


def test_every_loss_trains_through_the_model(tiny):
    histories = torch.tensor([[tiny.n_items, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[tiny.n_items, 2, 3, 9], [5, 6, 7, 8]])
    negatives = torch.where(targets == tiny.n_items, tiny.n_items, (targets + 5) % tiny.n_items)
    for loss in ("ce", "sampled-ce", "bce", "bpr"):
        model = small(tiny, loss=loss)
        value = model.loss(Batch(histories, targets, negatives, torch.tensor([0, 1])))
        value.backward()
        assert torch.isfinite(value) and model.content["image"].project.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def cold(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cold")
    cold_split(make_dataset(root / "source", users=150, items=30, length=8), root / "cold", fraction=0.2, seed=1)
    return root / "cold"


def test_trains_saves_reloads_and_ranks_new_items_by_content(cold, tmp_path):
    """The synthetic features reveal an item's cluster and users stay in one cluster: trained with ID
    dropout, MGT puts new targets in the top 10 of 30 for most users; without content it cannot."""
    results = {}
    for name, modalities in (("mgt", "auto"), ("ids", "none")):
        settings = resolve(("t", {"model": "mgt", "dim": 16, "modalities": modalities, "id_dropout": 0.5,
                                  "epochs": 15, "lr": 0.01, "batch_size": 32, "max_len": 6, "weight_decay": 0.0,
                                  "patience": 15, "progress": False}))
        train(cold, tmp_path / name, settings)
        model, dataset, _ = load_run(tmp_path / name, device="cpu")
        assert isinstance(model, MGT) and not model.training
        results[name] = evaluate(model, dataset, EvalConfig(split="test", max_len=6))
    new = {name: result["new_items"]["full"]["HR@10"] for name, result in results.items()}
    assert new["mgt"] > 0.9 and new["mgt"] > new["ids"] + 0.2, new
    assert results["mgt"]["full"]["HR@10"] > 0.5  # random: 10/30
    assert np.isfinite(results["ids"]["full"]["NDCG@10"])


def test_a_fixed_content_projection_never_trains_and_still_places_new_items(tiny):
    model = small(tiny, content_projection="fixed")
    before = {m: model.content[m].project.weight.detach().clone() for m in model.sources}
    assert all(torch.all(model.content[m].project.bias == 0) for m in model.sources)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    histories = torch.tensor([[tiny.n_items, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[tiny.n_items, 2, 3, 9], [5, 6, 7, 8]])
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(Batch(histories, targets, targets, torch.tensor([0, 1]))).backward()
        optimizer.step()
    for m in model.sources:  # the projection stays the random one; the norm's gain is what content learns
        assert torch.equal(model.content[m].project.weight, before[m])
        assert not torch.all(model.content[m].norm.weight == model.config.content_scale)
    features = {m: tiny.features(m)[0][[5]] for m in model.sources}
    with torch.no_grad():
        expected = torch.cat([model.content[m].vectors(torch.from_numpy(np.asarray(features[m])))
                              for m in model.sources], -1)
        torch.testing.assert_close(model.eval().content_vectors(features)[0, 8:], expected[0])
    with pytest.raises(DataError, match="content_projection"):
        small(tiny, content_projection="frozen")
