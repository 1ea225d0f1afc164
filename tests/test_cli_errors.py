"""Bad input to every command: exit code 2, one line `error: ...` on stderr naming the file, option or field,
no traceback, and nothing written. Each case goes through `mahn.cli.main`, the console entry point, in this
process (sys.argv patched), so the DataError -> exit code 2 path is the one tested."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from console import run_mahn
from mahn.cli import app
from mahn.settings import resolve
from mahn.training import train
from synthetic import make_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder with a dataset with features (data), one without (nofeat), a trained run, an empty folder,
    a file that is no dataset, broken items files and a folder that is no demo."""
    root = tmp_path_factory.mktemp("cli-errors")
    data = make_dataset(root / "data", users=40, items=20, length=6)
    make_dataset(root / "nofeat", users=20, items=20, length=5, modalities=())
    train(data, root / "run", resolve(("t", {"dim": 8, "epochs": 1, "batch_size": 32, "max_len": 6,
                                             "progress": False, "threads": 1})))
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a dataset\n")
    (root / "items-badcol.csv").write_text("kee,title\nnew,A new item\n")
    (root / "items-extra.csv").write_text("key,title\nnew,A new item,surplus\n")
    (root / "mine").mkdir()
    (root / "mine" / "keep.txt").write_text("not the demo's\n")
    return root


def case(args: list[str], fragments: list[str]):
    """A command line (paths relative to `root`) and the fragments its error line must hold."""
    return pytest.param(args, fragments, id=" ".join(args))


CASES = [
    case(["prepare", "missing.csv", "--format", "csv", "--out", "prepared"], ["missing.csv: file not found"]),
    case(["prepare", "notes.txt", "--format", "csv", "--out", "prepared"], ["notes.txt: no interactions column"]),
    case(["prepare", "notes.txt", "--format", "nope", "--out", "prepared"], ["unknown format 'nope'", "csv"]),
    case(["prepare", "notes.txt", "--format", "csv", "--out", "prepared", "--negatives", "0"], ["--negatives >= 1"]),
    case(["negatives", "empty"], ["empty: not a prepared dataset (no manifest.json)"]),
    case(["negatives", "data", "--count", "0"], ["--count must be at least 1, got 0"]),
    case(["cold-split", "data", "--out", "cold", "--fraction", "-0.5"], ["--fraction:", "between 0 and 1, got -0.5"]),
    case(["cold-split", "notes.txt", "--out", "cold"], ["notes.txt: not a prepared dataset"]),
    case(["cold-split", "data", "--out", "nofeat"], ["nofeat: output directory exists"]),
    case(["info", "empty"], ["empty: not a prepared dataset (no manifest.json)"]),
    case(["info", "no-such-dir"], ["no-such-dir: not a prepared dataset"]),
    case(["demo-data", "--out", "shop", "--users", "0"], ["users: must be an integer >= 10, got 0"]),
    case(["demo-data", "--out", "mine"], ["mine: output directory exists"]),
    case(["features", "empty"], ["empty: not a prepared dataset"]),
    case(["features", "nofeat", "--chunk-size", "0"], ["--chunk-size must be at least 1, got 0"]),
    case(["features", "nofeat", "--image", "bogus", "--text", "none"], ["unknown image encoder 'bogus'"]),
    case(["features", "nofeat", "--dtype", "float8"], ["--dtype must be float32 or float16, got 'float8'"]),
    case(["features-grid", "nofeat", "--out", "grid.png"], ["nofeat: no 'image' features"]),
    case(["features-grid", "data", "--out", "grid.png", "--queries", "0"], ["--queries must be at least 1, got 0"]),
    case(["features-grid", "data", "--out", "grid.png", "--item", "99"], ["data: item 99 is not in 0..19"]),
    case(["train", "data", "--out", "trained", "--epochs", "0"], ["--epochs: epochs must be at least 1"]),
    case(["train", "data", "--out", "trained", "--model", "nosuch"], ["--model: unknown model 'nosuch'", "mahn"]),
    case(["train", "empty", "--out", "trained"], ["empty: not a prepared dataset"]),
    case(["train", "data", "--out", "run"], ["run: run directory exists", "--resume", "--force"]),
    case(["evaluate", "no-such-run"], ["no-such-run/config.json: file not found"]),
    case(["evaluate", "data"], ["data/config.json: file not found"]),
    case(["evaluate", "run", "--split", "bogus"], ["--split: unknown split 'bogus'"]),
    case(["evaluate", "run", "--protocols", "uni100,top5"], ["--protocols: unknown protocol(s) top5"]),
    case(["evaluate", "run", "--new-item-boost", "-1"], ["new_item_boost must be between 0 and 20, got -1.0"]),
    case(["evaluate", "run", "--new-item-boost", "1"], ["--new-item-boost: a new-item boost needs a dataset with new"]),
    case(["recommend", "run", "--history", "i001 nosuch"], ["items.parquet: unknown item key(s): nosuch"]),
    case(["recommend", "run", "--history", "i001", "-k", "0"], ["k must be between 1 and", "got 0"]),
    case(["recommend", "run", "--history", "i001", "-k", "2", "--new-item-places", "3"],
         ["new_item_places must be between 0 and k (2), got 3"]),
    case(["recommend", "run", "--history", "i001", "--new-item-boost", "-1"],
         ["new_item_boost must be between 0 and 20, got -1.0"]),
    case(["serve", "no-such-run"], ["no-such-run/config.json: file not found"]),
    case(["serve", "run", "--port", "70000"], ["--port must be between 0 and 65535, got 70000"]),
    case(["serve", "run", "--index", "annoy"], ["--index: unknown index 'annoy'"]),
    case(["export", "run", "--format", "tflite", "--out", "exported"],
         ["--format: unknown format 'tflite'; choose onnx"]),
    case(["export", "no-such-run", "--out", "exported"], ["no-such-run: not a training run (no config.json)"]),
    case(["serve", "run", "--host", "0.0.0.0"], ["--host: 0.0.0.0 is reachable", "--token-file", "--read-only"]),
    case(["serve", "run", "--protect", "everything"], ["--protect: must be writes or all"]),
    case(["serve", "run", "--protect", "all"], ["--protect: --protect all needs a token"]),
    case(["serve", "run", "--token-file", "notes.txt"], ["notes.txt: the token must be at least 16"]),
    case(["add-items", "run", "--items", "items-badcol.csv"], ["items-badcol.csv:1: unknown column 'kee'"]),
    case(["add-items", "run", "--items", "items-extra.csv"], ["items-extra.csv:2: more values than columns"]),
    case(["add-items", "run", "--items", "missing.csv"], ["missing.csv: items file not found"]),
    case(["add-items", "run", "--items", "notes.txt"], ["notes.txt: unknown items file type '.txt'"]),
    case(["demo", "--out", "mine"], ["mine: not empty and not a demo folder (it holds keep.txt)"]),
    case(["demo", "--out", "demo-out", "--epochs", "0"], ["--epochs must be at least 1, got 0"]),
    case(["demo", "--out", "tiny", "--users", "10"], ["--users: a shop of 10 users", "give more --users"]),
    case(["reproduce", "data", "--out", "report", "--experiments", "bogus"],
         ["--experiments: unknown experiment(s) bogus"]),
    case(["reproduce", "data", "--out", "report", "--models", "mahn,nosuch"], ["--models: unknown model(s) nosuch"]),
    case(["reproduce", "data", "--out", "report", "--budget", "huge"], ["--budget must be one of", "quick"]),
    case(["reproduce", "empty", "--out", "report"], ["empty: not a prepared dataset"]),
    case(["tune", "data", "--model", "nosuch", "--trials", "2", "--out", "tuned"], ["--model: unknown model 'nosuch'"]),
    case(["tune", "data", "--model", "sasrec", "--trials", "0", "--out", "tuned"], ["--trials: trials must"]),
    case(["tune", "empty", "--model", "sasrec", "--trials", "2", "--out", "tuned"], ["empty: not a prepared dataset"]),
]
# commands that take no value that could be wrong: an unknown option, refused by Typer itself
USAGE_CASES = [case(["models", "--bogus"], ["No such option: --bogus"])]


