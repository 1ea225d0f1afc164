"""Every setting of a training run, declared and resolved in one place.

A run's settings form one flat mapping: `model` (a registered name), the model's settings (the
fields of its `Config` dataclass, listed by `mahn models --settings`) and the trainer's (`TrainConfig`
below). They arrive in layers, each overriding the ones before it: the declared defaults, then a
`mahn reproduce` budget, a TOML file, the command-line flags, and `--set KEY=VALUE`. A key that the
model and the trainer both declare (`max_len`, the history window) is one setting given to both, so
a position-aware model's table always covers what the trainer and the evaluator feed it.

Every entry point (`mahn train`, `mahn reproduce`, the demo, the Python API) goes through `resolve`.
"""

from __future__ import annotations

import tomllib
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from mahn.errors import DataError
from mahn.models import model_class
from mahn.models.base import MAX_LEN

DEFAULT_MODEL = "mahn"

# Named bundles of settings, applied right after the declared defaults (a budget, TOML, flags and --set
# still override them). "*" applies to every model. `paper` is the MAHN paper's configuration and each
# baseline's own paper's, for reproducing the published numbers; docs/model.md lists where the
# defaults depart from it and the experiment behind each departure.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "*": {"optimizer": "adam", "embedding_decay": True, "weight_decay": 1e-4, "lr": 1e-3, "lr_schedule": "step",
              "lr_step": 10, "lr_gamma": 0.5, "epochs": 100, "patience": 5, "patience_steps": 0},
        "mahn": {"loss": "bpr", "feature_norm": "none", "rec_weight": 1.0, "skip_untrained": False},
        "sasrec": {"loss": "bce"},
        "gru4rec": {"loss": "bpr-max"},
        "caser": {"loss": "bce"},
    },
}
# Each model's trainer settings where they depart from TrainConfig's, applied right above the declared defaults
# (a preset, a budget, TOML, flags and --set override them). Chosen on validation across every dataset we have;
# the experiments behind each value: docs/investigations/defaults.md.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # a slow learner: its validation score climbs in small steps with long pauses, and on a small dataset it was
    # still climbing at the common cap of 500 epochs (H&M, 3 steps an epoch: best epoch 483); patience ends it.
    # Its rate falls to 0.3 of itself after 5 epochs and 250 steps without a better score: on validation as good
    # as the constant rate or better on four datasets of five (Phones +4%), 1.4% below on H&M
    "bert4rec": {"patience": 20, "epochs": 2000, "lr_schedule": "plateau", "lr_step": 5, "lr_gamma": 0.3,
                 "plateau_steps": 250},
}
SELECT = ("full", "uni100")
SCHEDULES = ("constant", "step", "plateau")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "lazy-adam")


