"""The preparation pipeline: filters, k-core, ids, order, split, negatives, atomic output, the CLI."""

import gzip
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mahn.data import Dataset
from mahn.data.negatives import draw_negatives
from mahn.data.prepare import PrepareConfig, prepare, prepare_frames
from mahn.errors import DataError
from mahn.io import write_bytes
from mahn.readers import Source, chunked

SCHEMA = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}


def frame(rows):
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def naive_kcore(rows, k):
    rows = list(rows)
    while True:
        users = Counter(u for u, _ in rows)
        items = Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if users[u] >= k and items[i] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 8)), min_size=1, max_size=150),
       k=st.integers(2, 4))
def test_kcore_matches_a_naive_implementation(tmp_path_factory, pairs, k):
    rows = [(f"u{u:02d}", f"i{i:02d}", n) for n, (u, i) in enumerate(pairs)]
    expected = naive_kcore([(u, i) for u, i, _ in rows], k)
    out = tmp_path_factory.mktemp("kcore") / "ds"
    config = PrepareConfig(kcore=k, num_negatives=1)
    if not expected:
        with pytest.raises(DataError, match="no users left"):
            prepare_frames(frame(rows), None, out, config)
        assert not out.exists()
        return
    try:
        manifest = prepare_frames(frame(rows), None, out, config)
    except DataError as e:  # a user may have no item left to draw a negative from
        assert "negatives" in str(e)
        return
    assert manifest["counts"] == {"users": len({u for u, _ in expected}), "items": len({i for _, i in expected}),
                                  "interactions": len(expected)}
    table = pl.read_parquet(out / "interactions.parquet")
    assert table.group_by("user").len()["len"].min() >= k
    assert table.group_by("item").len()["len"].min() >= k


def test_ids_are_dense_in_key_order_and_histories_in_time_order(tmp_path):
    rows = [("bob", "z", 30), ("alice", "y", 5), ("bob", "x", 10), ("alice", "z", 1), ("bob", "y", 20),
            ("alice", "x", 3), ("zoe", "zz", 7)]
    prepare_frames(frame(rows), None, tmp_path / "ds", PrepareConfig(num_negatives=1))
    users = pl.read_parquet(tmp_path / "ds" / "users.parquet")
    items = pl.read_parquet(tmp_path / "ds" / "items.parquet")
    assert users["key"].to_list() == ["alice", "bob", "zoe"] and users["user"].to_list() == [0, 1, 2]
    assert items["key"].to_list() == ["x", "y", "z", "zz"] and items["item"].to_list() == [0, 1, 2, 3]
    data = Dataset(tmp_path / "ds")
    assert data.history(0).tolist() == [2, 0, 1]  # alice: z@1, x@3, y@5
    assert data.history(1).tolist() == [0, 1, 2]  # bob: x@10, y@20, z@30
    table = pl.read_parquet(tmp_path / "ds" / "interactions.parquet")
    assert table["position"].to_list() == [0, 1, 2, 0, 1, 2, 0]
    assert table["timestamp"].to_list() == [1, 3, 5, 10, 20, 30, 7]


def test_duplicates_collapse_and_ties_keep_file_order(tmp_path):
    rows = [("u", "c", 5), ("u", "a", 5), ("u", "c", 5), ("u", "b", 5), ("u", "a", 1), ("v", "a", 1),
            ("v", "b", 2), ("v", "c", 3), ("w", "d", 1)]
    manifest = prepare_frames(frame(rows), None, tmp_path / "ds", PrepareConfig(num_negatives=1))
    assert manifest["counts"]["interactions"] == 8  # the second (u, c, 5) is gone
    data = Dataset(tmp_path / "ds")
    assert data.history(0).tolist() == [0, 2, 0, 1]  # a@1, then the tie at 5 in file order: c, a, b


def test_rows_without_time_keep_repeats(tmp_path):
    rows = [("u", "a", None), ("u", "b", None), ("u", "a", None), ("v", "c", None)]
    source = Source(chunked(iter(rows), SCHEMA, size=1), None, [], has_time=False)
    from mahn.data.prepare import write_dataset

    manifest = write_dataset(source, tmp_path / "ds", PrepareConfig(num_negatives=1, kcore=0), "test")
    assert manifest["counts"]["interactions"] == 4
    assert Dataset(tmp_path / "ds").history(0).tolist() == [0, 1, 0]


def test_require_drops_items_lacking_a_title_or_image(tmp_path):
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4)]
    items = pl.DataFrame({"item": ["a", "b", "c"], "title": ["A", " ", "C"], "image": ["/a.jpg", "/b.jpg", None]})
    manifest = prepare_frames(frame(rows), items, tmp_path / "ds", PrepareConfig(require=("title", "image"),
                                                                                 num_negatives=1))
    assert manifest["counts"] == {"users": 1, "items": 1, "interactions": 1}
    table = pl.read_parquet(tmp_path / "ds" / "items.parquet")
    assert table.select("key", "title", "image").row(0) == ("a", "A", "/a.jpg")
    with pytest.raises(DataError, match="needs an items table"):
        prepare_frames(frame(rows), None, tmp_path / "ds2", PrepareConfig(require=("title",)))
    with pytest.raises(DataError, match="--require accepts"):
        PrepareConfig(require=("colour",))