def state(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under root: files with their mtime and size, folders as present."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
            for p in root.rglob("*")}


@pytest.fixture
def in_root(root, monkeypatch):
    """Run from `root`; `serve` must never take a port; what the commands change in os.environ is put back."""
    monkeypatch.delenv("MAHN_SERVE_TOKEN", raising=False)
    import uvicorn

    from mahn.serve import process

    def bound(*args, **kwargs):
        raise AssertionError("serve took a port on bad input")

    monkeypatch.setattr(uvicorn, "run", bound)
    monkeypatch.setattr(process, "run_workers", bound)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.chdir(root)
    return root


def test_every_command_has_a_bad_input_case():
    commands = set(typer.main.get_command(app).commands)
    covered = {param.values[0][0] for param in CASES + USAGE_CASES}
    assert commands == covered


@pytest.mark.parametrize("args, fragments", CASES)
def test_bad_input_is_one_line_naming_it(in_root, monkeypatch, capsys, args, fragments):
    before = state(in_root)
    code, out, err = run_mahn(monkeypatch, capsys, args)
    assert "Traceback" not in out + err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    written = {path for path, stamp in state(in_root).items() if before.get(path, "new") != stamp}
    assert not written


@pytest.mark.parametrize("args, fragments", USAGE_CASES)
def test_unknown_option_is_a_usage_error(in_root, monkeypatch, capsys, args, fragments):
    code, out, err = run_mahn(monkeypatch, capsys, args)
    assert code == 2
    assert "Traceback" not in out + err
    assert "Usage: " in err and f" {args[0]} [OPTIONS]" in err  # the program name is how pytest was started
    for fragment in fragments:
        assert fragment in err


def test_help_shows_each_default_in_brackets():
    """Rich markup once ate "[mahn]" and "[half the cores]" from the help (read as style tags)."""
    from typer.testing import CliRunner

    def help_of(command: str) -> str:
        return " ".join(CliRunner().invoke(app, [command, "--help"], terminal_width=200).output.split())

    assert "Model name (`mahn models` lists them) [mahn]." in help_of("train")
    assert "Image-decoding threads [half the cores]." in help_of("features")


def test_features_grid_says_how_many_neighbours_it_drew(root, tmp_path, monkeypatch, capsys):
    code, out, err = run_mahn(monkeypatch, capsys, ["features-grid", str(root / "data"), "--out",
                                                str(tmp_path / "grid.png"), "--k", "50", "--queries", "2"])
    assert code in (0, None), err
    assert "2 queries x 19 neighbours by image (asked for 50; only 19 other items have image features)" in out
    from PIL import Image

    from mahn.features.grid import THUMB_W

    assert Image.open(tmp_path / "grid.png").width == (1 + 19) * THUMB_W  # the query and 19 neighbours, no blanks