@dataclass
class TrainConfig:
    """The trainer's settings (model-agnostic)."""

    epochs: int = 500  # upper bound (a small dataset needs many: H&M is 3 steps an epoch); early stopping ends sooner
    batch_size: int = 256  # sequences per step (the paper used 5: slow on CPU, reachable by flag)
    lr: float = 1e-3
    weight_decay: float = 1e-4  # the paper's "regularisation": L2 on weight matrices and embeddings, not biases
    optimizer: str = "adam"  # adam: L2 added to the gradient (the paper's); adamw: decay decoupled from Adam's scaling
    # lazy-adam: adam, but an embedding table's rows move only in steps that look them up (training/lazy_adam.py)
    embedding_decay: bool = True  # whether embedding tables are decayed too (False: only the other matrices)
    # constant; step: the rate times lr_gamma every lr_step epochs (the paper's StepLR, which counts epochs, not
    # steps: at a few steps an epoch it starves a small dataset); plateau: times lr_gamma after lr_step epochs
    # without a better validation score
    lr_schedule: str = "constant"
    lr_step: int = 10
    lr_gamma: float = 0.5
    # plateau: a cut also waits for this many optimiser steps without a better score, as early stopping does
    # (at 3 steps an epoch, 5 epochs are 15 steps); 0: epochs only
    plateau_steps: int = 0
    max_len: int = MAX_LEN  # histories are cut to their last max_len items
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping...
    # ...and steps: on a small dataset an epoch is a few steps, and a model still learning looks flat for a few
    # epochs (docs/investigations/defaults.md)
    patience_steps: int = 500
    select: str = "full"  # protocol whose validation NDCG@10 picks the checkpoint: full or uni100
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N; results differ across devices
    progress: bool = True  # a live bar on a terminal; one line per epoch otherwise
    precision: str = "fp32"  # fp32, or bf16: the forward pass under bfloat16 autocast (for GPUs that have it)

    def __post_init__(self) -> None:
        if self.select not in SELECT:
            raise DataError("select must be 'full' or 'uni100'", "--select")
        if self.precision not in PRECISIONS:
            raise DataError(f"precision must be one of {', '.join(PRECISIONS)}", "--set precision=...")
        if self.lr_schedule not in SCHEDULES:
            raise DataError(f"lr_schedule must be one of {', '.join(SCHEDULES)}", "--lr-schedule")
        if self.optimizer not in OPTIMIZERS:
            raise DataError(f"optimizer must be one of {', '.join(OPTIMIZERS)}", "--set optimizer=...")
        for name in ("epochs", "batch_size", "max_len", "patience", "lr_step"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be at least 1", setting_source(name))
        # lr 0 is allowed: a frozen model, a probe
        for name in ("lr", "weight_decay", "threads", "patience_steps", "plateau_steps"):
            if getattr(self, name) < 0:
                raise DataError(f"{name} must not be negative", setting_source(name))
        if self.lr_gamma <= 0:
            raise DataError("lr_gamma must be positive", "--lr-gamma")


@dataclass(frozen=True)
class RunSettings:
    """The resolved settings of one run: the model's name and config, and the trainer's config."""

    model: str
    model_config: Any
    train: TrainConfig

    def __post_init__(self) -> None:
        for key in sorted(model_keys(self.model) & TRAIN_KEYS):
            ours, theirs = getattr(self.model_config, key), getattr(self.train, key)
            if ours != theirs:
                raise DataError(f"{key} is one setting shared by the model and the trainer, "
                                f"but the model has {ours!r} and the trainer {theirs!r}", setting_source(key))

    def flat(self) -> dict[str, Any]:
        """One flat dict (model, then the model's and the trainer's settings), as a TOML file would hold it."""
        return {"model": self.model, **asdict(self.model_config), **asdict(self.train)}


Layer = tuple[str, Mapping[str, Any]]  # (where it came from, e.g. a file name or "--set"; settings)


# the settings `mahn train` takes as flags of their own (--lambda for rec_weight); every other one is --set KEY=VALUE
TRAIN_FLAGS = {"model": "--model", "variant": "--variant", "ablate": "--ablate", "dim": "--dim",
               "rec_weight": "--lambda", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
               "weight_decay": "--weight-decay", "lr_schedule": "--lr-schedule", "lr_step": "--lr-step",
               "lr_gamma": "--lr-gamma", "max_len": "--max-len", "patience": "--patience", "select": "--select",
               "seed": "--seed", "threads": "--threads", "device": "--device", "progress": "--progress/--no-progress"}


def setting_source(name: str) -> str:
    """How a user sets `name` on the command line (for error messages)."""
    return TRAIN_FLAGS.get(name, f"--set {name}=...")


def model_keys(model: str) -> set[str]:
    return {f.name for f in fields(model_class(model).Config)}


TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def defaults(model: str) -> dict[str, Any]:
    """Every default of `model` and of the trainer (with the model's own trainer defaults), as one flat dict."""
    return asdict(model_class(model).Config()) | asdict(TrainConfig()) | MODEL_DEFAULTS.get(model, {})


# settings an older run's config.json lacks (or holds as null) because it was trained before they existed, with
# the value that reproduces what the code did then ("*": every model); a setting added without changing
# behaviour needs no entry. MAHN trained with BPR and SASRec with BCE before 2cf2c31, Caser with BCE before c4b0bd2.
BEFORE_IT_EXISTED: dict[str, dict[str, Any]] = {
    "*": {"patience_steps": 0, "skip_untrained": False, "impute_ids": False, "feature_dropout": 0.0,
          "content_dropout": 0.0, "gates": True, "content_projection": "learned"},
    "mahn": {"loss": "bpr"}, "sasrec": {"loss": "bce"}, "caser": {"loss": "bce"},
}
HOW_NOT_WHAT = frozenset({"threads", "device", "progress"})  # how a run computes, not what it learns


def as_trained(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of the run whose config.json is `record`, as one flat dict; what an older record lacks is
    filled in as the code then behaved."""
    model = record["model"]
    saved = {**record["model_config"], **record["train"]}
    if saved.get("lr_schedule") is None:  # before lr_schedule: StepLR, constant when lr_gamma was 1
        saved["lr_schedule"] = "constant" if saved.get("lr_gamma") == 1 else "step"
    before = BEFORE_IT_EXISTED["*"] | BEFORE_IT_EXISTED.get(model, {})
    every = asdict(model_class(model).Config()) | asdict(TrainConfig())
    return {key: before.get(key, default) if saved.get(key) is None else saved[key] for key, default in every.items()}


def inert(model: str, values: Mapping[str, Any]) -> set[str]:
    """The settings of a `model` run that change nothing given the others (a constant rate has no step or factor;
    a model with nothing to learn has no trainer settings), and those that change how a run computes rather than
    what it learns."""
    unused = set(HOW_NOT_WHAT)
    if not model_class(model).trainable:
        return unused | TRAIN_KEYS
    if values.get("lr_schedule") == "constant":
        unused |= {"lr_step", "lr_gamma"}
    if values.get("lr_schedule") != "plateau":
        unused.add("plateau_steps")
    return unused


def preset_layer(preset: str | None, model: str) -> Layer:
    """The preset's settings for `model` (its "*" entries, then the model's own), as a layer."""
    if preset is None:
        return ("no preset", {})
    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", "--preset")
    chosen = PRESETS[preset]
    values = chosen.get("*", {}) | chosen.get(model, {})
    return (f"preset {preset}", {k: v for k, v in values.items() if k in model_keys(model) | TRAIN_KEYS})


def resolve(*layers: Layer, preset: str | None = None) -> RunSettings:
    """Merge the layers (later ones win; None means "not given") into a model config and a TrainConfig.

    `preset` (a name in PRESETS) comes first, right above the model's own defaults (MODEL_DEFAULTS), which are
    right above the declared ones. Unknown keys and
    values of the wrong type are a DataError naming the layer they came from.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in layers:
        for key, value in values.items():
            if value is not None:
                merged[key], origin[key] = value, where
    model = merged.pop("model", DEFAULT_MODEL)
    if not isinstance(model, str):
        raise DataError(f"model must be a name, got {model!r}", origin.get("model"))
    model_class(model)  # an unknown model fails here, naming --model
    for where, values in (preset_layer(preset, model), (f"{model}'s defaults", MODEL_DEFAULTS.get(model, {}))):
        for key, value in values.items():
            if key not in merged:
                merged[key], origin[key] = value, where
    config_class = model_class(model).Config
    own = model_keys(model)
    unknown = sorted(set(merged) - own - TRAIN_KEYS)
    if unknown:
        known = ", ".join(sorted({"model"} | own | TRAIN_KEYS))
        raise DataError(f"unknown setting(s) {', '.join(unknown)} for model {model!r}; known: {known}",
                        origin[unknown[0]])
    for cls in (config_class, TrainConfig):
        hints = get_type_hints(cls)
        for f in fields(cls):
            if f.name in merged:
                merged[f.name] = checked(f.name, merged[f.name], hints[f.name], origin[f.name])
    train = TrainConfig(**{k: v for k, v in merged.items() if k in TRAIN_KEYS})
    # a shared setting (max_len) is one value: the trainer's, default or given, reaches the model too
    shared = {k: getattr(train, k) for k in own & TRAIN_KEYS}
    model_config = config_class(**{k: v for k, v in merged.items() if k in own} | shared)
    return RunSettings(model, model_config, train)


def checked(name: str, value: Any, declared: Any, where: str) -> Any:
    """`value` as the declared type (int -> float is allowed), or a DataError that names the setting."""
    allowed = get_args(declared) if get_origin(declared) in (Union, types.UnionType) else (declared,)
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise DataError(f"setting {name} must be {names}, got {value!r}", where)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML settings file as a flat dict (a DataError names the file when it is missing or malformed)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid TOML ({e})", path) from e


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs; values are read as TOML (numbers, booleans, quoted strings), else as text."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise DataError(f"expected KEY=VALUE, got {assignment!r}", "--set")
        try:
            values[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text
    return values
