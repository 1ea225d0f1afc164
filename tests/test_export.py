"""`mahn export`: ONNX Runtime on the exported files gives mahn.load's scores and top-10 for every exported model,
the snippets of docs/export.md recommend what mahn does, items added after training are exported, and bad input
writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mahn
from console import run_mahn
from mahn.errors import DataError
from mahn.export import export_onnx
from mahn.io import read_json
from mahn.settings import resolve
from mahn.training import train
from synthetic import make_coded_dataset, make_dataset

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODELS = ("mahn", "mgt", "sasrec", "bert4rec", "gru4rec", "caser")
DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"


def settings(model: str) -> object:
    return resolve(("test", {"model": model, "dim": 8, "epochs": 1, "batch_size": 32, "max_len": 6, "seed": 0,
                             "progress": False, "threads": 1}))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Synthetic data (image and text features), a run of each model and its export."""
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data")
    for name in MODELS:
        train(data, root / "runs" / name, settings(name))
        export_onnx(root / "runs" / name, root / "exported" / name)
    return root


def user_histories(recommender) -> tuple[list[list[str]], np.ndarray]:
    """Every test user's history (up to 1,000), cut to lengths 1, 2, ... (longer than max_len too), and the users."""
    dataset = recommender.dataset
    split = dataset.eval_set("test")
    histories = []
    for r, (user, end) in enumerate(zip(split.users[:1000], split.input_ends[:1000], strict=True)):
        ids = dataset.items[dataset.offsets[user] : end]
        histories.append([recommender.keys[i] for i in ids[-(1 + r % len(ids)) :]])
    return histories, split.users[: len(histories)]


class Exported:
    """An export folder read as a deployment reads it: export.json, items.npy and an ONNX Runtime session."""

    def __init__(self, folder: Path):
        self.meta = read_json(folder / "export.json")
        self.items = np.load(folder / "items.npy")
        self.session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.row = {key: i for i, key in enumerate(self.meta["keys"])}

    def scores(self, histories: list[list[str]], users: np.ndarray | None = None) -> np.ndarray:
        """(histories, items) scores with each history's items masked, from one batch of all the histories."""
        rows = [[self.row[key] for key in history] for history in histories]
        windows = [r[-self.meta["max_len"] :] for r in rows]
        width = max(len(w) for w in windows)
        pad = self.meta["pad"]
        feed = {"histories": np.array([[pad] * (width - len(w)) + w for w in windows], dtype=np.int64)}
        if users is not None:
            feed["users"] = users.astype(np.int64)
        scores = self.session.run(None, feed)[0] @ self.items.T
        for b, r in enumerate(rows):
            scores[b, r] = -np.inf
        return scores


def top_keys(scores: np.ndarray, keys: list[str], k: int = 10) -> list[list[str]]:
    return [[keys[i] for i in np.argsort(-row, kind="stable")[:k]] for row in scores]


def torch_scores(recommender, histories: list[list[str]], users: np.ndarray | None) -> np.ndarray:
    """The scores mahn computes (Recommender: its reader's encode of the windows @ its item table), history masked."""
    reader = recommender.items.current().reader or recommender.model
    rows = [recommender.item_ids(history) for history in histories]
    windows = [r[-recommender.max_len :] for r in rows]
    width = max(len(w) for w in windows)
    batch = torch.tensor([[reader.pad] * (width - len(w)) + w for w in windows])
    with torch.no_grad():
        states = reader.encode(batch, None if users is None else torch.as_tensor(users))
        scores = (states @ recommender.item_table().T).numpy()
    for b, r in enumerate(rows):
        scores[b, r] = -np.inf
    return scores


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_gives_the_scores_and_top10_of_mahn(root, name):
    exported = Exported(root / "exported" / name)
    meta = exported.meta
    recommender = mahn.load(root / "runs" / name, device="cpu")
    assert meta["keys"] == recommender.keys and meta["model"] == name
    assert np.array_equal(exported.items, recommender.item_table().numpy())
    histories, users = user_histories(recommender)
    assert len({len(h) for h in histories}) == 7  # lengths 1..7: max_len is 6
    users = users if name == "caser" else None
    expected = torch_scores(recommender, histories, users)
    many = exported.scores(histories, users)
    one = np.concatenate([exported.scores([h], None if users is None else users[b : b + 1])
                          for b, h in enumerate(histories)])
    for scores in (many, one):
        finite = np.isfinite(expected)
        assert np.array_equal(finite, np.isfinite(scores))
        assert np.abs(scores[finite] - expected[finite]).max() <= 1e-4
        assert top_keys(scores, meta["keys"]) == top_keys(expected, meta["keys"])
    if name == "caser":  # Caser cannot recommend for a history alone: the export takes the user
        with pytest.raises(DataError, match="cannot recommend for a history alone"):
            recommender.recommend(histories[0])
    else:
        recommended = recommender.recommend_batch(histories, 10)
        assert top_keys(many, meta["keys"]) == [[r.key for r in rec] for rec in recommended]
        top_scores = [-np.sort(-row)[:10] for row in many]
        assert np.abs(np.array(top_scores) - [[r.score for r in rec] for rec in recommended]).max() <= 1e-4


