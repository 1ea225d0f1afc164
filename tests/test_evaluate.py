"""The evaluator: fair ties, history masking, frequency groups, and the train/evaluate/recommend CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

from mahn.cli import app
from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import METRICS, EvalConfig, evaluate, expected_metrics, frequency_groups
from mahn.models.base import SequentialModel
from mahn.settings import resolve
from mahn.training import train
from synthetic import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


class FixedScores(SequentialModel):
    """Every user scores item i with item_scores[i]."""

    def __init__(self, item_scores: torch.Tensor):
        super().__init__()
        self.n_items = len(item_scores)
        self.item_scores = item_scores

    def encode(self, histories, users=None):
        return torch.ones(len(histories), 1)

    def item_table(self):
        return self.item_scores.float().unsqueeze(1)


def test_expected_metrics_by_hand():
    m = expected_metrics(np.array([0, 10, 3, 0]), np.array([0, 0, 0, 3]), 101)
    assert m["HR@10"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert m["HR@20"][1] == 1.0 and m["NDCG@20"][1] == pytest.approx(1 / np.log2(12))
    assert m["NDCG@10"][2] == pytest.approx(1 / np.log2(5)) and m["MRR@10"][2] == pytest.approx(0.25)
    # four tied at the top: rank uniform over 0..3
    assert m["NDCG@10"][3] == pytest.approx(np.mean(1 / np.log2(np.arange(4) + 2)))
    assert m["MRR@20"][3] == pytest.approx(np.mean(1 / np.arange(1, 5)))
    # tied across the cutoff: 8 higher, 4 tied -> ranks 8..12, two of five inside the top 10
    assert expected_metrics(np.array([8]), np.array([4]), 101)["HR@10"][0] == pytest.approx(2 / 5)


def test_constant_scores_get_exactly_random_guessing(tiny):
    dataset = Dataset(tiny)
    model = FixedScores(torch.zeros(dataset.n_items))
    result = evaluate(model, dataset, EvalConfig(split="test", keep_history=True))
    n = dataset.negatives("test").shape[1] + 1  # the target ties with every candidate
    assert result["uni100"]["HR@10"] == pytest.approx(min(10, n) / n)
    assert result["uni100"]["NDCG@20"] == pytest.approx(np.sum(1 / np.log2(np.arange(min(20, n)) + 2)) / n)
    assert result["full"]["HR@10"] == pytest.approx(10 / dataset.n_items)
    assert set(result["full"]) == set(METRICS)


def test_full_ranking_masks_the_history_but_not_the_target(tiny):
    dataset = Dataset(tiny)
    model = FixedScores(torch.arange(dataset.n_items, dtype=torch.float32))  # higher id, higher score
    evalset = dataset.eval_set("test")
    greater_kept, greater_masked = [], []
    for user, end, target in zip(evalset.users, evalset.input_ends, evalset.targets, strict=True):
        seen = set(dataset.items[dataset.offsets[user] : end].tolist())
        higher = range(target + 1, dataset.n_items)
        greater_kept.append(len(higher))
        greater_masked.append(sum(1 for i in higher if i not in seen))
    zeros = np.zeros(len(evalset.users), dtype=int)
    masked = evaluate(model, dataset, EvalConfig(keep_history=False, groups=False))
    kept = evaluate(model, dataset, EvalConfig(keep_history=True, groups=False))
    for result, greater in ((masked, greater_masked), (kept, greater_kept)):
        expected = expected_metrics(np.array(greater), zeros, dataset.n_items)
        assert result["full"]["NDCG@10"] == pytest.approx(expected["NDCG@10"].mean())
    assert masked["full"]["HR@10"] > kept["full"]["HR@10"]


def test_frequency_groups_partition_items_and_users(tiny):
    dataset = Dataset(tiny)
    groups = frequency_groups(dataset.item_frequency())
    assert len(groups) == 10 and sorted(np.concatenate(groups).tolist()) == list(range(dataset.n_items))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    frequency = dataset.item_frequency()
    assert all(frequency[a].max() <= frequency[b].min() for a, b in zip(groups, groups[1:], strict=False))
    result = evaluate(FixedScores(torch.zeros(dataset.n_items)), dataset)
    assert sum(g["users"] for g in result["groups"]) == result["users"]


def test_cli_train_evaluate_recommend(tiny, tmp_path):
    import mahn

    runner = CliRunner()
    run = tmp_path / "run"
    config = tmp_path / "settings.toml"
    config.write_text('dim = 8\nepochs = 2\nbatch_size = 8\nmax_len = 6\nvariant = "add-cat"\n')
    result = runner.invoke(app, ["train", str(tiny), "--out", str(run), "--config", str(config), "--epochs", "1",
                                 "--no-progress", "--threads", "1"])
    assert result.exit_code == 0, result.output
    record = orjson.loads((run / "config.json").read_bytes())
    assert record["train"]["epochs"] == 1 and record["model_config"]["variant"] == "add-cat"
    assert record["train"]["batch_size"] == 8
    summary = orjson.loads((run / "summary.json").read_bytes())
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    metrics = orjson.loads(result.output)
    assert metrics == mahn.load(run).evaluate("test")  # the CLI prints what the Python API computes
    assert metrics["split"] == "test" and metrics["users"] == Dataset(tiny).evaluated.sum()
    assert set(metrics) >= {"uni100", "full", "groups"} and len(metrics["groups"]) == 10
    for protocol in ("uni100", "full"):  # the groups split the users: their user-weighted means are the total
        for metric in METRICS:
            weighted = sum(g["users"] * g[protocol][metric] for g in metrics["groups"] if g["users"])
            assert weighted / metrics["users"] == pytest.approx(metrics[protocol][metric])
    # the saved run, reloaded by the CLI, scores the validation split exactly as training did at its best epoch
    valid = orjson.loads(runner.invoke(app, ["evaluate", str(run), "--split", "valid", "--json"]).output)
    for protocol in ("uni100", "full"):
        assert valid[protocol] == pytest.approx(summary["valid"][protocol], rel=1e-6)
    table = runner.invoke(app, ["evaluate", str(run), "--split", "valid"])
    assert table.exit_code == 0
    row = next(line for line in table.output.splitlines() if " NDCG@10 " in line)
    assert f"{valid['uni100']['NDCG@10']:.4f}" in row and f"{valid['full']['NDCG@10']:.4f}" in row
    keys = Dataset(tiny).item_metadata["key"].to_list()
    result = runner.invoke(app, ["recommend", str(run), "--history", f"{keys[0]} {keys[3]}", "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.strip().splitlines()]
    expected = mahn.load(run).recommend([keys[0], keys[3]], k=3)
    assert lines == [f"{rank}. {r.key}  {r.title}  ({r.score:.3f})" for rank, r in enumerate(expected, start=1)]
    assert keys[0] not in result.output and keys[3] not in result.output


def test_bad_settings_name_the_problem(tiny, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("dimension = 8\n")
    result = CliRunner().invoke(app, ["train", str(tiny), "--out", str(tmp_path / "r"), "--config", str(config)])
    assert isinstance(result.exception, DataError) and "dimension" in str(result.exception)
    assert "bad.toml" in str(result.exception)


def test_python_api_recommends_titles_and_rejects_unknown_keys(tiny, tmp_path):
    import mahn
    from mahn.training import load_run

    train(tiny, tmp_path / "run", resolve(("test", dict(dim=4, epochs=1, batch_size=8, max_len=4, progress=False))))
    recommender = mahn.load(tmp_path / "run")
    keys = recommender.keys
    recs = recommender.recommend([keys[1], keys[2]], k=4)
    assert len(recs) == 4
    # each item's own title (synthetic item n is "Item n of cluster n % 3")
    assert all(r.title == f"Item {int(r.key[1:])} of cluster {int(r.key[1:]) % 3}" for r in recs)
    assert not {keys[1], keys[2]} & {r.key for r in recs}
    # the model's scores after the history, highest first; no other unseen item scores above the fourth
    model, _, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        scores = model.scores(torch.tensor([[1, 2]], device=model.device))[0].cpu()
    ids = [keys.index(r.key) for r in recs]
    assert [r.score for r in recs] == pytest.approx(scores[ids].tolist())
    assert all(a.score >= b.score for a, b in zip(recs, recs[1:], strict=False))
    others = [i for i in range(len(keys)) if i not in {1, 2, *ids}]
    assert (scores[others] <= recs[-1].score).all()
    with pytest.raises(DataError, match="no-such-item"):
        recommender.recommend(["no-such-item"])


def test_a_score_budget_scores_fewer_users_at_a_time_with_the_same_results(tiny, tmp_path, monkeypatch):
    """Large catalogues are ranked a few users' rows at a time so the score block stays bounded; each user's row
    is still one whole product, so every rank and tie is unchanged."""
    import mahn.evaluation.ranking as ranking

    train(tiny, tmp_path / "run", resolve(("t", {"dim": 8, "epochs": 2, "batch_size": 16, "max_len": 6,
                                                 "progress": False})))
    from mahn.training import load_run

    model, dataset, _ = load_run(tmp_path / "run", device="cpu")
    whole = ranking.rank_users(model, dataset, EvalConfig(split="test", max_len=6))
    rows = []
    count = ranking.greater_and_equal
    monkeypatch.setattr(ranking, "greater_and_equal",
                        lambda s, t: (rows.append(len(s)) if s.shape[1] == dataset.n_items else None) or count(s, t))
    monkeypatch.setattr(ranking, "SCORE_BYTES", 4 * dataset.n_items * 3)  # three users' rows at a time
    small = ranking.rank_users(model, dataset, EvalConfig(split="test", max_len=6))
    assert max(rows) == 3 and sum(rows) == len(dataset.eval_set("test").users)
    for protocol in ("uni100", "full"):
        for metric, values in whole[protocol].items():
            np.testing.assert_array_equal(small[protocol][metric], values)


class TiedScores(SequentialModel):
    """Small-integer vectors, so that products are exact and many items tie with a user's target."""

    def __init__(self, n_items: int, dim: int = 3):
        super().__init__()
        self.n_items = n_items
        self.table = torch.randint(-2, 3, (n_items, dim), generator=torch.Generator().manual_seed(1)).float()

    def encode(self, histories, users=None):
        return torch.stack([histories[:, -1] % 3 - 1, histories[:, -2] % 2, torch.ones(len(histories))], 1).float()

    def item_table(self):
        return self.table


