import hashlib
import re
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from PIL import Image

from mahn.demo.shop import ATTRIBUTES, PATTERNS, SHAPES, generate_demo
from mahn.errors import DataError

USERS, ITEMS = 1500, 300


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "shop"
    return out, generate_demo(out, users=USERS, items=ITEMS, seed=3)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kwargs, field", [
    ({"users": 9}, "users"), ({"items": 19}, "items"), ({"seed": -1}, "seed"),
    ({"users": True}, "users"), ({"items": 50.0}, "items"),
])
def test_bad_arguments_raise_data_error_and_write_nothing(tmp_path, kwargs, field):
    with pytest.raises(DataError, match=field) as error:
        generate_demo(tmp_path / "out", **kwargs)
    assert error.value.where == field
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_and_force_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists"):
        generate_demo(out, users=10, items=20)
    assert (out / "old.txt").read_text() == "keep me"
    generate_demo(out, users=10, items=20, force=True)
    assert not (out / "old.txt").exists()
    assert (out / "interactions.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary siblings left behind


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = generate_demo(tmp_path / "a", users=80, items=40, seed=7)
    generate_demo(tmp_path / "b", users=80, items=40, seed=7)
    generate_demo(tmp_path / "c", users=80, items=40, seed=8)
    a, b, c = (file_hashes(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) == 40 + 4  # images, items.csv, interactions.csv, latent.json, README.md
    assert a["interactions.csv"] != c["interactions.csv"]
    assert a["items.csv"] != c["items.csv"]
    assert first["users"] == 80 and first["items"] == 40


def test_output_reads_with_polars_and_every_image_opens(demo):
    out, summary = demo
    items = pl.read_csv(out / "items.csv")
    interactions = pl.read_csv(out / "interactions.csv")
    assert items.columns == ["item", "title", "text", "image"]
    assert interactions.columns == ["user", "item", "timestamp"]
    assert interactions.schema["timestamp"] == pl.Int64
    assert items.height == ITEMS and items["item"].n_unique() == ITEMS
    assert all(re.fullmatch(r"item\d{4}", key) for key in items["item"])
    assert interactions["user"].n_unique() == USERS and interactions.height == summary["interactions"]
    assert set(interactions["item"]) <= set(items["item"])
    assert items.null_count().sum_horizontal().item() == 0

    image_hashes = set()
    for relative in items["image"]:
        path = out / relative
        assert path.is_file(), relative
        with Image.open(path) as image:
            image.load()
            assert image.size == (128, 128) and image.mode == "RGB"
            image_hashes.add(hashlib.sha256(image.tobytes()).hexdigest())
    assert len(image_hashes) == ITEMS  # no two items look pixel-identical
    assert "must never read it" in (out / "README.md").read_text()


def test_histories_have_the_promised_shape(demo):
    out, summary = demo
    per_user = (pl.read_csv(out / "interactions.csv")
                .group_by("user").agg(pl.col("timestamp"), pl.col("item").n_unique().alias("distinct"), pl.len()))
    lengths = per_user["len"].to_numpy()
    assert lengths.min() >= 5 and lengths.max() <= 30
    assert 8.5 <= lengths.mean() <= 11.5
    assert (per_user["distinct"] == per_user["len"]).all()  # nobody picks an item twice
    assert all(np.all(np.diff(stamps) > 0) for stamps in per_user["timestamp"].to_list())
    assert summary["mean_length"] == pytest.approx(lengths.mean(), abs=1e-3)


def test_text_names_only_text_attributes_and_ids_carry_none(demo):
    out, _ = demo
    items = pl.read_csv(out / "items.csv")
    latent = orjson.loads((out / "latent.json").read_bytes())["items"]
    visual_words = set(SHAPES) | set(PATTERNS)
    for key, title, text in items.select("item", "title", "text").iter_rows():
        attrs = latent[key]
        assert title == f"{attrs['brand']} {attrs['colour']} {attrs['material']} {attrs['category']}"
        assert not visual_words & set(re.findall(r"[a-z]+", text.lower()))
    # Keys are shuffled: the attribute of an item says nothing about the next key's attribute.
    shapes = [latent[key]["shape"] for key in sorted(latent)]
    same_as_next = np.mean([a == b for a, b in zip(shapes, shapes[1:], strict=False)])
    assert same_as_next < 0.25  # chance is 1/8; a sorted catalogue would give ~0.97


def hit_rate_at_10(histories: list[np.ndarray], scores, n_items: int, seed: int = 0) -> float:
    """Hold out each user's last item; rank every item not in the rest of the history; ties broken at random."""
    rng = np.random.default_rng(seed)
    hits = 0
    for history in histories:
        inputs, target = history[:-1], history[-1]
        score = scores(inputs).astype(np.float64) + rng.uniform(0, 1e-6, n_items)
        score[inputs] = -np.inf
        hits += int((score > score[target]).sum() < 10)
    return hits / len(histories)


def test_content_predicts_the_next_item_better_than_ids_popularity_and_chance(demo):
    out, _ = demo
    latent = orjson.loads((out / "latent.json").read_bytes())
    keys = sorted(latent["items"])
    index = {key: i for i, key in enumerate(keys)}
    names = list(ATTRIBUTES)
    attrs = np.array([[ATTRIBUTES[n].index(latent["items"][k][n]) for n in names] for k in keys])
    ordered = pl.read_csv(out / "interactions.csv").sort("user", "timestamp")
    histories = [np.array([index[k] for k in items])
                 for items in ordered.group_by("user", maintain_order=True).agg("item")["item"].to_list()]

    popularity = np.zeros(ITEMS)
    transitions = np.zeros((ITEMS, ITEMS))  # item-id bigram counts, the simplest id-only sequence model
    for history in histories:
        np.add.at(popularity, history[:-1], 1)
        np.add.at(transitions, (history[:-2], history[1:-1]), 1)

    def similar_to_last(modality: list[str]):
        columns = [names.index(name) for name in modality]
        return lambda inputs: (attrs[:, columns] == attrs[inputs[-1], columns]).sum(axis=1)

    hr = {
        "popularity": hit_rate_at_10(histories, lambda inputs: popularity, ITEMS),
        "id_bigram": hit_rate_at_10(histories, lambda inputs: transitions[inputs[-1]] + 1e-3 * popularity, ITEMS),
        "content": hit_rate_at_10(histories, similar_to_last(names), ITEMS),
        "image_only": hit_rate_at_10(histories, similar_to_last(latent["visual"]), ITEMS),
        "text_only": hit_rate_at_10(histories, similar_to_last(latent["textual"]), ITEMS),
    }
    chance = float(np.mean([10 / (ITEMS - len(h) + 1) for h in histories]))
    assert hr["content"] > 5 * chance, hr
    assert hr["content"] > 2 * hr["popularity"], hr
    assert hr["content"] > 1.1 * hr["id_bigram"], hr
    # Each modality alone carries signal, and the two together beat either one.
    assert min(hr["image_only"], hr["text_only"]) > 3 * chance, hr
    assert hr["content"] > 1.3 * max(hr["image_only"], hr["text_only"]), hr