def test_the_snippets_of_the_docs_recommend_what_mahn_does(root, capsys):
    folder = root / "exported" / "mahn"
    history, histories = ["i003", "i006", "i009", "i012", "i015", "i018", "i021"], [["i001", "i004"], ["i002"]]
    one, many = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    one = re.sub(r"^folder = .*$", f"folder = {str(folder)!r}", one, flags=re.M)
    one = re.sub(r"^history = .*$", f"history = {history!r}", one, flags=re.M)
    many = re.sub(r"^histories = .*$", f"histories = {histories!r}", many, flags=re.M)
    namespace: dict = {}
    exec(one, namespace)
    exec(many, namespace)
    recommender = mahn.load(root / "runs" / "mahn", device="cpu")
    assert namespace["top"] == [r.key for r in recommender.recommend(history, 10)]
    assert str(namespace["top"]) in capsys.readouterr().out
    assert namespace["tops"] == [[r.key for r in rec] for rec in recommender.recommend_batch(histories, 10)]


def test_items_added_after_training_are_exported_and_read_in_a_history(tmp_path):
    from mahn.catalog import add_item_records

    data = make_coded_dataset(tmp_path / "data", period=3)
    train(data, tmp_path / "run", settings("mahn"))
    add_item_records(tmp_path / "run", [{"key": "n1", "image_codes": [1, 2, 3, 4], "text_codes": "[0,1,7,9]"},
                                        {"key": "n2", "image_codes": [2, 0, 7, 5]}])
    meta = export_onnx(tmp_path / "run", tmp_path / "exported")
    recommender = mahn.load(tmp_path / "run", device="cpu")
    assert meta["keys"][-2:] == ["n1", "n2"] and meta["added"] == 2 and meta["pad"] == 22
    items = np.load(tmp_path / "exported" / "items.npy")
    assert items.shape == (22, meta["dim"]) and np.array_equal(items, recommender.item_table().numpy())
    histories = [["i001", "n1"], ["n2", "i004", "i007"], ["i002"]]
    scores, expected = Exported(tmp_path / "exported").scores(histories), torch_scores(recommender, histories, None)
    finite = np.isfinite(expected)
    assert np.array_equal(finite, np.isfinite(scores)) and np.abs(scores[finite] - expected[finite]).max() <= 1e-4
    assert top_keys(scores, meta["keys"]) == [[r.key for r in rec] for rec in recommender.recommend_batch(histories)]


@pytest.mark.parametrize("args, message", [
    (["runs/sasrec", "--format", "tflite", "--out", "new"], "error: --format: unknown format 'tflite'; choose onnx"),
    (["no-such-run", "--out", "new"], "error: no-such-run: not a training run (no config.json)"),
    (["runs/sasrec", "--out", "exported/sasrec"], "error: exported/sasrec: output directory exists and is not empty"),
])
def test_bad_input_is_one_line_and_writes_nothing(root, monkeypatch, capsys, args, message):
    monkeypatch.chdir(root)
    before = {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}
    code, _, err = run_mahn(monkeypatch, capsys, ["export", *args])
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_the_cli_writes_the_export(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    (root / "empty").mkdir()  # an empty folder is written into without --force
    code, out, err = run_mahn(monkeypatch, capsys, ["export", "runs/gru4rec", "--format", "onnx", "--out", "empty"])
    assert code in (0, None), err
    assert out.startswith("exported GRU4Rec to empty: encoder.onnx (histories -> states of 9)")
    assert sorted(p.name for p in (root / "empty").iterdir()) == ["encoder.onnx", "export.json", "items.npy"]