def test_split_is_leave_one_out_and_short_users_are_not_evaluated(tmp_path):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "w", 4), ("b", "x", 1), ("b", "y", 2), ("c", "zz", 1)]
    prepare_frames(frame(rows), None, tmp_path / "ds", PrepareConfig(num_negatives=1))
    data = Dataset(tmp_path / "ds")  # items by key: w0 x1 y2 z3 zz4
    valid, test = data.eval_set("valid"), data.eval_set("test")
    assert valid.users.tolist() == test.users.tolist() == [0]
    assert valid.targets.tolist() == [3] and test.targets.tolist() == [0]
    assert data.items[data.offsets[0]:valid.input_ends[0]].tolist() == [1, 2]
    assert data.items[data.offsets[0]:test.input_ends[0]].tolist() == [1, 2, 3]
    starts, ends = data.train_histories()
    assert (ends - starts).tolist() == [2, 2, 1]  # users b and c train on all their items
    assert data.item_frequency().tolist() == [0, 2, 2, 0, 1]
    assert data.negatives("test")[1].tolist() == [-1]


def test_negatives_are_unseen_distinct_seeded_and_hashed(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}", t) for u in range(30) for t, i in enumerate(rng.choice(200, 8, replace=False))]
    prepare_frames(frame(rows), None, tmp_path / "a", PrepareConfig(seed=7))
    prepare_frames(frame(rows), None, tmp_path / "b", PrepareConfig(seed=7))
    data = Dataset(tmp_path / "a")
    for split in ("valid", "test"):
        negatives = data.negatives(split)
        assert negatives.shape == (30, 100)
        for user in range(30):
            assert len(set(negatives[user].tolist())) == 100
            assert not set(negatives[user].tolist()) & set(data.history(user).tolist())
        assert np.array_equal(negatives, Dataset(tmp_path / "b").negatives(split))
    before = data.negatives("test")
    draw_negatives(tmp_path / "a", 100, seed=8)
    assert not np.array_equal(before, Dataset(tmp_path / "a").negatives("test"))
    np.save(tmp_path / "a" / "negatives" / "test.npy", before)  # tampering is caught
    with pytest.raises(DataError, match="sha256"):
        Dataset(tmp_path / "a").negatives("test")
    with pytest.raises(DataError, match="lower --negatives"):
        prepare_frames(frame(rows), None, tmp_path / "c", PrepareConfig(num_negatives=195))


def test_existing_output_is_refused_and_a_failed_run_leaves_nothing(tmp_path):
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "d", 1)]
    out = tmp_path / "ds"
    prepare_frames(frame(rows), None, out, PrepareConfig(num_negatives=1))
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="exists"):
        prepare_frames(frame(rows), None, out, PrepareConfig(num_negatives=1))

    def broken():
        yield frame(rows)
        raise DataError("malformed line", "source.txt", 3)

    from mahn.data.prepare import write_dataset

    with pytest.raises(DataError, match="source.txt:3"):
        write_dataset(Source(broken(), None, []), out, PrepareConfig(num_negatives=1, force=True), "test")
    assert (out / "manifest.json").read_bytes() == manifest  # the old dataset survives a failed --force
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary directory left behind
    prepare_frames(frame(rows[:2] + [("v", "d", 4)]), None, out, PrepareConfig(num_negatives=1, force=True))
    assert Dataset(out).n_items == 3 and orjson.loads((out / "manifest.json").read_bytes())["counts"]["items"] == 3


