"""`mahn reproduce`: every experiment runs, runs are shared and cached, a killed reproduce resumes."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import PROTOCOLS, SHOWN
from mahn.io import read_json, write_json
from mahn.reproduce import ReproduceConfig, Run, reproduce
from mahn.settings import resolve
from mahn.training import train
from mahn.training.loop import changed_settings
from synthetic import make_dataset


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("reproduce")
    data = make_dataset(root / "data", users=30, items=24, length=6)
    out = root / "report"
    config = ReproduceConfig(out=out, seeds=2, budget="quick", models=("mahn", "popularity", "gru4rec"), batch_size=64)
    results = reproduce(data, config, say=lambda *_: None)
    return data, out, results


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data", users=30, items=24, length=6)


def test_every_experiment_is_reported_with_plots_and_raw_numbers(report):
    _, out, results = report
    text = (out / "report.md").read_text()
    for heading in ("Tables 2-3", "Tables 4-5", "Fig. 3", "Fig. 4", "Fig. 5"):
        assert heading in text
    for figure in ("fig3_ablations.png", "fig4_dims.png", "fig5_groups.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results["compare"]) == {"MAHN", "MAHN ID-only", "Popularity", "GRU4Rec"}
    assert results["multimodal"] == ["MAHN"]
    # the ID-only twin is the same run as the ablation that drops both modalities, trained once
    twin_runs = [r["run"] for r in results["compare"]["MAHN ID-only"]]
    assert twin_runs == [r["run"] for r in results["ablations"]["MAHN-V-T"]]
    assert set(results["variants"]) == {"add-add", "add-cat", "cat-add", "cat-cat"}
    assert set(results["ablations"]) == {"MAHN", "MAHN-V", "MAHN-T", "MAHN-V-T"}
    assert list(results["dims"]) == ["10", "20", "30", "40", "50"]
    assert results["groups"]["rival"] == "GRU4Rec"  # popularity is not a sequential model
    assert len(results["groups"]["MAHN"]) == 10
    assert all(len(runs) == 2 for runs in results["variants"].values())
    assert results["compare"]["Popularity"][0]["budget"]["epochs"] == 0  # nothing to train
    assert read_json(out / "results.json")["paired_tests"] == results["paired_tests"]


def test_paired_tests_are_wilcoxon_on_per_user_ndcg_averaged_over_seeds(report):
    from scipy.stats import wilcoxon

    data, out, results = report
    users = int(Dataset(data).evaluated.sum())
    per_user = {}
    for label, runs in results["compare"].items():
        stored = [np.load(out / "runs" / "quick" / r["run"] / "test_ndcg10.npy") for r in runs]
        for run, values in zip(runs, stored, strict=True):  # the stored per-user values are the run's reported ones
            assert values.shape == (2, users)
            for row, protocol in enumerate(PROTOCOLS):
                assert values[row].mean() == pytest.approx(run["test"][protocol]["NDCG@10"])
        per_user[label] = np.mean(stored, axis=0)
    assert set(results["paired_tests"]) == {"MAHN ID-only", "Popularity", "GRU4Rec"}
    for rival in ("Popularity", "GRU4Rec"):
        for row, protocol in enumerate(PROTOCOLS):
            ours, theirs = per_user["MAHN"][row], per_user[rival][row]
            assert np.any(ours != theirs)  # a real test, not the no-difference shortcut
            expected = wilcoxon(ours, theirs).pvalue
            assert results["paired_tests"][rival][protocol] == pytest.approx(expected, rel=1e-9)


def test_best_vs_best_pairs_the_best_content_model_with_the_best_id_only_model_by_validation(report):
    _, _, results = report
    best = results["best_vs_best"]
    valid = {label: np.mean([r["valid"]["full"]["NDCG@10"] for r in runs])
             for label, runs in results["compare"].items()}
    assert best["multimodal"] == "MAHN" and best["chosen_by"] == "validation full NDCG@10"
    id_only = [label for label in results["compare"] if label != "MAHN"]
    assert best["id_only"] == max(id_only, key=valid.get)
    for protocol in PROTOCOLS:
        assert best[protocol] == results["paired_tests"][best["id_only"]][protocol]
        means = {side: np.mean([r["test"][protocol]["NDCG@10"] for r in results["compare"][best[side]]])
                 for side in ("multimodal", "id_only")}
        assert best["higher"][protocol] == max(means, key=means.get)


def report_table(text: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, label -> cells) of the Markdown table under `## heading` in report.md."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    return rows[0], {row[0]: row[1:] for row in rows[2:]}


def test_report_tables_show_mean_and_std_over_seeds_with_the_best_in_bold(report):
    _, out, _ = report
    text = (out / "report.md").read_text()
    saved = read_json(out / "results.json")
    tables = [("Comparison with the baselines (Tables 2-3), @10", saved["compare"], ("HR@10", "NDCG@10")),
              ("Comparison, @20", saved["compare"], ("HR@20", "NDCG@20")),
              ("Fusion variants (Tables 4-5)", saved["variants"], SHOWN),
              ("Ablations (Fig. 3)", saved["ablations"], SHOWN),
              ("Embedding size (Fig. 4)", {f"d = {d}": runs for d, runs in saved["dims"].items()}, SHOWN)]
    for heading, cells, metrics in tables:
        header, rows = report_table(text, heading)
        assert list(rows) == list(cells), heading
        columns = [(p, m) for p in PROTOCOLS for m in metrics]
        assert header[: 1 + len(columns)] == ["model"] + [f"{p} {m}" for p, m in columns]
        for index, (protocol, metric) in enumerate(columns):
            values = {label: [r["test"][protocol][metric] for r in runs] for label, runs in cells.items()}
            top = max(np.mean(v) for v in values.values())
            bold = 0
            for label, v in values.items():
                plain = f"{np.mean(v):.4f} ± {np.std(v):.4f}"  # population std over the seeds
                assert rows[label][index] in (plain, f"**{plain}**"), (heading, label, protocol, metric)
                assert rows[label][index].startswith("**") == (np.mean(v) == top), (heading, label, protocol, metric)
                bold += rows[label][index].startswith("**")
            assert bold >= 1
        assert all(len(runs) == 2 for runs in cells.values())  # two seeds: the std is a real spread

    # the comparison also gives MAHN's p-values against each row's model and the training budget
    header, rows = report_table(text, tables[0][0])
    assert header[5:] == ["p (uni100)", "p (full)", "epochs (best)", "train s"]
    for label, runs in saved["compare"].items():
        pvalues = saved["paired_tests"].get(label)
        assert rows[label][4:6] == ([f"{pvalues[p]:.2g}" for p in PROTOCOLS] if pvalues else ["–", "–"])
        epochs, best = (np.mean([r["budget"][k] for r in runs]) for k in ("epochs", "best_epoch"))
        assert rows[label][6:] == [f"{epochs:.0f} ({best:.0f})",
                                   f"{np.mean([r['budget']['train_seconds'] for r in runs]):.0f}"]


def test_shared_runs_are_trained_once(report):
    _, out, _ = report
    runs = sorted(p.name for p in (out / "runs" / "quick").iterdir())
    # MAHN defaults (cat-cat, d=50, no ablation) serve compare, variants, ablations and dims alike
    assert runs.count("mahn-seed0") == 1 and not any("variant=cat-cat" in r or "dim=50" in r for r in runs)
    assert len(runs) == 2 * (1 + 3 + 3 + 4 + 2)  # seeds x (mahn, 3 variants, 3 ablations, 4 dims, 2 baselines)


def test_a_killed_reproduce_resumes_without_retraining(report):
    data, out, results = report
    done = out / "runs" / "quick" / "mahn-dim=10-seed1"
    (done / "result.json").unlink()  # as if killed after training, before testing
    before = {p: os.stat(p).st_mtime_ns for p in (out / "runs" / "quick").glob("*/best.safetensors")}
    again = reproduce(data, ReproduceConfig(out=out, seeds=2, budget="quick", models=("mahn", "popularity", "gru4rec"),
                                            batch_size=64), say=lambda *_: None)
    after = {p: os.stat(p).st_mtime_ns for p in (out / "runs" / "quick").glob("*/best.safetensors")}
    assert before == after  # nothing was retrained
    assert again["dims"]["10"][1]["test"] == results["dims"]["10"][1]["test"]
    np.testing.assert_equal(again["paired_tests"], results["paired_tests"])


def test_a_run_trained_with_other_settings_is_neither_reused_nor_resumed(report, tmp_path):
    """A finished run whose config.json differs from what today's defaults give it (a default changed since)
    would put two configurations into one table: refused, naming each setting, and nothing written into it."""
    data, out, _ = report
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    run = copy / "runs" / "quick" / "gru4rec-seed1"
    record = read_json(run / "config.json")
    record["train"]["lr"] = 0.01  # as if trained when the default rate was 0.01
    del record["train"]["patience_steps"]  # trained before it existed: the code then waited for epochs only (0)
    del record["train"]["precision"]  # added without changing what runs learn: its field's default, no difference
    write_json(run / "config.json", record)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    config = ReproduceConfig(out=copy, seeds=2, budget="quick", models=("mahn", "popularity", "gru4rec"), batch_size=64)
    with pytest.raises(DataError, match=r"lr 0\.01 \(now 0\.001\), patience_steps 0 \(now 500\);") as refused:
        reproduce(data, config, say=lambda *_: None)
    assert refused.value.where == str(run / "config.json") and "precision" not in str(refused.value)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    # --move-changed keeps the old run, whole, under changed/ and trains the run again with today's settings
    moved = reproduce(data, replace(config, move_changed=True), say=lambda *_: None)
    kept = copy / "changed" / "quick" / "gru4rec-seed1.1"
    assert {p.relative_to(run): b for p, b in before.items() if p.is_relative_to(run)} == {
        p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()}
    assert read_json(run / "config.json")["train"]["lr"] == 0.001 and (run / "result.json").is_file()
    assert moved["compare"].keys() == read_json(out / "results.json")["compare"].keys()


def test_changed_settings_counts_only_what_changes_what_a_run_learns(tiny_data, tmp_path):
    stopped = tmp_path / "stopped"  # a rate of 0 never improves: patience 1 stops it after epoch 2 of 5
    trained = resolve(("test", {"model": "gru4rec", "epochs": 5, "patience": 1, "patience_steps": 0, "lr": 0.0,
                                "batch_size": 8, "dim": 8, "max_len": 6, "progress": False}))
    summary = train(tiny_data, stopped, trained)
    assert summary["stopped_early"] and summary["epochs"] == 2

    def changed(run: Path, **train_values) -> dict:
        return changed_settings(run, replace(trained, train=replace(trained.train, **train_values)))

    assert changed(stopped) == {} and changed(stopped, threads=7, device="cpu", progress=True) == {}
    assert changed(stopped, lr=0.5) == {"lr": (0.0, 0.5)}
    assert changed(stopped, lr_step=3, lr_gamma=0.1) == {}  # a constant rate has neither
    assert changed(stopped, lr_schedule="step", lr_step=3) == {"lr_schedule": ("constant", "step"), "lr_step": (10, 3)}
    assert changed(stopped, epochs=2) == {} and changed(stopped, epochs=50) == {}  # it never needed more than 2
    assert changed(stopped, epochs=1) == {"epochs": (5, 1)}
    unfinished = tmp_path / "unfinished"
    shutil.copytree(stopped, unfinished)
    (unfinished / "summary.json").unlink()
    assert changed(unfinished, epochs=3) == {} and changed(unfinished, epochs=2) == {"epochs": (5, 2)}
    assert changed_settings(stopped, resolve(("other", {"model": "sasrec"}))) == {"model": ("gru4rec", "sasrec")}
    assert changed_settings(tmp_path / "absent", trained) == {}
    counted = tmp_path / "popularity"  # nothing to learn: no trainer setting changes it
    popularity = resolve(("test", {"model": "popularity", "progress": False}))
    train(tiny_data, counted, popularity)
    assert changed_settings(counted, replace(popularity, train=replace(popularity.train, lr=0.5, epochs=3))) == {}


def test_settings_equal_to_defaults_share_a_key_and_bad_config_is_refused(tmp_path):
    assert Run("mahn", 0).with_settings(dim=50, variant="cat-cat").key == "mahn-seed0"
    assert Run("mahn", 3).with_settings(dim=20, lr=3e-4).key == "mahn-dim=20-lr=0.0003-seed3"
    with pytest.raises(DataError, match="unknown experiment"):
        ReproduceConfig(out=tmp_path, experiments=("tables",))
    with pytest.raises(DataError, match="budget"):
        ReproduceConfig(out=tmp_path, budget="huge")


def test_a_reports_finished_runs_kept_in_a_folder_finish_the_report_elsewhere_without_training(report, tmp_path):
    """scripts/report_runs.py: the four files of each finished run, saved and restored on another machine, are all
    `mahn reproduce` needs to write the same report without training anything."""
    import subprocess
    import sys

    data, out, results = report
    script = Path(__file__).parents[1] / "scripts" / "report_runs.py"
    kept, elsewhere = tmp_path / "kept", tmp_path / "elsewhere"

    def call(*args: Path) -> str:
        return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                              check=True).stdout

    runs = len(list(out.rglob("test_ndcg10.npy")))
    assert call("save", out, kept) == f"saved {runs} runs: {out} -> {kept}\n"
    assert call("save", out, kept) == f"saved 0 runs: {out} -> {kept}\n"  # unchanged runs are not written again
    assert not list(kept.rglob("*.safetensors"))
    assert call("restore", kept, elsewhere) == f"restored {runs} runs: {kept} -> {elsewhere}\n"
    said: list[str] = []
    again = reproduce(data, replace(ReproduceConfig(out=out, seeds=2, budget="quick", batch_size=64,
                                                    models=("mahn", "popularity", "gru4rec")), out=elsewhere),
                      say=lambda *line: said.append(" ".join(map(str, line))))
    assert not [line for line in said if line.startswith("training")]
    assert again["compare"] == results["compare"] and again["paired_tests"] == results["paired_tests"]


def test_paper_table_reads_a_folder_of_runs(tmp_path):
    """scripts/paper_table.py RUNS DATASET: one row per run, deltas against the paper, cut runs marked."""
    import subprocess
    import sys

    from mahn.api import load
    from mahn.io import write_json
    from mahn.settings import resolve
    from mahn.training import train

    data = make_dataset(tmp_path / "data", users=30, items=24, length=6, modalities=())
    runs = tmp_path / "runs"
    for name, model, epochs in (("sasrec", "sasrec", 2), ("popularity", "popularity", 1)):
        run = runs / f"phones-{name}"
        settings = {"model": model, "epochs": epochs, "batch_size": 16, "max_len": 6, "select": "uni100",
                    "progress": False} | ({"dim": 8} if model == "sasrec" else {})
        train(data, run, resolve(("test", settings)))
        write_json(runs / f"phones-{name}.test.json", load(run).evaluate("test"))
    (runs / "phones-sasrec" / "summary.json").unlink()  # as if the run had been cut by a time limit

    script = Path(__file__).parents[1] / "scripts" / "paper_table.py"
    table = subprocess.run([sys.executable, str(script), str(runs), "phones"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    sasrec = next(line for line in table if line.startswith("| sasrec |"))
    test = read_json(runs / "phones-sasrec.test.json")
    cells = [c.strip() for c in sasrec.strip("|").split("|")]
    assert cells[1] == f"{test['uni100']['HR@10']:.4f}" and cells[2] == "0.5659"  # the paper's SASRec HR@10
    assert cells[3] == f"{100 * (test['uni100']['HR@10'] / 0.5659 - 1):+.1f}%"
    assert cells[9].endswith(", cut") and cells[9].startswith("2 (")
    assert any(line.startswith("| popularity | ") and "| – |" in line for line in table)


def test_cold_experiment_scores_every_model_on_the_new_item_split(tmp_path):
    data = make_dataset(tmp_path / "data", users=60, items=24, length=6)
    out = tmp_path / "report"
    config = ReproduceConfig(out=out, seeds=1, budget="quick", experiments=("cold",), models=("mahn", "popularity"),
                             batch_size=64)
    results = reproduce(data, config, say=lambda *_: None)
    cold = Dataset(out / "cold-data")
    users = int(np.isin(cold.eval_set("test").targets, cold.new_items()).sum())
    # MAHN can learn to rank by content alone: a second row trained with ID dropout, as for items added later
    assert set(results["cold"]) == {"MAHN", "MAHN, id_dropout 0.5", "Popularity"} and users > 0
    assert results["cold"]["MAHN, id_dropout 0.5"][0]["settings"] == {"id_dropout": 0.5}
    for runs in results["cold"].values():
        assert runs[0]["test"]["new_items"]["users"] == users
    # popularity has never seen a new item: it ranks every one of them last under full ranking
    assert results["cold"]["Popularity"][0]["test"]["new_items"]["full"]["HR@10"] == 0.0
    text = (out / "report.md").read_text()
    assert f"{len(cold.new_items())} items never seen in training, {users} test users" in text
    row = next(line for line in text.splitlines() if line.startswith("| MAHN |"))
    test = results["cold"]["MAHN"][0]["test"]
    # every test user's NDCG@10 under each protocol, then the new targets' HR@10 and NDCG@10 under each
    expected = [test[p]["NDCG@10"] for p in ("uni100", "full")] + [
        test["new_items"][p][m] for p in ("uni100", "full") for m in ("HR@10", "NDCG@10")]
    assert [c.strip() for c in row.strip("|").split("|")][1:] == [f"{v:.4f} ± 0.0000" for v in expected]


def test_a_text_only_dataset_gets_the_ablations_its_features_allow(tmp_path):
    data = make_dataset(tmp_path / "data", users=40, items=20, length=6, modalities=("text",))
    config = ReproduceConfig(out=tmp_path / "report", seeds=1, budget="quick", experiments=("ablations", "variants"),
                             models=("mahn",), batch_size=64)
    results = reproduce(data, config, say=lambda *_: None)
    assert list(results["ablations"]) == ["MAHN-V", "MAHN-V-T"]
    assert [r["settings"] for r in results["ablations"]["MAHN-V-T"]] == [{"ablate": "vt"}]
    assert "variants need image and text features: skipped" in results["notes"]
    none = make_dataset(tmp_path / "ids", users=40, items=20, length=6, modalities=())
    config = ReproduceConfig(out=tmp_path / "ids-report", seeds=1, budget="quick", experiments=("ablations",),
                             models=("mahn",), batch_size=64)
    results = reproduce(none, config, say=lambda *_: None)
    assert "ablations" not in results and "ablations need image or text features: skipped" in results["notes"]


def test_images_that_cover_no_item_count_as_absent(tmp_path):
    """Office's images could not be fetched: its image features exist but cover no item. MAHN then runs as
    MAHN-V, as on a dataset without images, instead of keeping an image branch over zeros."""
    data = make_dataset(tmp_path / "data", users=40, items=20, length=6)
    manifest = read_json(data / "manifest.json")
    manifest["features"]["image"]["coverage"] = 0.0
    write_json(data / "manifest.json", manifest)
    np.save(data / "features" / "image.mask.npy", np.zeros(20, dtype=bool))
    config = ReproduceConfig(out=tmp_path / "report", seeds=1, budget="quick", experiments=("compare",),
                             models=("mahn",), batch_size=64)
    results = reproduce(data, config, say=lambda *_: None)
    assert results["compare"]["MAHN"][0]["settings"] == {"ablate": "v"}
    assert any("lacks image features (or they cover no item)" in note for note in results["notes"])


def test_the_full_budget_chooses_each_models_settings_with_the_same_number_of_tune_trials(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from dataclasses import replace

    from mahn.reproduce import BUDGETS

    monkeypatch.setitem(BUDGETS, "full", replace(BUDGETS["full"], epochs=2, patience=5, seeds=1, trials=3))
    data = make_dataset(tmp_path / "data", users=30, items=24, length=6, modalities=())
    out = tmp_path / "report"
    config = ReproduceConfig(out=out, budget="full", seeds=1, models=("gru4rec", "sasrec"), experiments=("compare",),
                             batch_size=64)
    results = reproduce(data, config, say=lambda *_: None)
    assert results["trials"] == {"mahn": 3, "gru4rec": 3, "sasrec": 3}  # MAHN: chosen for every experiment
    for model, label in (("gru4rec", "GRU4Rec"), ("sasrec", "SASRec")):
        tuned = read_json(out / "tunes" / "full" / model / "tune.json")
        assert tuned["trained"] == 3 and tuned["settings"]["epochs"] == 2 and tuned["settings"]["batch_size"] == 64
        assert {k: results["chosen"][model][k] for k in tuned["best"]["settings"]} == tuned["best"]["settings"]
        (run,) = results["compare"][label]
        # the chosen settings' seed 0 trains the same run the best trial did
        assert run["valid"]["full"]["NDCG@10"] == tuned["best"]["valid_full_ndcg10"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tunes").rglob("summary.json")}
    again = reproduce(data, replace(config), say=lambda *_: None)  # resumed: no trial trains again
    assert again["chosen"] == results["chosen"]
    assert {p: p.stat().st_mtime_ns for p in (out / "tunes").rglob("summary.json")} == stamps
    with pytest.raises(DataError, match="trials"):
        ReproduceConfig(out=tmp_path, budget="full", trials=0)
