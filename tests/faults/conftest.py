"""Everything under tests/faults/ is the counted fault suite: `pytest -m faults` runs it alone."""

import shutil

import pytest
from harness import run


def pytest_collection_modifyitems(items):
    for item in items:
        if "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def shop(tmp_path_factory) -> dict:
    """A small demo shop, made with mahn's own commands: raw files; a prepared dataset without features
    (`bare`) and an older one (`other`, another seed); one with real image and title features (`data`);
    a trained MAHN run on it (`run`); and new items to add to it (`new.csv`)."""
    from mahn.demo.shop import generate_demo

    root = tmp_path_factory.mktemp("shop")
    raw = root / "raw"
    generate_demo(raw, users=200, items=40, seed=0)
    prepare = ["prepare", str(raw / "interactions.csv"), "--format", "csv", "--items", str(raw / "items.csv"),
               "--time-col", "timestamp", "--negatives", "20"]
    run([*prepare, "--out", str(root / "bare")], root / "prepare.log")
    run([*prepare, "--out", str(root / "other"), "--seed", "1"], root / "prepare.log")
    shutil.copytree(root / "bare", root / "data")
    run(["features", str(root / "data"), "--no-progress", "--workers", "1"], root / "features.log")
    run(["train", str(root / "data"), "--out", str(root / "run"), "--model", "mahn", "--dim", "8", "--epochs", "2",
         "--threads", "1", "--no-progress"], root / "train.log")
    (root / "new.csv").write_text("key,title,image\nnew0,red lamp,raw/images/item0001.png\n"
                                  "new1,blue mug,raw/images/item0002.png\n")
    return {"root": root, "raw": raw, "prepare": prepare}