class HistoryFirst(SequentialModel):
    """Scores item i with 100 when it is in the user's history, else a fixed random base score: unless the history
    is masked, its items outrank every target."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items
        self.base = torch.rand(n_items, generator=torch.Generator().manual_seed(2))

    def encode(self, histories, users=None):
        seen = torch.zeros(len(histories), self.n_items + 1).scatter_(1, histories, 100.0)[:, : self.n_items]
        return torch.cat([seen, torch.ones(len(histories), 1)], 1)

    def item_table(self):
        return torch.cat([torch.eye(self.n_items), self.base.unsqueeze(1)], 1)


@pytest.mark.parametrize("keep_history", [False, True])
@pytest.mark.parametrize("boost", [0.0, 0.7])
@pytest.mark.parametrize("kind", ["trained", "ties", "history"])
def test_the_screen_leaves_every_users_metrics_as_ranking_the_whole_catalogue(tmp_path, monkeypatch, kind, boost,
                                                                               keep_history):
    """Full ranking first scores each user against a few popular items and gives 0 without ranking the rest to a
    user whose target at least 20 of them certainly outscore. Every user's metrics must be those of ranking the
    whole catalogue, exact ties (which never count as above) and history masking included, and the screen must
    both rule users out and leave some to rank."""
    import mahn.evaluation.ranking as ranking
    from mahn.data.cold import cold_split

    cold = tmp_path / "cold"
    cold_split(make_dataset(tmp_path / "data", users=150, items=120, length=30), cold, fraction=0.1, seed=0)
    dataset = Dataset(cold)
    if kind == "trained":
        train(cold, tmp_path / "run", resolve(("t", {"dim": 8, "epochs": 3, "batch_size": 16, "max_len": 6,
                                                      "progress": False})))
        from mahn.training import load_run

        model, dataset, _ = load_run(tmp_path / "run", device="cpu")
    else:
        model = (TiedScores if kind == "ties" else HistoryFirst)(dataset.n_items)
    config = EvalConfig(split="test", max_len=6 if kind == "trained" else 50, keep_history=keep_history,
                        new_item_boost=boost)
    monkeypatch.setattr(ranking, "MIN_SCREENED", 10**9)
    whole = ranking.rank_users(model, dataset, config)
    monkeypatch.setattr(ranking, "MIN_SCREENED", 0)
    monkeypatch.setattr(ranking, "SCREEN_ITEMS", 100)  # of 120 items: ties and histories fall in the screen
    ruled_out = []
    above = ranking.Screen.certainly_above

    def counted(self, *arguments):
        counts = above(self, *arguments)
        ruled_out.append(int((counts >= 20).sum()))
        return counts

    monkeypatch.setattr(ranking.Screen, "certainly_above", counted)
    screened = ranking.rank_users(model, dataset, config)
    users = len(dataset.eval_set("test").users)
    assert 0 < sum(ruled_out) < users or kind == "history" and keep_history  # kept, a history outranks all
    for protocol in ("uni100", "full"):
        for metric, values in whole[protocol].items():
            np.testing.assert_array_equal(screened[protocol][metric], values, err_msg=f"{protocol} {metric}")
    if kind == "ties":  # ties at the target's score, which the screen must not count as above it
        assert (whole["full"]["HR@20"] % 1 > 0).any()
    if kind == "history" and not keep_history:  # targets in the top 20 only once the history is masked
        assert whole["full"]["HR@20"].mean() > 0.1


@pytest.mark.parametrize("compared_bytes", [1, 4 * 37, 4 * 37 * 5, 1 << 30])
def test_counting_in_blocks_of_any_size_gives_every_rows_own_counts(monkeypatch, compared_bytes):
    """The counting step compares a few rows at a time (one row, a ragged last block, or the whole block);
    each row's count of scores above and equal to its target is the direct one, ties included."""
    import mahn.evaluation.ranking as ranking

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (23, 37), generator=generator).float()  # small integers: many ties
    targets = scores[:, 5:6].clone()
    monkeypatch.setattr(ranking, "COMPARED_BYTES", compared_bytes)
    greater, equal = ranking.greater_and_equal(scores, targets)
    assert greater.tolist() == (scores > targets).sum(1).tolist()
    assert equal.tolist() == (scores == targets).sum(1).tolist()


