"""`mahn tune`: the space is the `full` budget's grid, a killed or shorter tune resumes, pruning stops a trial,
best.toml trains the best trial's settings, bad input writes nothing."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

import mahn.tune as tune_module
from console import run_mahn
from mahn.errors import DataError
from mahn.io import read_json
from mahn.models import MODELS
from mahn.reproduce import BUDGETS
from mahn.search import search_space
from mahn.settings import read_toml, resolve
from synthetic import make_dataset

optuna = pytest.importorskip("optuna")
BASE = dict(batch_size=8, max_len=6, dim=8, epochs=2, patience=100, progress=False, threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tune") / "data", users=30, items=20, length=6, modalities=())


def tune(data: Path, out: Path, trials: int, base: dict = BASE, **kwargs) -> dict:
    return tune_module.tune(data, out, "gru4rec", trials, base=base, say=lambda line: None, **kwargs)


def test_the_full_budgets_grid_is_the_search_space():
    assert set(BUDGETS["full"].search) == {name for name, model in MODELS.items() if model.trainable}
    for name, model in MODELS.items():
        # the grid as runs.py wrote it by hand before the space had one declaration
        assert search_space(name) == {"lr": [1e-3, 3e-4], "weight_decay": [1e-4, 0.0], **model.search}
        if model.trainable:
            assert BUDGETS["full"].search[name] == search_space(name)
            assert len(list(itertools.product(*search_space(name).values()))) == 16
    grid = list(itertools.product(*search_space("sasrec").values()))
    assert len(grid) == 16 and (1e-3, 1e-4, 0.2, "bce") in grid and (3e-4, 0.0, 0.5, "ce") in grid


def test_a_shorter_tune_resumes_and_best_toml_trains_the_best_trial(data, tmp_path):
    out = tmp_path / "tuned"
    first = tune(data, out, 2)
    assert first["trained"] == 2
    first = {t["number"]: (out / "trials" / f"{t['number']:04d}" / "summary.json").stat().st_mtime_ns
             for t in first["trials"] if t["same_as"] is None}
    summary = tune(data, out, 4)
    assert summary["trained"] == 4 and [t["number"] for t in summary["trials"]] == list(range(len(summary["trials"])))
    assert {n: (out / "trials" / f"{n:04d}" / "summary.json").stat().st_mtime_ns for n in first} == first
    assert tune(data, out, 3)["trained"] == 4  # already done: nothing trains
    with pytest.raises(DataError, match="other data, settings or space"):
        tune(data, out, 5, seed=1)
    (tmp_path / "other" / "notes.txt").parent.mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine\n")
    with pytest.raises(DataError, match="not a tune folder"):
        tune(data, tmp_path / "other", 1)
    scores = [t["valid_full_ndcg10"] for t in summary["trials"]]
    best = summary["best"]
    assert best["valid_full_ndcg10"] == max(scores) == read_json(out / "tune.json")["best"]["valid_full_ndcg10"]
    assert all(t["state"] == "COMPLETE" and t["settings"].keys() == search_space("gru4rec").keys()
               for t in summary["trials"])
    # the file `mahn train --config` reads gives the settings that best trial trained with
    settings = resolve(("best.toml", read_toml(out / "best.toml")))
    trained = read_json(out / "trials" / f"{best['number']:04d}" / "config.json")
    assert settings.model == "gru4rec"
    assert settings.flat() == {"model": "gru4rec", **trained["model_config"], **trained["train"]}


def test_a_tune_resumed_a_trial_at_a_time_samples_what_one_call_samples(data, tmp_path):
    # a sampler seeded once a call drew its first random point again in every resumed call
    whole = tune(data, tmp_path / "whole", 4)
    for trials in range(1, 5):
        stepped = tune(data, tmp_path / "stepped", trials)
    settings = [[t["settings"] for t in summary["trials"]] for summary in (whole, stepped)]
    assert settings[0] == settings[1]
    assert len({tuple(point.values()) for point in settings[0]}) > 1


def test_a_study_whose_trials_trained_under_other_defaults_is_refused(data, tmp_path, monkeypatch):
    """A newer mahn whose defaults differ must not add trials to a study of the old ones (nor hand its best to
    `mahn reproduce --budget full`): refused, naming the setting; where and how loudly trials train may change."""
    import mahn.settings

    out = tmp_path / "tuned"
    tune(data, out, 1)
    assert tune(data, out, 1, base={**BASE, "threads": 2, "progress": True})["trained"] == 1
    monkeypatch.setitem(mahn.settings.MODEL_DEFAULTS, "gru4rec", {"patience_steps": 7})
    with pytest.raises(DataError, match="other settings than this mahn gives them \\(trial 0000: patience_steps 500 "
                       "there, 7 now\\)"):
        tune(data, out, 2)
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000"]


def test_a_trial_left_running_by_a_kill_is_tried_again(data, tmp_path, monkeypatch):
    class Killed(BaseException):  # like SIGKILL, nothing in tune() gets to handle it
        pass

    def killed(data, folder, *args, **kwargs):  # killed while writing its first checkpoint
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / ".last.safetensors.123.tmp").write_bytes(b"half")
        raise Killed

    out = tmp_path / "tuned"
    monkeypatch.setattr(tune_module, "train", killed)
    with pytest.raises(Killed):
        tune(data, out, 1)
    monkeypatch.undo()
    summary = tune(data, out, 1)
    assert [t["state"] for t in summary["trials"]] == ["FAIL", "COMPLETE"] and summary["trained"] == 1
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0001"]  # the cut trial's folder is gone
    assert summary["trials"][0]["settings"] == summary["trials"][1]["settings"]
    # and the kill shifts nothing after it: the finished trials are an unkilled tune's
    finished = [t["settings"] for t in tune(data, out, 3)["trials"] if t["state"] != "FAIL"]
    assert finished == [t["settings"] for t in tune(data, tmp_path / "unkilled", 3)["trials"]]


def test_settings_tried_before_are_not_trained_again_and_a_spent_space_ends_the_tune(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "search_space", lambda model: {"lr": [1e-3, 3e-4]})
    out = tmp_path / "tuned"
    summary = tune(data, out, 6)
    trained = [t for t in summary["trials"] if t["same_as"] is None]
    assert {t["settings"]["lr"] for t in trained} == {1e-3, 3e-4} and summary["stopped"].startswith("every")
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{t['number']:04d}" for t in trained]
    for t in summary["trials"]:
        if t["same_as"] is not None:
            assert t["valid_full_ndcg10"] == summary["trials"][t["same_as"]]["valid_full_ndcg10"]


def test_repeats_do_not_use_up_the_trials_and_a_run_of_them_gives_way_to_an_untried_point(data, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setattr(tune_module, "search_space", lambda model: {"lr": [1e-3, 3e-4], "weight_decay": [1e-4, 0.0]})
    summary = tune(data, tmp_path / "tuned", 4)
    trained = [t for t in summary["trials"] if t["same_as"] is None]
    assert any(t["same_as"] is not None for t in summary["trials"])  # TPE's random start repeats on 4 points
    assert summary["trained"] == len(trained) == 4 and len({json.dumps(t["settings"]) for t in trained}) == 4
    monkeypatch.setattr(tune_module, "REPEATS_AT_MOST", 1)
    rows = tune(data, tmp_path / "impatient", 4)["trials"]
    assert all(a["same_as"] is None or b["same_as"] is None for a, b in itertools.pairwise(rows))


def running(curve: list[float]):
    """A running trial that has reported `curve` (its best score so far after each epoch)."""
    return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                     intermediate_values=dict(enumerate(curve, start=1)))


def test_the_bound_stops_a_curve_that_cannot_reach_the_best_and_keeps_one_that_can():
    pruner = tune_module.RisingBoundPruner(epochs=100, min_epochs=10, window=10)
    study = optuna.create_study(direction="maximize")
    rising = [0.01 * epoch for epoch in range(1, 21)]  # 0.2 after 20 epochs, 0.01 an epoch: 1.0 by epoch 100
    flat = [0.3] * 20
    assert not pruner.prune(study, running(flat))  # nothing completed yet: nothing to compare with
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert pruner.prune(study, running(flat))
    assert not pruner.prune(study, running(rising))
    assert not pruner.prune(study, running(flat[:10]))  # fewer epochs than the window: no rate yet
    slowing = rising[:10] + [0.1 + 0.001 * epoch for epoch in range(1, 11)]  # 0.11 + 0.001 x 80 = 0.19 < 0.5
    assert pruner.prune(study, running(slowing))
    assert not tune_module.RisingBoundPruner(epochs=1000, min_epochs=10, window=10).prune(study, running(slowing))
    # not judged before it has trained as long as early stopping waits
    assert not tune_module.RisingBoundPruner(epochs=100, min_epochs=21, window=10).prune(study, running(flat))


def test_a_trial_below_the_pruners_bar_is_pruned(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "make_pruner", lambda *args: optuna.pruners.ThresholdPruner(lower=2.0))
    summary = tune(data, tmp_path / "tuned", 1)
    assert summary["trials"][0]["state"] == "PRUNED" and summary["trials"][0]["epochs"] == 1
    assert summary["trained"] == 1 and summary["best"]["number"] == 0


@pytest.mark.parametrize("args, fragment", [
    (["DATA", "--model", "nosuch", "--trials", "2"], "--model: unknown model 'nosuch'"),
    (["DATA", "--model", "sasrec", "--trials", "0"], "--trials: trials must be at least 1, got 0"),
    (["DATA", "--model", "popularity", "--trials", "2"], "--model: popularity learns nothing"),
    (["DATA", "--model", "sasrec", "--trials", "2", "--minutes", "0"], "--minutes: minutes must be positive"),
    (["DATA", "--model", "sasrec", "--trials", "2", "--pruner", "hyper"], "--pruner: unknown pruner 'hyper'"),
    (["missing", "--model", "sasrec", "--trials", "2"], "missing: not a prepared dataset"),
])
def test_bad_input_exits_2_and_writes_nothing(data, tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_mahn(monkeypatch, capsys, ["tune", *(str(data) if a == "DATA" else a for a in args),
                                                  "--out", "tuned"])
    err = err.strip()
    assert code == 2 and err.splitlines() == [err] and fragment in err, err
    assert not (tmp_path / "tuned").exists()


def test_without_optuna_one_line_says_how_to_install_it(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(Exception, match=r'needs optuna: pip install "mahn\[tune\]"'):
        tune(data, tmp_path / "tuned", 1)
    assert not (tmp_path / "tuned").exists()
