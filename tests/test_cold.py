"""The new-item protocol: a derived dataset whose new items never occur in training or validation, its
`new_items` test metrics, and MAHN ranking new items through their content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mahn.cli import app
from mahn.data import Dataset
from mahn.data.cold import cold_split
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate, rank_users, render
from mahn.settings import resolve
from mahn.training import load_run, train
from synthetic import make_dataset


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cold")
    source = make_dataset(root / "source", users=150, items=30, length=8)
    cold_split(source, root / "cold", fraction=0.2, seed=1)
    return source, root / "cold"


def test_new_items_leave_training_and_validation_but_stay_as_test_targets(pair):
    source, cold = Dataset(pair[0]), Dataset(pair[1])
    new = cold.new_items()
    assert len(new) == 6 and len(set(new.tolist())) == 6  # 20% of 30 items
    assert cold.item_frequency()[new].sum() == 0
    assert not np.isin(cold.eval_set("valid").targets, new).any()
    # every evaluated source user whose last item is new and who keeps 2 other items keeps it as the target
    source_test = source.eval_set("test")
    expected = 0
    for user, target in zip(source_test.users, source_test.targets, strict=True):
        others = [i for i in source.history(user)[:-1] if i not in set(new.tolist())]
        history = cold.history(user)
        assert history[: len(others)].tolist() == others  # old items keep their order
        if target in new and len(others) >= 2:
            expected += 1
            assert history[-1] == target and len(history) == len(others) + 1
        else:
            assert len(history) == len(others) + (target not in new)
    assert cold.manifest["cold"]["new_item_targets"] == expected > 0
    assert int(np.isin(cold.eval_set("test").targets, new).sum()) == expected
    assert cold.item_metadata.equals(source.item_metadata)
    negatives = cold.negatives("test")
    for row, user in enumerate(cold.eval_set("test").users[:50]):
        assert not np.isin(negatives[user], cold.history(user)).any(), row


def test_new_item_metrics_are_the_mean_over_users_with_a_new_target(pair, tmp_path):
    cold = Dataset(pair[1])
    train(pair[1], tmp_path / "run", resolve(("t", {"dim": 8, "epochs": 1, "batch_size": 32, "max_len": 6,
                                                    "progress": False})))
    model, _, _ = load_run(tmp_path / "run", device="cpu")
    config = EvalConfig(split="test", max_len=6)
    per_user = rank_users(model, cold, config)
    result = evaluate(model, cold, config, per_user)
    rows = np.isin(cold.eval_set("test").targets, cold.new_items())
    assert result["new_items"]["users"] == rows.sum()
    for protocol in ("uni100", "full"):
        assert result["new_items"][protocol]["HR@10"] == pytest.approx(per_user[protocol]["HR@10"][rows].mean())
    assert "new_items" not in evaluate(model, cold, EvalConfig(split="valid", max_len=6))
    assert "new_items" not in evaluate(model, Dataset(pair[0]), EvalConfig(split="test", max_len=6))


def test_a_new_item_boost_is_added_to_every_new_items_score_under_both_protocols(pair, tmp_path):
    """Each user's full-ranking and uni100 NDCG@20 with the boost, computed here from the model's own scores, are
    the evaluator's; a boost past every gap puts all six new items first, so every new target is in the top 10."""
    cold = Dataset(pair[1])
    train(pair[1], tmp_path / "run", resolve(("t", {"dim": 8, "epochs": 2, "batch_size": 32, "max_len": 6,
                                                    "progress": False})))
    model, _, _ = load_run(tmp_path / "run", device="cpu")
    model.eval()
    evalset, new = cold.eval_set("test"), torch.from_numpy(cold.new_items().astype(np.int64))
    histories = [cold.items[cold.offsets[u] : end] for u, end in zip(evalset.users, evalset.input_ends, strict=True)]
    with torch.no_grad():
        windows = np.stack([np.r_[[cold.n_items] * (6 - min(len(h), 6)), h[-6:]] for h in histories])
        states = model.encode(torch.from_numpy(windows.astype(np.int64)), torch.from_numpy(evalset.users))
        plain = states @ model.item_table().T
    spread = float(plain.std())  # boosts on the scale of this model's scores, so each one moves some ranks
    per_boost = {}
    for boost in (0.0, 0.3 * spread, 1.0 * spread, 20.0):
        scores = plain.clone()
        scores[:, new] += boost
        expected = {"full": [], "uni100": []}  # NDCG@20 from each target's rank: 20 of the 30 items count
        for row, (history, target) in enumerate(zip(histories, evalset.targets, strict=True)):
            full = scores[row].clone()
            full[[i for i in history.tolist() if i != target]] = -torch.inf
            sampled = torch.from_numpy(cold.negatives("test")[evalset.users[row]].astype(np.int64))
            for protocol, above in (("full", (full > full[target]).sum()),
                                    ("uni100", (scores[row, sampled] > scores[row, target]).sum())):
                expected[protocol].append(float(above < 20) / np.log2(float(above) + 2))
        per_user = rank_users(model, cold, EvalConfig(split="test", max_len=6, new_item_boost=boost))
        alone = rank_users(model, cold, EvalConfig(split="test", max_len=6, new_item_boost=boost,
                                                   protocols=("uni100",)))
        for protocol in ("full", "uni100"):
            assert per_user[protocol]["NDCG@20"] == pytest.approx(np.array(expected[protocol])), (boost, protocol)
        assert alone["uni100"]["NDCG@20"] == pytest.approx(np.array(expected["uni100"])), boost  # 101 scored a user
        per_boost[boost] = evaluate(model, cold, EvalConfig(split="test", max_len=6, new_item_boost=boost))
    assert len({round(r["full"]["NDCG@20"], 6) for r in per_boost.values()}) == 4  # every boost moved the ranks
    assert per_boost[20.0]["new_items"]["full"]["HR@10"] == 1.0 > per_boost[0.0]["new_items"]["full"]["HR@10"]
    assert per_boost[20.0]["new_item_boost"] == 20.0 and "new_item_boost" not in per_boost[0.0]
    console = Console(record=True, width=200)
    render(per_boost[20.0], console)
    assert "test split, 150 users, every new item's score + 20" in " ".join(console.export_text().split())
    with pytest.raises(DataError, match="needs a dataset with new items"):
        rank_users(model, Dataset(pair[0]), EvalConfig(split="test", max_len=6, new_item_boost=1.0))
    with pytest.raises(DataError, match="new_item_boost must be between 0 and 20"):
        EvalConfig(new_item_boost=-0.5)


