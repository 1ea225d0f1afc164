"""SIGKILL every long mahn command at random points, rerun it as a user would, and count: the final
artifacts must equal an uninterrupted run's (sha256), nothing temporary may remain, and an output
written atomically must, after every kill, be either absent (as before) or complete.

`python scripts/fault_report.py` runs this suite with more kills and prints the table in
docs/reliability.md; here each command gets its CI share (ledger.scaled).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time

import pytest
from harness import Tally, digest, finish, forked, kill, kill_and_rerun, orphans, reference_run, run, trials
from ledger import scaled

from mahn.io import read_json
from synthetic import make_dataset

pytestmark = pytest.mark.slow


def test_prepare_killed_anywhere_leaves_the_old_output_or_the_new_one(shop, tmp_path):
    out = tmp_path / "out"
    argv = [*shop["prepare"], "--out", str(out), "--force"]

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    reference, seconds = reference_run(argv, tmp_path, reset, out)
    tally = Tally("prepare")

    def after_kill():  # atomic: nothing, or the whole dataset
        if out.exists():
            tally.compare(digest(out), reference, "after a kill")

    trials(tally, argv, tmp_path, reset, out, reference, seconds, scaled(60), seed=1, after_kill=after_kill)
    finish(tally)


def test_features_killed_anywhere_resume_to_the_same_bytes(shop, tmp_path):
    data = tmp_path / "data"
    argv = ["features", str(data), "--no-progress", "--workers", "1", "--chunk-size", "8"]

    def reset():
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(shop["root"] / "bare", data)

    reference, seconds = reference_run(argv, tmp_path, reset, data)
    tally = Tally("features")
    trials(tally, argv, tmp_path, reset, data, reference, seconds, scaled(3), seed=2)
    finish(tally)


def test_reproduce_killed_anywhere_keeps_every_finished_run(tmp_path):
    data = make_dataset(tmp_path / "data", users=60, items=30)
    out = tmp_path / "report"
    argv = ["reproduce", str(data), "--out", str(out), "--budget", "quick", "--seeds", "1", "--models",
            "popularity,sasrec", "--experiments", "compare", "--threads", "1", "--no-progress"]

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    skip = lambda p: p.suffix in (".md", ".png")  # noqa: E731 - the report quotes timings; its numbers are in JSON
    reference, seconds = reference_run(argv, tmp_path, reset, out, skip)
    tally = Tally("reproduce")
    trials(tally, argv, tmp_path, reset, out, reference, seconds, scaled(25), seed=4, skip=skip)
    finish(tally)


def test_add_items_killed_anywhere_leaves_the_run_as_it_was_or_with_every_item(shop, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["add-items", str(run_dir), "--items", str(shop["root"] / "new.csv")]

    def reset():
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(shop["root"] / "run", run_dir)

    before = digest(shop["root"] / "run")
    reference, seconds = reference_run(argv, tmp_path, reset, run_dir)
    assert set(reference) - set(before), "the add wrote nothing"
    tally = Tally("add-items")

    def after_kill():  # atomic: the run as it was, or with every new item
        now = digest(run_dir)
        if now != before:
            tally.compare(now, reference, "after a kill")

    rng = random.Random(5)
    while tally.injected < scaled(5):
        reset()
        tally.injected += kill_and_rerun(argv, tmp_path / "attempt.log", seconds, 1, rng, after_kill,
                                         landed=lambda: digest(run_dir) == reference)
        tally.end_trial(digest(run_dir), reference, orphans(tmp_path))
    finish(tally)


def test_a_server_killed_while_adding_items_restarts_with_the_run_as_it_was_or_with_every_item(shop, tmp_path):
    import threading

    import httpx

    from servers import free_port

    run_dir = tmp_path / "run"
    items = [{"key": "new0", "title": "red lamp", "image": "images/item0001.png"},
             {"key": "new1", "title": "blue mug", "image": "images/item0002.png"}]

    def reset():
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(shop["root"] / "run", run_dir)

    def start():
        port = free_port()
        server = forked(["serve", str(run_dir), "--port", str(port), "--threads", "1", "--images-root",
                         str(shop["raw"])], tmp_path / "server.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.is_alive(), (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return server, f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")

    def add(url: str) -> None:
        response = httpx.post(f"{url}/items", json={"items": items}, timeout=120)
        assert response.status_code == 200, response.text

    def add_cut_short(url: str) -> None:  # the server dies under it
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/items", json={"items": items}, timeout=120)

    before = digest(shop["root"] / "run")
    reset()
    server, url = start()
    started = time.monotonic()
    add(url)
    seconds = time.monotonic() - started
    kill(server)
    reference = digest(run_dir)
    assert set(reference) - set(before), "the add wrote nothing"

    tally = Tally("serve (add items)")
    rng = random.Random(6)
    while tally.injected < scaled(4):
        reset()
        server, url = start()
        request = threading.Thread(target=add_cut_short, args=(url,), daemon=True)
        request.start()
        time.sleep(rng.uniform(0, seconds))
        tally.injected += server.is_alive()
        kill(server)
        request.join()
        cut = digest(run_dir)
        if cut not in (before, reference):
            tally.compare(cut, reference, "after a kill")
        server, url = start()
        if cut == before:  # the add did not land: the client sends it again
            add(url)
        kill(server)
        tally.end_trial(digest(run_dir), reference, orphans(run_dir))
    finish(tally)


def test_tune_killed_anywhere_finishes_with_the_trials_it_was_asked_for(tmp_path):
    """A tune cannot end byte for byte as an unkilled one (a cut trial is marked FAIL and its settings tried again
    in a new trial), so its promise is checked instead: as many trained trials as asked for, each with a whole
    run folder, and best.toml the settings of the best of them."""
    from mahn.settings import read_toml

    data = make_dataset(tmp_path / "data", users=40, items=20, modalities=())
    out = tmp_path / "tuned"
    argv = ["tune", str(data), "--model", "gru4rec", "--trials", "3", "--out", str(out), "--set", "epochs=2",
            "--set", "batch_size=8", "--set", "dim=8", "--set", "max_len=6", "--set", "threads=1"]

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    def promise() -> dict[str, str]:
        summary = read_json(out / "tune.json")
        done = [t for t in summary["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
        whole = all((out / "trials" / f"{t['same_as'] if t['same_as'] is not None else t['number']:04d}"
                     / "summary.json").is_file() for t in done if t["state"] == "COMPLETE")
        best = max(done, key=lambda t: t["valid_full_ndcg10"])
        saved = read_toml(out / "best.toml")
        trained = [t for t in done if t["same_as"] is None]
        return {"trained": str(summary["trained"]), "asked": str(len(trained)), "whole runs": str(whole),
                "best.toml": str(all(saved[k] == v for k, v in best["settings"].items()))}

    reset()
    seconds = run(argv, tmp_path / "reference.log")
    reference = promise()
    assert reference == {"trained": "3", "asked": "3", "whole runs": "True", "best.toml": "True"}
    tally = Tally("tune")
    rng = random.Random(6)
    while tally.injected < scaled(5):
        reset()
        tally.injected += kill_and_rerun(argv, tmp_path / "attempt.log", seconds, rng.randint(1, 3), rng)
        tally.end_trial(promise(), reference, orphans(tmp_path))
    finish(tally)