def test_manifest_records_sources_filters_and_file_hashes(tmp_path):
    source = tmp_path / "seq.txt"
    write_bytes(source, b"u1 a b c d\nu2 b c d a\nu3 c d a b\nu4 e e e\n")
    manifest = prepare(source, "sequences", tmp_path / "ds", PrepareConfig(kcore=3, num_negatives=1))
    assert manifest["schema_version"] == 1 and manifest["format"] == "sequences"
    assert manifest["sources"][0]["path"] == str(source.resolve()) and len(manifest["sources"][0]["sha256"]) == 64
    assert manifest["filters"]["kcore"] == 3 and manifest["has_time"] is False
    assert set(manifest["files"]) == {"interactions.parquet", "users.parquet", "items.parquet"}
    assert manifest["negatives"]["count"] == 1 and set(manifest["negatives"]["sha256"]) == {"valid", "test"}
    with pytest.raises(DataError, match="unknown format"):
        prepare(source, "xml", tmp_path / "x", PrepareConfig())


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    return subprocess.run([sys.executable, "-m", "mahn.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_prepare_info_and_errors(tmp_path):
    source = tmp_path / "seq.txt"
    source.write_text("u1 a b c d\nu2 b c d a\nu3 c d a b\nu4 e e e\n")
    done = run_cli("prepare", source, "--format", "sequences", "--negatives", "1", "--out", tmp_path / "ds")
    assert done.returncode == 0, done.stderr
    assert "4 users, 5 items, 15 interactions" in done.stdout
    info = run_cli("info", tmp_path / "ds", "--json")
    assert info.returncode == 0, info.stderr
    assert {k: orjson.loads(info.stdout)[k] for k in ("users", "items", "interactions")} == {
        "users": 4, "items": 5, "interactions": 15}
    again = run_cli("prepare", source, "--format", "sequences", "--out", tmp_path / "ds")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("u1 a b\nlonely\n")
    failed = run_cli("prepare", bad, "--format", "sequences", "--out", tmp_path / "bad")
    assert failed.returncode == 2 and f"{bad}:2" in failed.stderr
    assert not (tmp_path / "bad").exists()
    unknown = run_cli("prepare", source, "--format", "xml", "--out", tmp_path / "x")
    assert unknown.returncode == 2 and "unknown format" in unknown.stderr


@pytest.mark.shared
@pytest.mark.parametrize("name, counts", [
    ("amazon2014-phones", {"users": 27879, "items": 10429, "interactions": 194439}),
    ("amazon2014-clothing", {"users": 39387, "items": 23033, "interactions": 278677}),
])
def test_real_amazon_sequences_prepare_to_the_published_counts(shared_data, tmp_path, name, counts):
    manifest = prepare(shared_data / name / "user_sequence.txt", "sequences", tmp_path / name,
                       PrepareConfig(kcore=5))
    assert manifest["counts"] == counts
    assert orjson.loads((tmp_path / name / "manifest.json").read_bytes())["counts"] == counts
    data = Dataset(tmp_path / name)
    first = (shared_data / name / "user_sequence.txt").read_text().split("\n", 1)[0].split()
    keys = pl.read_parquet(tmp_path / name / "items.parquet")["key"].to_list()
    user = pl.read_parquet(tmp_path / name / "users.parquet")["key"].to_list().index(first[0])
    assert [keys[i] for i in data.history(user)] == first[1:]


@pytest.mark.shared
def test_real_amazon2014_reviews_prepare(shared_data, tmp_path):
    source = shared_data / "amazon2014-phones" / "reviews_sample_5.json.gz"
    manifest = prepare(source, "amazon2014", tmp_path / "reviews", PrepareConfig())
    with gzip.open(source, "rt") as f:
        lines = sum(1 for line in f if line.strip())
    assert manifest["counts"]["interactions"] == lines  # no (user, item, time) repeats in the sample
    assert manifest["has_time"] is True and manifest["sources"][0]["sha256"]
    table = pl.read_parquet(tmp_path / "reviews" / "interactions.parquet")
    # every history is in time order
    assert table.group_by("user").agg(pl.col("timestamp").diff().min()).drop_nulls()["timestamp"].min() >= 0


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_a_killed_writer_left_is_cleaned_up_by_the_next_write(tmp_path):
    from mahn.io import atomic_dir, write_bytes

    out, dead, alive = tmp_path / "data", dead_pid(), os.getppid()
    (tmp_path / f".data.{dead}.x1.tmp").mkdir()  # a killed prepare's unfinished folder
    (tmp_path / f".data.{dead}.x1.tmp" / "part.parquet").write_bytes(b"half")
    (tmp_path / f".data.{alive}.x2.tmp").mkdir()  # another process still writing: not ours to remove
    (tmp_path / f".data.old-{dead}").mkdir()  # killed between moving the old result aside and the new one in
    (tmp_path / f".data.old-{dead}" / "manifest.json").write_bytes(b"{}")
    (tmp_path / f".file.json.{dead}.y.tmp").write_bytes(b"half")
    # the old result is back in place
    with pytest.raises(DataError, match="output directory exists"), atomic_dir(out):
        pass
    assert (out / "manifest.json").read_bytes() == b"{}"
    write_bytes(tmp_path / "file.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".data.{alive}.x2.tmp", "data", "file.json"])


def test_prepare_killed_at_random_points_leaves_no_orphans(tmp_path):
    """SIGKILL `mahn prepare` at a few points of its run; a rerun finishes and nothing temporary remains."""
    rows = "\n".join(f"u{u} " + " ".join(f"i{(u * 7 + k) % 300}" for k in range(12)) for u in range(3000))
    source = tmp_path / "seq.txt"
    source.write_text(rows + "\n")
    command = [sys.executable, "-m", "mahn", "prepare", str(source), "--format", "sequences", "--out",
               str(tmp_path / "out")]
    for delay in (0.3, 0.8, 1.5):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        if (tmp_path / "out").exists():
            shutil.rmtree(tmp_path / "out")
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "seq.txt"]