def test_mahn_ranks_new_items_by_their_content_and_the_id_only_model_cannot(pair, tmp_path):
    """The synthetic features reveal an item's cluster, and users stay in one cluster: MAHN places a new
    target among its cluster; MAHN-V-T has no trained vector for it (zeros) and ranks it near the bottom."""
    scores = {}
    for name, ablate in (("mahn", ""), ("vt", "vt")):
        settings = resolve(("t", {"dim": 16, "ablate": ablate, "epochs": 15, "lr": 0.01, "batch_size": 32,
                                  "max_len": 6, "weight_decay": 0.0, "patience": 15, "progress": False}))
        train(pair[1], tmp_path / name, settings)
        model, dataset, _ = load_run(tmp_path / name, device="cpu")
        scores[name] = evaluate(model, dataset, EvalConfig(split="test", max_len=6))["new_items"]["full"]["HR@10"]
    assert scores["mahn"] > 0.5 and scores["mahn"] > scores["vt"] + 0.3, scores


def test_bad_fractions_and_double_splits_are_refused(pair, tmp_path):
    with pytest.raises(DataError, match="fraction must be between 0 and 1"):
        cold_split(pair[0], tmp_path / "x", fraction=1.5)
    with pytest.raises(DataError, match="already has new items"):
        cold_split(pair[1], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    result = CliRunner().invoke(app, ["cold-split", str(pair[0]), "--out", str(tmp_path / "z"), "--fraction", "0"])
    assert isinstance(result.exception, DataError) and "--fraction" in str(result.exception)


def test_new_items_are_never_training_candidates(pair):
    """They arrive after training: no batch draws them as negatives and no softmax scores them, so a model
    cannot learn them as 'never bought'."""
    import torch
    import torch.nn.functional as F

    from mahn.models.losses import next_item_loss
    from mahn.training import make_batch, training_users

    cold = Dataset(pair[1])
    new = cold.new_items()
    assert np.array_equal(np.sort(np.concatenate([cold.training_candidates(), new])), np.arange(cold.n_items))
    assert Dataset(pair[0]).training_candidates() is None
    rng = np.random.default_rng(0)
    users = training_users(cold)
    drawn = np.concatenate([make_batch(cold, users, 6, rng).negatives.numpy().ravel() for _ in range(20)])
    assert not np.isin(drawn, new).any() and len(set(drawn.tolist()) - {cold.n_items}) > 15

    excluded = torch.zeros(cold.n_items, dtype=torch.bool)
    excluded[torch.from_numpy(new)] = True
    table = torch.randn(cold.n_items, 4)
    states = torch.randn(5, 4)
    targets = torch.tensor([i for i in range(cold.n_items) if not excluded[i]][:5])
    allowed = ~excluded
    by_hand = F.cross_entropy((states @ table[allowed].T), torch.searchsorted(allowed.nonzero().squeeze(1), targets))
    got = next_item_loss("ce", states, targets, negatives=targets, items=lambda i: table[i], table=lambda: table,
                         n_items=cold.n_items, n_sampled=8, excluded=excluded)
    assert torch.allclose(got, by_hand)
    torch.manual_seed(0)
    sampled_loss = next_item_loss("sampled-ce", states, targets, negatives=targets, items=lambda i: table[i],
                                  table=lambda: table, n_items=cold.n_items, n_sampled=2000, excluded=excluded)
    assert torch.isfinite(sampled_loss)
