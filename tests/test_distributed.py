"""Training on many processes: `mahn train --nproc 2` (torchrun, DistributedDataParallel over gloo) trains
like one process, writes one run from rank 0, and resumes exactly; each rank's share of a batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

from mahn.cli import app
from mahn.evaluation import EvalConfig, evaluate
from mahn.models.base import Batch
from mahn.models.sasrec import SASRec, SASRecConfig
from mahn.training import load_run
from mahn.training.distributed import World, rank_part
from synthetic import make_dataset

SETTINGS = ["--dim", "16", "--batch-size", "64", "--max-len", "6", "--lr", "0.01", "--weight-decay", "0",
            "--no-progress", "--threads", "1"]


def test_the_ranks_shares_cover_a_batch_and_weigh_to_its_mean_loss():
    """Every rank builds the same batch and takes a contiguous share; the weighted losses, averaged over the
    ranks (what DDP does to the gradients), are the whole batch's mean loss, even when the shares hold
    different numbers of target positions or a rank has no row of its own."""
    torch.manual_seed(0)
    n_items = 30
    model = SASRec(SASRecConfig(dim=8, dropout=0.0, max_len=6), n_items)
    generator = torch.Generator().manual_seed(1)
    histories = torch.randint(0, n_items, (5, 6), generator=generator)
    targets = torch.randint(0, n_items, (5, 6), generator=generator)
    for row, pads in enumerate([0, 4, 1, 5, 2]):  # rows with 6, 2, 5, 1 and 4 target positions
        histories[row, :pads] = targets[row, :pads] = n_items
    negatives = torch.randint(0, n_items, (5, 6), generator=generator).masked_fill(targets == n_items, n_items)
    whole = Batch(histories, targets, negatives, torch.arange(5))
    for size, rows in ((2, 5), (3, 5), (4, 2)):
        batch = Batch(*(t[:rows] for t in (whole.histories, whole.targets, whole.negatives, whole.users)))
        parts = [rank_part(batch, World(rank=r, size=size), n_items) for r in range(size)]
        assert torch.cat([part.users for part, _, count in parts if count]).tolist() == list(range(rows))
        assert sum(count for _, _, count in parts) == rows
        assert [weight for _, weight, count in parts if not count] == [0.0] * (size - min(size, rows))
        averaged = sum(weight * model.loss(part) for part, weight, _ in parts) / size
        torch.testing.assert_close(averaged, model.loss(batch))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp") / "data", users=200, items=40, length=8)


def mahn_train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mahn", "train", str(data), "--out", str(out), *SETTINGS, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def history(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    return [{k: v for k, v in orjson.loads(line).items() if k in ("epoch", "loss", "valid")} for line in lines]


def test_two_gloo_processes_train_like_one_and_resume_exactly(data, tmp_path):
    mahn_train(data, tmp_path / "one", "--epochs", "6")
    two = mahn_train(data, tmp_path / "two", "--epochs", "6", "--nproc", "2")
    assert two.stdout.count("trained ") == 1  # rank 0 reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    summary = orjson.loads((tmp_path / "two" / "summary.json").read_bytes())
    assert summary["processes"] == 2 and summary["sequences"] == 6 * 200  # each epoch covers every user once
    # the same batches and the whole batch's gradient: the first epoch's loss is one process's, up to rounding
    first = [history(tmp_path / name)[0]["loss"] for name in ("one", "two")]
    assert abs(first[1] - first[0]) < 1e-4 * first[0], first
    results = {}
    for name in ("one", "two"):
        model, dataset, record = load_run(tmp_path / name, device="cpu")
        results[name] = evaluate(model, dataset, EvalConfig(split="test", max_len=6))
    for protocol in ("uni100", "full"):
        one, two_ = results["one"][protocol]["NDCG@10"], results["two"][protocol]["NDCG@10"]
        assert one > 0.3 and abs(two_ - one) / one < 0.02, (protocol, one, two_)  # random: well below 0.3

    # stopped after 3 epochs and resumed on 2 processes: the same epochs as the uninterrupted run
    mahn_train(data, tmp_path / "cut", "--epochs", "3", "--nproc", "2")
    mahn_train(data, tmp_path / "cut", "--epochs", "6", "--nproc", "2", "--resume")
    assert history(tmp_path / "cut") == history(tmp_path / "two")


def test_nproc_must_be_positive(data, tmp_path):
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "r"), "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc" in result.output


def test_a_step_on_two_processes_is_the_step_on_the_whole_batch():
    script = Path(__file__).with_name("ddp_step.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def test_bf16_autocast_trains(data, tmp_path):
    """`--set precision=bf16` runs the forward pass under bfloat16 autocast (meant for GPUs; CPUs have it too)."""
    from mahn.settings import resolve
    from mahn.training import train

    summary = train(data, tmp_path / "bf16", resolve(("t", {"model": "sasrec", "dim": 16, "epochs": 2, "max_len": 6,
                                                            "batch_size": 64, "precision": "bf16", "threads": 1,
                                                            "progress": False})))
    lines = (tmp_path / "bf16" / "metrics.jsonl").read_bytes().splitlines()
    first, last = (orjson.loads(line)["loss"] for line in lines)
    assert summary["epochs"] == 2 and np.isfinite(last) and last < first
    with pytest.raises(Exception, match="precision must be one of fp32, bf16"):
        resolve(("t", {"precision": "fp16"}))
