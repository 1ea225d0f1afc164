"""`--track tensorboard|mlflow`: what the run folder records (every epoch, the best epoch, the test metrics) reaches
the tracker unchanged, a resumed run continues its tracked run without repeats, nothing is tracked without the
flag, and a missing extra is one line before anything trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from console import run_mahn
from mahn.io import read_json
from synthetic import make_dataset

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TRAIN = ["--model", "gru4rec", "--dim", "8", "--batch-size", "8", "--max-len", "6", "--patience", "100",
         "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("track") / "shop", users=30, items=20, length=6, modalities=())


def history(run: Path) -> list[dict]:
    return [orjson.loads(line) for line in (run / "metrics.jsonl").read_bytes().splitlines()]


def evaluated(monkeypatch, capsys, run: Path) -> dict:
    code, out, _ = run_mahn(monkeypatch, capsys, ["evaluate", str(run), "--json", "--device", "cpu"])
    assert code in (0, None)
    return orjson.loads(out)


def test_mlflow_gets_every_epoch_the_test_metrics_and_the_files_and_a_resume_continues_it(
        data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default store, ./mlflow.db, lands here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", str(run), "--epochs", "2",
                                                  *TRAIN, "--track", "mlflow"])
    assert code in (0, None), err
    # killed after epoch 2 in spirit: go on to epoch 4 in the same tracked run
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", str(run), "--epochs", "4",
                                                  *TRAIN, "--track", "mlflow", "--resume"])
    assert code in (0, None), err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("shop")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert tracked.data.params["model"] == "gru4rec" and tracked.data.params["batch_size"] == "8"
    epochs = history(run)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    for key, name in (("valid/full/NDCG_10", "NDCG@10"), ("valid/uni100/HR_20", "HR@20")):
        sent = client.get_metric_history(tracked.info.run_id, key)
        protocol = key.split("/")[1]
        assert sorted((m.step, m.value) for m in sent) == [(r["epoch"], r["valid"][protocol][name]) for r in epochs]
    loss = client.get_metric_history(tracked.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(r["epoch"], r["loss"]) for r in epochs]
    test = evaluated(monkeypatch, capsys, run)
    assert tracked.data.metrics["test/full/NDCG_10"] == pytest.approx(test["full"]["NDCG@10"], abs=1e-12)
    assert tracked.data.metrics["test/uni100/MRR_20"] == pytest.approx(test["uni100"]["MRR@20"], abs=1e-12)
    summary = read_json(run / "summary.json")
    assert tracked.data.metrics["best_epoch"] == summary["best_epoch"]
    assert tracked.data.metrics["best_valid/full/NDCG_10"] == summary["valid"]["full"]["NDCG@10"]
    files = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"config.json", "summary.json", "metrics.jsonl", "best.safetensors"} <= files
    assert not any(name.startswith("checkpoints") for name in files)
    # what a user types: the mlflow command lists the run
    listed = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "runs", "list", "--experiment-id",
                             experiment.experiment_id], capture_output=True, text=True, env={"MLFLOW_TRACKING_URI": uri,
                             "PATH": str(Path(sys.executable).parent)}, check=True)
    assert tracked.info.run_id in listed.stdout


def test_tensorboard_event_files_hold_every_epoch_and_the_test_metrics(data, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", str(run), "--epochs", "3",
                                                  *TRAIN, "--track", "tensorboard"])
    assert code in (0, None), err
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    epochs = history(run)
    for key, protocol, name in (("valid/full/NDCG_10", "full", "NDCG@10"), ("valid/uni100/HR_10", "uni100", "HR@10")):
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["epoch"], pytest.approx(r["valid"][protocol][name], rel=1e-6)) for r in epochs]
    # the final metrics sit beside the settings (TensorBoard's HPARAMS view), in the same folder
    test = evaluated(monkeypatch, capsys, run)
    (final,) = events.Scalars("final/test/full/NDCG_10")
    assert final.value == pytest.approx(test["full"]["NDCG@10"], rel=1e-6)
    # a log folder for many runs: URI/DATASET/RUN
    other = tmp_path / "other"
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", str(other), "--epochs", "1", *TRAIN,
                                                  "--track", "tensorboard", "--track-uri", str(tmp_path / "tb")])
    assert code in (0, None), err
    assert len(EventAccumulator(str(tmp_path / "tb" / "shop" / "other")).Reload().Scalars("loss")) == 1
    assert not (other / "tensorboard").exists()
    # trained again from scratch: a new tracked run beside the first, never mixed into its curves
    again = ["--epochs", "2", "--force", "--track", "tensorboard", "--track-uri", str(tmp_path / "tb")]
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", str(other), *TRAIN, *again])
    assert code in (0, None), err
    assert len(EventAccumulator(str(tmp_path / "tb" / "shop" / "other")).Reload().Scalars("loss")) == 1
    assert len(EventAccumulator(str(tmp_path / "tb" / "shop" / "other-2")).Reload().Scalars("loss")) == 2


def test_a_run_resumed_with_track_sends_the_epochs_it_trained_before(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "run", "--epochs", "2", *TRAIN])
    assert code in (0, None), err
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "run", "--epochs", "3", *TRAIN,
                                                  "--resume", "--track", "mlflow"])
    assert code in (0, None), err
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("shop").experiment_id])
    sent = client.get_metric_history(tracked.info.run_id, "valid/full/NDCG_10")
    assert sorted((m.step, m.value) for m in sent) == [(r["epoch"], r["valid"]["full"]["NDCG@10"])
                                                       for r in history(tmp_path / "run")]
    assert tracked.data.metrics["best_epoch"] == read_json(tmp_path / "run" / "summary.json")["best_epoch"]


def test_without_the_flag_nothing_is_tracked_and_a_missing_extra_is_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "plain", "--epochs", "1", *TRAIN])
    assert code in (0, None), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    assert not (tmp_path / "plain" / "tracking.json").exists() and not (tmp_path / "plain" / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if `mahn[track]` were not installed
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "refused", *TRAIN, "--track", "mlflow"])
    assert code == 2 and 'pip install "mahn[track]"' in err and len(err.strip().splitlines()) == 1
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "refused", *TRAIN, "--track", "wandb"])
    assert code == 2 and "tensorboard or mlflow" in err
    assert not (tmp_path / "refused").exists() and not (tmp_path / "mlflow.db").exists()


def test_tune_sends_every_trial_with_validation_only_and_reproduce_every_run_with_its_test(
        data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shared = ["--set", "epochs=2", "--set", "batch_size=8", "--set", "dim=8", "--set", "max_len=6",
              "--set", "threads=1"]
    code, _, err = run_mahn(monkeypatch, capsys, ["tune", str(data), "--model", "gru4rec", "--trials", "2", "--out",
                                                  "tuned", *shared, "--track", "mlflow"])
    assert code in (0, None), err
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("shop").experiment_id])
    summary = read_json(tmp_path / "tuned" / "tune.json")
    assert sorted(r.data.tags["trial"] for r in runs) == [str(t["number"]) for t in summary["trials"]]
    for tracked in runs:
        trial = summary["trials"][int(tracked.data.tags["trial"])]
        assert tracked.data.metrics["best_valid/full/NDCG_10"] == trial["valid_full_ndcg10"]
        assert tracked.data.params["lr"] == str(trial["settings"]["lr"])
        assert not any(key.startswith("test/") for key in tracked.data.metrics)
    code, _, err = run_mahn(monkeypatch, capsys, ["tune", str(data), "--model", "gru4rec", "--trials", "1", "--out",
                                                  "refused", "--set", "lr=0.01"])
    assert code == 2 and "lr is what the search varies" in err and not (tmp_path / "refused").exists()

    code, _, err = run_mahn(monkeypatch, capsys, ["reproduce", str(data), "--out", "report", "--budget", "quick",
                                                  "--models", "sasrec,popularity", "--experiments", "compare",
                                                  "--threads", "1", "--track", "tensorboard"])
    assert code in (0, None), err
    result = read_json(tmp_path / "report" / "runs" / "quick" / "sasrec-seed0" / "result.json")
    events = EventAccumulator(str(tmp_path / "report" / "tensorboard" / "shop" / "report" / "quick" / "sasrec-seed0")
                              ).Reload()
    assert len(events.Scalars("loss")) == result["budget"]["epochs"]
    (final,) = events.Scalars("final/test/full/NDCG_10")
    assert final.value == pytest.approx(result["test"]["full"]["NDCG@10"], rel=1e-6)


def test_a_tracker_that_fails_mid_run_costs_a_warning_not_the_run(data, tmp_path, monkeypatch, capsys):
    import mahn.tracking as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sent = []

    def flaky(self, values, step):
        sent.append(step)
        if len(sent) > 1:
            raise ConnectionError("tracking server gone\nmore lines")

    monkeypatch.setattr(tracking._MLflow, "metrics", flaky)
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "run", "--epochs", "3", *TRAIN,
                                                  "--track", "mlflow"])
    assert code in (0, None), err
    assert sent == [1, 2] and err.count("stopped sending: tracking server gone") == 1
    assert len(history(tmp_path / "run")) == 3 and (tmp_path / "run" / "summary.json").is_file()
    # a server that does not answer is refused before anything trains
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    code, _, err = run_mahn(monkeypatch, capsys, ["train", str(data), "--out", "refused", *TRAIN, "--track", "mlflow",
                                                  "--track-uri", "http://127.0.0.1:9"])
    assert code == 2 and "does not answer" in err and not (tmp_path / "refused").exists()