def test_one_protocol_alone_gives_that_protocols_numbers_of_the_full_evaluation(tiny, tmp_path):
    """uni100 alone scores only the target and its 100 negatives (never the catalogue) and must give each user
    the ranks the two-protocol pass gives; full alone likewise. The CLI takes --protocols and refuses others."""
    import mahn

    run = tmp_path / "run"
    train(tiny, run, resolve(("t", {"dim": 8, "epochs": 2, "batch_size": 16, "max_len": 6, "progress": False})))
    recommender = mahn.load(run)
    both = recommender.evaluate("test")
    for protocol in ("uni100", "full"):
        alone = recommender.evaluate("test", protocols=(protocol,))
        other = "full" if protocol == "uni100" else "uni100"
        assert other not in alone and all(other not in g for g in alone["groups"])
        assert alone[protocol] == pytest.approx(both[protocol], rel=1e-6)
        for mine, theirs in zip(alone["groups"], both["groups"], strict=True):
            assert mine[protocol] == pytest.approx(theirs[protocol], rel=1e-6, nan_ok=True)
    runner = CliRunner()
    table = runner.invoke(app, ["evaluate", str(run), "--protocols", "uni100"])
    assert table.exit_code == 0, table.output
    header = next(line for line in table.output.splitlines() if "uni100" in line)
    assert "full" not in header
    refused = runner.invoke(app, ["evaluate", str(run), "--protocols", "uni100,top5"])
    assert refused.exit_code != 0 and "top5" in str(refused.exception or refused.output)


