"""One settings path: the CLI's flags, a TOML file, --set and `mahn reproduce` resolve to the same configs,
a setting shared by the model and the trainer reaches both, and the device is resolved the same everywhere."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import orjson
import pytest
import torch
from typer.testing import CliRunner

import mahn
from mahn.cli import app
from mahn.device import resolve_device
from mahn.errors import DataError
from mahn.models.sasrec import SASRecConfig
from mahn.reproduce.runs import BUDGETS, ReproduceConfig, Reproduction, Run
from mahn.settings import RunSettings, TrainConfig, defaults, parse_assignments, resolve
from synthetic import make_dataset


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "plain", users=24, items=18, length=6, modalities=())


def run_config(path: Path) -> dict:
    record = orjson.loads((path / "config.json").read_bytes())
    return {"model": record["model"], "model_config": record["model_config"], "train": record["train"]}


def test_cli_flags_toml_set_and_reproduce_give_identical_configs(plain, tmp_path):
    quick = BUDGETS["quick"]
    runner = CliRunner()
    flags = ["--model", "sasrec", "--max-len", "7", "--seed", "2", "--epochs", str(quick.epochs),
             "--patience", str(quick.patience), "--batch-size", "16", "--no-progress", "--set", "dropout=0.3"]
    by_flags = runner.invoke(app, ["train", str(plain), "--out", str(tmp_path / "flags"), *flags])
    assert by_flags.exit_code == 0, by_flags.output

    toml = tmp_path / "settings.toml"
    toml.write_text(f'model = "sasrec"\nmax_len = 7\nseed = 2\nepochs = {quick.epochs}\npatience = {quick.patience}\n'
                    "batch_size = 16\ndropout = 0.3\nprogress = false\n")
    by_toml = runner.invoke(app, ["train", str(plain), "--out", str(tmp_path / "toml"), "--config", str(toml)])
    assert by_toml.exit_code == 0, by_toml.output

    reproduction = Reproduction(plain, ReproduceConfig(out=tmp_path / "report", budget="quick", batch_size=16))
    run = Run("sasrec", 2).with_settings(max_len=7, dropout=0.3)
    settings = reproduction.settings(run)
    by_reproduce = {"model": settings.model, "model_config": asdict(settings.model_config),
                    "train": asdict(settings.train)}

    assert run_config(tmp_path / "flags") == run_config(tmp_path / "toml") == by_reproduce
    # the shared window reaches SASRec's positional table too (it used to stay at 50 through reproduce)
    assert by_reproduce["model_config"]["max_len"] == 7 == by_reproduce["train"]["max_len"]
    assert by_reproduce["model_config"]["dropout"] == 0.3


def test_later_layers_win_and_none_means_not_given():
    settings = resolve(("file", {"model": "sasrec", "dim": 32, "lr": 0.01}), ("flags", {"dim": None, "lr": 0.002}),
                       ("--set", {"heads": 2}))
    assert settings.model_config.dim == 32 and settings.model_config.heads == 2
    assert settings.train.lr == 0.002
    assert resolve().model == "mahn" and resolve().flat() == {"model": "mahn", **defaults("mahn")}


def test_shared_setting_defaults_come_from_one_declaration():
    plain = resolve(("x", {"model": "bert4rec"}))
    assert plain.model_config.max_len == plain.train.max_len == TrainConfig().max_len == SASRecConfig().max_len
    with pytest.raises(DataError, match="max_len is one setting shared"):
        RunSettings("sasrec", SASRecConfig(max_len=50), TrainConfig(max_len=200))


@pytest.mark.parametrize("layer, message, where", [
    ({"dimension": 8}, "unknown setting.*dimension", "my.toml"),
    ({"model": "sasrec", "rec_weight": 0.1}, "unknown setting.*rec_weight", "my.toml"),  # a MAHN-only setting
    ({"dim": "abc"}, "dim must be int, got 'abc'", "my.toml"),
    ({"lr": True}, "lr must be float", "my.toml"),
    ({"model": "nope"}, "unknown model 'nope'", "--model"),
])
def test_bad_settings_name_the_setting_and_where_it_came_from(layer, message, where):
    with pytest.raises(DataError, match=message) as error:
        resolve(("my.toml", layer))
    assert str(error.value).startswith(where)


def test_set_values_are_read_as_toml_scalars():
    assert parse_assignments(["dropout=0.5", "loss=top1-max", "heads=2", "x='q'"]) == \
        {"dropout": 0.5, "loss": "top1-max", "heads": 2, "x": "q"}
    with pytest.raises(DataError, match="KEY=VALUE"):
        parse_assignments(["dropout"])


def test_model_errors_name_a_way_to_set_them_that_exists():
    """Settings without a flag of their own are named as --set KEY=..., never as a flag that does not exist."""
    result = CliRunner().invoke(app, ["train", "--help"])
    flags = set(result.output.replace(",", " ").split())
    for layer in ({"model": "sasrec", "blocks": 0}, {"model": "gru4rec", "dropout": 1.5},
                  {"model": "mvrnn", "id_dim": 0}, {"model": "caser", "window": 0}):
        with pytest.raises(DataError) as error:
            resolve(("x", layer))
        where = error.value.where
        named = [word for word in where.replace("/", " ").split() if word.startswith("--")]
        assert named and all(word in flags or word == "--set" for word in named), where
        assert "--set" in where


def test_device_resolution_everywhere(plain, tmp_path):
    with pytest.raises(DataError, match="unknown device"):
        resolve_device("abacus")
    with pytest.raises(DataError, match="unsupported device"):
        resolve_device("meta")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")

    run = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(plain), "--out", str(run), "--model", "sasrec", "--dim", "8",
                                  "--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    assert mahn.load(run, device="cpu").model.device.type == "cpu"
    cpu = runner.invoke(app, ["evaluate", str(run), "--json", "--device", "cpu"])
    assert cpu.exit_code == 0, cpu.output
    auto = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert orjson.loads(auto.output)["uni100"] == pytest.approx(orjson.loads(cpu.output)["uni100"], rel=1e-5)
    for command in (["evaluate", str(run)], ["recommend", str(run), "--history", "i000"]):
        bad = runner.invoke(app, [*command, "--device", "abacus"])
        assert isinstance(bad.exception, DataError) and "--device" in str(bad.exception)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            mahn.load(run, device="cuda")


def test_defaults_quoted_in_the_cli_help_are_the_declared_ones():
    """`mahn train --help` quotes each default in brackets; they must be the values the resolver uses."""
    import re

    import typer

    from mahn.settings import DEFAULT_MODEL, TRAIN_FLAGS

    declared = defaults("mahn") | {"model": DEFAULT_MODEL}
    command = typer.main.get_command(app).commands["train"]
    checked_names = []
    for param in command.params:
        quoted = re.search(r"\[([^\]]+)\]\.?$", param.help or "")
        if not quoted or param.name in ("device",):
            continue
        name = param.name
        value = quoted.group(1).split(";")[0].strip()
        assert name in declared, param.name
        expected = declared[name]
        if isinstance(expected, bool):
            assert value == ("on" if expected else "off"), (param.name, value, expected)
        else:
            assert value == str(expected) or float(value) == expected, (param.name, value, expected)
        checked_names.append(name)
    assert {"batch_size", "lr", "weight_decay", "max_len", "patience", "epochs", "dim", "rec_weight"} <= set(
        checked_names)
    # the flags the resolver and its error messages know are exactly the train command's setting options
    options = {p.name: p.opts[0] if len(p.opts) == 1 and not p.secondary_opts else "/".join(p.opts + p.secondary_opts)
               for p in command.params}
    assert {name: options[name] for name in TRAIN_FLAGS} == TRAIN_FLAGS
    not_settings = {"dataset", "out", "config", "preset", "set_", "resume", "force", "nproc", "track", "track_uri"}
    assert set(options) - not_settings == set(TRAIN_FLAGS)
    reproduce = typer.main.get_command(app).commands["reproduce"]
    batch = next(p for p in reproduce.params if p.name == "batch_size")
    assert f"[the trainer's: {TrainConfig.batch_size}]" in batch.help
