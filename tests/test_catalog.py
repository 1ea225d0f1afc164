"""New catalogue items for a trained run (mahn.catalog, `mahn add-items`, `content_vectors`): encoded by the
dataset's own encoders, stored atomically beside the run, ranked by content alone."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mahn.catalog.store as added_store
from mahn.catalog import add_item_records, add_items, load_added
from mahn.cli import app
from mahn.data import Dataset
from mahn.errors import DataError
from mahn.io import read_json
from mahn.models import build_model
from mahn.settings import resolve
from mahn.training import load_run, train
from synthetic import make_coded_dataset, make_dataset

# --- a small demo shop with real image (EfficientNet-Lite0) and title (MiniLM) features ---


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    from mahn.data.prepare import PrepareConfig, prepare
    from mahn.demo.shop import generate_demo
    from mahn.features import FeatureConfig, extract_features
    from mahn.readers import ReaderOptions

    root = tmp_path_factory.mktemp("shop")
    generate_demo(root / "raw", users=600, items=120, seed=0)
    prepare(root / "raw" / "interactions.csv", "csv", root / "data", PrepareConfig(num_negatives=20, seed=0),
            items=root / "raw" / "items.csv", options=ReaderOptions(time_col="timestamp"))
    extract_features(root / "data", FeatureConfig(progress=False, workers=1))
    runs = {}
    for name, values in (("mahn", {"model": "mahn", "dim": 16, "epochs": 12, "lr": 0.005}),
                         ("sasrec", {"model": "sasrec", "dim": 8, "epochs": 1})):
        runs[name] = root / "runs" / name
        train(root / "data", runs[name], resolve(("test", {**values, "batch_size": 64, "max_len": 10, "seed": 0,
                                                           "patience": 20, "progress": False})))
    return {"root": root, "data": root / "data", "runs": runs,
            "latent": read_json(root / "raw" / "latent.json")["items"]}


@pytest.fixture
def run(shop, tmp_path) -> Path:
    """A copy of the trained MAHN run, free to be changed by one test."""
    shutil.copytree(shop["runs"]["mahn"], tmp_path / "run")
    return tmp_path / "run"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under root, hidden ones too."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def new_item(folder: Path, key: str, attrs: dict, seed: int) -> dict:
    """A new shop item with the given attributes: a freshly rendered image and a title, as the shop makes them."""
    from mahn.demo.shop import item_title_and_text, render_image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    render_image(attrs, rng).save(folder / "images" / f"{key}.png")
    title, text = item_title_and_text(attrs, rng)
    return {"key": key, "title": title, "text": text, "image": f"images/{key}.png"}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def opposite(attrs: dict) -> dict:
    """Every attribute changed to the next value: shares nothing with `attrs`."""
    from mahn.demo.shop import ATTRIBUTES

    return {name: values[(values.index(attrs[name]) + 1) % len(values)] for name, values in ATTRIBUTES.items()}


# --- the acceptance test ---


def test_a_new_item_that_looks_and_reads_like_the_history_ranks_above_unrelated_new_items(shop, run, tmp_path):
    model, dataset, record = load_run(run, device="cpu")
    keys = dataset.item_metadata["key"].to_list()
    evalset = dataset.eval_set("test")
    users = range(0, len(evalset.users), max(1, len(evalset.users) // 60))[:60]
    records, histories = [], []
    for n, row in enumerate(users):
        user = evalset.users[row]
        history = dataset.items[dataset.offsets[user] : evalset.input_ends[row]][-record["train"]["max_len"] :]
        last = shop["latent"][keys[history[-1]]]
        records += [new_item(tmp_path / "new", f"alike{n}", last, seed=2 * n),
                    new_item(tmp_path / "new", f"other{n}", opposite(last), seed=2 * n + 1)]
        histories.append(history)
    report = add_items(run, write_jsonl(tmp_path / "new" / "items.jsonl", records))
    assert report["added"] == len(records) and report["features"]["image"]["dim"] == 1280
    assert report["features"]["text"] == {"dim": 384, "encoder": "minilm", "missing": 0}

    added = load_added(run)
    assert added.keys == [r["key"] for r in records]
    with torch.no_grad():
        rows = model.content_vectors({m: torch.from_numpy(f) for m, f in added.features.items()})
        assert rows.shape == (len(records), model.item_table().shape[1])
        wins, ranks = [], []
        for n, history in enumerate(histories):
            state = model.encode(torch.from_numpy(history[None]))[0]
            scores = rows @ state
            wins.append(bool(scores[2 * n] > scores[2 * n + 1]))
            ranks.append(int((scores > scores[2 * n]).sum()) + 1)  # the alike item among all new items
    # trained 12 epochs: 97% wins, median rank 9 of 120; untrained (lr 0): 55% wins, median rank 57
    assert np.mean(wins) >= 0.85, wins
    assert np.median(ranks) <= 15, ranks  # among 120 new items, most of them unrelated to this user

    # the new items' features are the dataset encoders' own: a copy of an existing item's image and title
    # gets that item's feature rows back
    source = keys[0]
    table = dataset.item_metadata.row(0, named=True)
    add_item_records(run, [{"key": "copy", "title": table["title"], "image": os.path.basename(table["image"])}],
                     images=Path(table["image"]).parent)
    copy = load_added(run)
    for modality in ("image", "text"):
        matrix, _ = dataset.features(modality)
        np.testing.assert_allclose(copy.features[modality][-1], matrix[0], atol=1e-4, err_msg=source)


# --- storage: restart, append, atomicity ---


def test_added_items_survive_a_restart_and_a_second_add_appends(shop, run, tmp_path):
    latent = list(shop["latent"].values())
    first = [new_item(tmp_path / "a", f"new{i}", latent[i], seed=i) for i in range(2)]
    report = add_items(run, write_jsonl(tmp_path / "a" / "items.jsonl", first))
    assert (report["added"], report["total"]) == (2, 2)
    loaded = load_added(run)  # a fresh read of the files, as after a restart
    assert loaded.keys == ["new0", "new1"] and loaded.titles == [r["title"] for r in first]
    assert loaded.images == [os.path.realpath(tmp_path / "a" / r["image"]) for r in first]
    assert {m: f.shape for m, f in loaded.features.items()} == {"image": (2, 1280), "text": (2, 384)}
    assert all(f.dtype == np.float32 for f in loaded.features.values())

    csv_file = tmp_path / "b" / "items.csv"
    new_item(tmp_path / "b", "new2", latent[2], seed=2)
    csv_file.write_text("key,title,image\nnew2,Plain title,images/new2.png\nnew3,No image at all,\n")
    report = add_items(run, csv_file)
    assert (report["added"], report["total"]) == (2, 4)
    again = load_added(run)
    assert again.keys == ["new0", "new1", "new2", "new3"] and again.images[3] is None
    for modality in ("image", "text"):
        np.testing.assert_array_equal(again.features[modality][:2], loaded.features[modality])
    assert not again.features["image"][3].any() and again.features["image"][2].any()  # no image: a zero row
    manifest = read_json(run / "added" / "manifest.json")
    assert manifest["count"] == 4 and manifest["batches"] == [2, 2]
    assert set(manifest["files"]) == {"items.jsonl", "image.npy", "text.npy"}
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # locks are flocks on the folder


def test_nothing_added_loads_as_none(run):
    assert load_added(run) is None


@pytest.fixture(scope="module")
def added_run(shop, tmp_path_factory) -> Path:
    """A copy of the MAHN run with one item added; the tests that use it must leave it as it is."""
    root = tmp_path_factory.mktemp("added")
    shutil.copytree(shop["runs"]["mahn"], root / "run")
    add_items(root / "run", write_jsonl(root / "first.jsonl", [{"key": "earlier", "title": "An earlier addition"}]))
    return root / "run"


@pytest.mark.parametrize(("records", "files", "message"), [
    ([{"title": "no key"}], {}, r"items.jsonl:1: field 'key' is missing"),
    ([{"key": "a"}, {"key": "a"}], {}, r"items.jsonl:2: field 'key': 'a' occurs twice"),
    ([{"key": "KNOWN"}], {}, r"items.jsonl:1: field 'key': '.*' is already an item of the run"),
    ([{"key": "a", "colour": "red"}], {}, r"items.jsonl:1: unknown field 'colour'"),
    ([{"key": "a", "title": ["x"]}], {}, r"items.jsonl:1: field 'title' must be a string"),
    ([{"key": "a"}, {"key": "b", "image": "../outside.png"}], {}, r"items.jsonl:2: field 'image': .*'\.\.'"),
    ([{"key": "a", "image": "/etc/hostname"}], {}, r"field 'image': .*absolute path"),
    ([{"key": "a", "image": "images/link.png"}], {"link": True}, r"field 'image': .*out of the images folder"),
    ([{"key": "a", "image": "images/notes.png"}], {"images/notes.png": b"not an image"},
     r"items.jsonl:1: field 'image': cannot decode"),
    ([{"key": "a", "image": "images/none.png"}], {}, r"field 'image': no image file"),
])
def test_bad_records_are_refused_and_nothing_is_written(shop, added_run, tmp_path, records, files, message):
    run = added_run
    known = Dataset(shop["data"]).item_metadata["key"][0]
    folder = tmp_path / "new"
    (folder / "images").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes((shop["root"] / "raw" / "images" / f"{known}.png").read_bytes())
    for name, content in files.items():
        if name == "link":
            os.symlink(tmp_path / "outside.png", folder / "images" / "link.png")
        else:
            (folder / name).write_bytes(content)
    records = [{**r, "key": known} if r.get("key") == "KNOWN" else r for r in records]
    before, data_before = snapshot(run), snapshot(shop["data"])
    with pytest.raises(DataError, match=message):
        add_items(run, write_jsonl(folder / "items.jsonl", records))
    assert snapshot(run) == before and snapshot(shop["data"]) == data_before
    with pytest.raises(DataError, match="'earlier' is already an item of the run"):
        add_items(run, write_jsonl(folder / "again.jsonl", [{"key": "earlier"}]))
    assert snapshot(run) == before


def test_bad_files_and_http_records_name_where(run, tmp_path):
    bad_csv = tmp_path / "items.csv"
    bad_csv.write_text("key,titel\na,b\n")
    with pytest.raises(DataError, match=r"items.csv:1: unknown column 'titel'"):
        add_items(run, bad_csv)
    (tmp_path / "items.xml").write_text("<items/>")
    with pytest.raises(DataError, match="unknown items file type"):
        add_items(run, tmp_path / "items.xml")
    with pytest.raises(DataError, match=r"records\[1\]: field 'key' is missing"):
        add_item_records(run, [{"key": "a"}, {"title": "b"}])
    with pytest.raises(DataError, match=r"records\[0\]: field 'image': URLs are not accepted"):
        add_item_records(run, [{"key": "a", "image": "http://example.com/a.jpg"}], images=tmp_path)
    with pytest.raises(DataError, match=r"records\[0\]: field 'image': no images folder"):
        add_item_records(run, [{"key": "a", "image": "a.png"}])
    assert load_added(run) is None


def test_an_add_killed_while_writing_leaves_the_run_as_it_was(shop, run, tmp_path, monkeypatch):
    latent = list(shop["latent"].values())
    add_items(run, write_jsonl(tmp_path / "a" / "items.jsonl", [new_item(tmp_path / "a", "old", latent[0], 0)]))
    before = snapshot(run)
    built = []

    def killed(path, obj):  # the manifest is the last file written into the temporary folder
        built.extend(p.name for p in Path(path).parent.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(added_store, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        add_items(run, write_jsonl(tmp_path / "b" / "items.jsonl", [new_item(tmp_path / "b", "new", latent[1], 1)]))
    assert {"items.jsonl", "image.npy", "text.npy"} <= set(built)  # it was killed after building the new folder
    assert snapshot(run) == before  # no temporary folder left, the old items untouched
    monkeypatch.undo()
    assert load_added(run).keys == ["old"]


def test_a_kill_in_the_middle_of_the_swap_is_recovered(shop, run, tmp_path):
    """atomic_dir moves the old folder aside, then the new one in: killed between the two, the old one is
    read (and put back by the next add); an unfinished temporary folder is ignored, then removed."""
    add_items(run, write_jsonl(tmp_path / "a" / "items.jsonl", [{"key": "old", "title": "An old addition"}]))
    os.replace(run / "added", run / ".added.old-12345")
    (run / ".added.abcd.tmp").mkdir()
    (run / ".added.abcd.tmp" / "items.jsonl").write_text("half")
    assert load_added(run).keys == ["old"]
    add_items(run, write_jsonl(tmp_path / "b" / "items.jsonl", [{"key": "new", "title": "A new addition"}]))
    assert load_added(run).keys == ["old", "new"]
    assert sorted(p.name for p in run.iterdir() if "added" in p.name) == ["added"]


def test_a_corrupted_added_file_is_an_error(run, tmp_path):
    add_items(run, write_jsonl(tmp_path / "items.jsonl", [{"key": "x", "title": "Something"}]))
    (run / "added" / "text.npy").write_bytes(b"broken")
    with pytest.raises(DataError, match="sha256"):
        load_added(run)


def test_an_id_only_model_cannot_take_new_items(shop, tmp_path):
    run = tmp_path / "sasrec"
    shutil.copytree(shop["runs"]["sasrec"], run)
    before = snapshot(run)
    with pytest.raises(DataError, match="SASRec ranks items by their ID only"):
        add_items(run, write_jsonl(tmp_path / "items.jsonl", [{"key": "x", "title": "Something"}]))
    assert snapshot(run) == before


def test_cli_add_items_prints_the_count(shop, run, tmp_path):
    records = [new_item(tmp_path, f"cli{i}", a, i) for i, a in enumerate(list(shop["latent"].values())[:3])]
    result = CliRunner().invoke(app, ["add-items", str(run), "--items", str(write_jsonl(tmp_path / "i.jsonl",
                                                                                        records))])
    assert result.exit_code == 0, result.output
    assert "added 3 items" in result.output and "image efficientnet-lite0 1280-d" in result.output
    assert load_added(run).keys == ["cli0", "cli1", "cli2"]


def test_code_features_are_encoded_from_the_records_and_tied_to_the_dataset_features(tmp_path):
    from mahn.io import write_json

    data = make_coded_dataset(tmp_path / "data", period=4)
    train(data, tmp_path / "run", resolve(("t", {"dim": 4, "epochs": 1, "batch_size": 32, "max_len": 6,
                                                 "progress": False})))
    report = add_item_records(tmp_path / "run", [{"key": "n1", "image_codes": [1, 2, 3, 4], "text_codes": "[0,0,0,0]"},
                                                 {"key": "n2", "title": "no codes"}])
    assert report["features"]["image"] == {"dim": 1024, "encoder": "codes", "missing": 1}
    added = load_added(tmp_path / "run")
    assert np.flatnonzero(added.features["image"][0]).tolist() == [1, 258, 515, 772]
    assert not added.features["text"][1].any()
    with pytest.raises(DataError, match=r"records\[0\]: field 'image_codes': .*codes must be in"):
        add_item_records(tmp_path / "run", [{"key": "n3", "image_codes": [1, 2, 3, 999]}])
    # re-extracted dataset features make the stored rows of added items stale: refused, not mixed
    manifest = read_json(data / "manifest.json")
    manifest["features"]["image"]["sha256"] = "0" * 64
    write_json(data / "manifest.json", manifest)
    with pytest.raises(DataError, match="features changed after items were added"):
        load_added(tmp_path / "run")


def test_features_without_an_encoder_record_cannot_encode_new_items(tmp_path):
    data = make_dataset(tmp_path / "data", users=30, items=20)  # synthetic features: no features/<m>.json
    train(data, tmp_path / "run", resolve(("t", {"dim": 4, "epochs": 1, "batch_size": 32, "max_len": 6,
                                                 "progress": False})))
    with pytest.raises(DataError, match="image features have no encoder record"):
        add_item_records(tmp_path / "run", [{"key": "new", "title": "New"}])
    assert not (tmp_path / "run" / "added").exists()


# --- content_vectors: each model's rows for new items, in the space of its item table ---


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("syn") / "data", users=30, items=20))


def features_of(dataset: Dataset, ids: list[int]) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(np.array(dataset.features(m)[0][ids], dtype=np.float32))
            for m in dataset.feature_modalities()}


def model(name: str, dataset: Dataset, **values):
    torch.manual_seed(0)
    return build_model(name, resolve(("test", {"model": name, **values})).model_config, dataset).eval()


@pytest.mark.parametrize("values", [{"variant": "cat-cat"}, {"variant": "add-add"},
                                    {"variant": "cat-add", "feature_norm": "l2"}, {"ablate": "v"}])
def test_mahn_content_vectors_are_item_rows_with_no_id_vector(synthetic, values):
    mahn = model("mahn", synthetic, dim=6, **values)
    ids = [0, 3, 7]
    with torch.no_grad():
        mahn.trained[ids] = False  # an item never trained has e = 0: its row is its content alone
        expected = mahn.item_table()[ids]
        features = features_of(synthetic, ids)
        if values.get("ablate") == "v":
            features.pop("image")  # an ablated modality is not needed
        np.testing.assert_allclose(mahn.content_vectors(features), expected, rtol=1e-5, atol=1e-6)


def test_vbpr_and_mvrnn_content_vectors_drop_only_the_learned_id_part(synthetic):
    ids = [1, 2, 5]
    vbpr = model("vbpr", synthetic)
    mvrnn = model("mvrnn", synthetic)
    with torch.no_grad():
        vbpr.item_factors.weight.zero_()
        vbpr.item_bias.zero_()
        vbpr.visual_bias.weight.normal_()
        mvrnn.item_embedding.weight.zero_()
        for m in (vbpr, mvrnn):
            np.testing.assert_allclose(m.content_vectors(features_of(synthetic, ids)), m.item_table()[ids],
                                       rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="VBPR needs 'text' features"):
        vbpr.content_vectors({"image": features_of(synthetic, ids)["image"]})
    with pytest.raises(DataError, match="reads 7 values per item"):
        mvrnn.content_vectors({"image": torch.zeros(3, 12), "text": torch.zeros(3, 8)})


@pytest.mark.parametrize(("name", "values", "message"), [
    ("mahn", {"ablate": "vt"}, "MAHN-V-T ranks items by their ID only"),
    ("sasrec", {}, "SASRec ranks items by their ID only"),
    ("gru4rec", {}, "GRU4Rec ranks items by their ID only"),
    ("popularity", {}, "Popularity ranks items by their ID only"),
    ("jrl", {}, "JRL learns every item's vectors from its ID"),
])
def test_models_that_cannot_place_a_new_item_say_so(synthetic, name, values, message):
    with pytest.raises(DataError, match=message):
        model(name, synthetic, **values).content_vectors(features_of(synthetic, [0]))


# --- POST /items/upload: an image file sent over HTTP ---


def test_an_uploaded_image_gets_the_dataset_encoders_features_and_bad_uploads_write_nothing(shop, run):
    from fastapi.testclient import TestClient

    from mahn.serve import create_app

    client = TestClient(create_app(run, device="cpu", max_upload=200_000))
    _, dataset, _ = load_run(run, device="cpu")
    table = dataset.item_metadata.row(0, named=True)
    before = snapshot(run)
    bomb = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(bomb, format="PNG")  # 50 Mpixel in a few kB: refused from its header
    for content, status, message in ((b"not an image", 400, "not an image"), (b"", 400, "empty"),
                                     (b"\0" * 300_000, 413, "larger than the limit"),
                                     (bomb.getvalue(), 400, "10000x5000 pixels is over the 40,000,000 pixel limit")):
        refused = client.post("/items/upload", data={"key": "bad", "title": "x"},
                              files={"image": ("x.png", content, "image/png")})
        assert refused.status_code == status and message in refused.json()["detail"], refused.text
    missing = client.post("/items/upload", data={"key": "bad"})
    assert missing.status_code == 422
    assert snapshot(run) == before

    image = Path(table["image"]).read_bytes()
    sent = client.post("/items/upload", data={"key": "copy", "title": table["title"]},
                       files={"image": ("photo.jpg", image, "application/octet-stream")})
    assert sent.status_code == 200, sent.text
    assert sent.json()["added"] == ["copy"] and sent.json()["items"] == dataset.n_items + 1
    assert client.get("/images/copy").content == image  # kept in the run, served from there
    added = load_added(run)
    for modality in ("image", "text"):  # the same features as the item whose image and title were sent
        np.testing.assert_allclose(added.features[modality][-1], dataset.features(modality)[0][0], atol=1e-4)
    stored = sorted((run / "uploads").iterdir())
    # a refused item (its key is taken) keeps nothing new, but the image stays for the item that has it
    other = client.post("/items/upload", data={"key": "copy"}, files={"image": ("a.png", image, "image/png")})
    assert other.status_code == 400 and "copy" in other.json()["detail"]
    assert sorted((run / "uploads").iterdir()) == stored
    fresh = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(fresh, "PNG")
    taken = client.post("/items/upload", data={"key": "copy"},
                        files={"image": ("b.png", fresh.getvalue(), "image/png")})
    assert taken.status_code == 400 and sorted((run / "uploads").iterdir()) == stored