class LengthAware(SequentialModel):
    """Scores item i with cos(i · n) for a history of n items: each history length ranks the items differently."""

    def __init__(self, n_items: int, pad: int):
        super().__init__()
        self.n_items, self.pad_id = n_items, pad

    def encode(self, histories, users=None):
        n = (histories != self.pad_id).sum(1, dtype=torch.float64)
        return torch.stack([torch.cos(n), -torch.sin(n)], 1).float()  # · (cos i, sin i) = cos(i + n)

    def item_table(self):
        i = torch.arange(self.n_items, dtype=torch.float64)
        return torch.stack([torch.cos(i), torch.sin(i)], 1).float()


def test_users_of_every_history_length_get_their_own_ranks_back(tmp_path):
    """Users are scored in order of history length (a batch pads only to its own longest history); each
    user's metrics must still be their own, in the evaluation set's order, whatever the batch size."""
    import polars as pl

    from mahn.data.prepare import PrepareConfig, prepare_frames
    from mahn.evaluation.ranking import rank_users

    rng = np.random.default_rng(0)
    rows = [(f"u{u:03d}", f"i{int(rng.integers(40)):03d}", t) for u in range(60)
            for t in range(int(rng.choice([3, 4, 9, 17, 30])))]
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64}, orient="row")
    prepare_frames(frame, None, tmp_path / "d", PrepareConfig(num_negatives=10, seed=0))
    dataset = Dataset(tmp_path / "d")
    model = LengthAware(dataset.n_items, dataset.n_items)
    evalset = dataset.eval_set("test")
    lengths = np.minimum(evalset.input_ends - dataset.offsets[evalset.users], 20)
    assert len(set(lengths.tolist())) >= 4
    table = model.item_table()
    greater = []
    for user, end, target, n in zip(evalset.users, evalset.input_ends, evalset.targets, lengths, strict=True):
        scores = (model.encode(torch.full((1, n), 0)) @ table.T)[0]  # n real items, none padded
        seen = set(dataset.items[dataset.offsets[user] : end].tolist()) - {int(target)}
        greater.append(sum(1 for i in range(dataset.n_items) if i not in seen and scores[i] > scores[target]))
    expected = expected_metrics(np.array(greater), np.zeros(len(greater), dtype=int), dataset.n_items)
    for batch_size in (7, 1024):
        got = rank_users(model, dataset, EvalConfig(split="test", max_len=20, batch_size=batch_size))
        np.testing.assert_allclose(got["full"]["NDCG@10"], expected["NDCG@10"], rtol=1e-6)
        np.testing.assert_allclose(got["full"]["MRR@20"], expected["MRR@20"], rtol=1e-6)
