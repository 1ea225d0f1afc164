"""`mahn reproduce`: the paper's experiments (Tables 2-5, Figs. 3-5) on any prepared dataset.

Every run is a (model, settings, seed) triple trained by `mahn.training.train` into REPORT/runs/<key>/
and scored on the test split; runs shared by several experiments (MAHN cat-cat at d=50 appears in
all of them) are trained once. A run whose `result.json` exists is reused and a half-trained run
resumes from its last checkpoint, so a killed reproduce continues where it stopped.

Protocol: hyperparameters are chosen on the validation split only (the budget's search space, seed
0), then every seed is trained with the chosen settings; the checkpoint of each run is the epoch
with the best validation NDCG@10. Test metrics are only reported. Each cell is mean ± std over
seeds; MAHN is compared with every other model by a Wilcoxon signed-rank test over test users on
per-user NDCG@10 (averaged over seeds).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import PROTOCOLS, EvalConfig, evaluate, rank_users
from mahn.io import lock_folder, read_json, save_npy, write_json
from mahn.models import MODELS, build_model, label, make_config, model_class
from mahn.models.mahn import VARIANTS
from mahn.reproduce.report import write_report
from mahn.reproduce.stats import best_vs_best, group_means, paired_tests
from mahn.search import search_space
from mahn.settings import RunSettings, TrainConfig, defaults, preset_layer, resolve
from mahn.tracking import TrackConfig, close_abandoned, train_tracked
from mahn.training import load_run
from mahn.training.loop import changed_settings

EXPERIMENTS = ("compare", "variants", "ablations", "dims", "groups", "cold")  # cold: not the paper's; opt in
PAPER_EXPERIMENTS = EXPERIMENTS[:5]
COLD_FRACTION = 0.1  # share of items that the new-item protocol holds out of training
# models that can learn to rank by content alone (an `id_dropout` setting) but do not by default get a second
# cold row trained with this share of ID vectors dropped per batch
COLD_ID_DROPOUT = 0.5
ABLATIONS = {"MAHN": "", "MAHN-V": "v", "MAHN-T": "t", "MAHN-V-T": "vt"}
DIMS = (10, 20, 30, 40, 50)


@dataclass(frozen=True)
class Budget:
    name: str
    epochs: int | None  # None: each model's default
    patience: int | None
    seeds: int  # default number of seeds
    search: dict[str, dict[str, list]] = field(default_factory=dict)  # model -> setting -> values searched
    trials: int = 0  # trials of `mahn tune` (TPE with pruning) per searched model


BUDGETS = {
    # a smoke check: few epochs, one seed, no search (the papers' defaults)
    "quick": Budget("quick", epochs=3, patience=2, seeds=1),
    # every model with its defaults (its epoch cap and patience included), no search: what `mahn train` gives
    "standard": Budget("standard", epochs=None, patience=None, seeds=3),
    # the comparison the numbers in docs/ should come from: the same search for every model, chosen on
    # validation (seed 0): `mahn tune` over lr x weight decay x two settings of the model's own (16 points,
    # mahn.search) with the same number of trials for each, and an epoch cap far enough above where models
    # stop improving (patience 10)
    "full": Budget("full", epochs=200, patience=10, seeds=5, trials=16,
                   search={name: search_space(name) for name, model in MODELS.items() if model.trainable}),
}


@dataclass(frozen=True)
class Run:
    model: str
    seed: int
    settings: tuple[tuple[str, object], ...] = ()  # model and trainer settings that differ from defaults

    @property
    def key(self) -> str:
        parts = [self.model] + [f"{k}={v}" for k, v in self.settings] + [f"seed{self.seed}"]
        return "-".join(str(p).replace("/", "_") for p in parts)

    def with_settings(self, preset: str | None = None, **values) -> Run:
        """This run with more settings; values equal to the defaults (of `preset`, when one is used) are
        dropped, so equal runs share a key."""
        declared = defaults(self.model) | preset_layer(preset, self.model)[1]
        merged = {k: v for k, v in (dict(self.settings) | values).items() if declared.get(k, object()) != v}
        return Run(self.model, self.seed, tuple(sorted(merged.items())))


@dataclass
class ReproduceConfig:
    out: Path
    seeds: int = 5
    experiments: tuple[str, ...] = PAPER_EXPERIMENTS
    budget: str = "full"
    models: tuple[str, ...] = ()  # empty: every registered model that the dataset can feed
    batch_size: int | None = None  # None: the trainer's default
    threads: int = 0  # torch threads per run (0: torch's default)
    device: str = "auto"
    progress: bool = False
    preset: str | None = None  # a settings preset (mahn.settings.PRESETS), e.g. "paper"
    track: TrackConfig | None = None  # send every run to TensorBoard or MLflow (mahn.tracking)
    trials: int | None = None  # tune trials per searched model (None: the budget's)
    move_changed: bool = False  # a run trained with other settings than today's: moved to OUT/changed/ and retrained

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown:
            raise DataError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}",
                            "--experiments")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise DataError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}", "--models")
        if self.budget not in BUDGETS:
            raise DataError(f"budget must be one of {', '.join(BUDGETS)}", "--budget")
        if self.seeds < 1:
            raise DataError("seeds must be at least 1", "--seeds")
        if self.trials is not None and self.trials < 1:
            raise DataError("trials must be at least 1", "--trials")
        if BUDGETS[self.budget].search:  # its search is `mahn tune`'s: refused before anything is written
            from mahn.tune import import_optuna

            import_optuna()
        if self.batch_size is None:
            self.batch_size = TrainConfig.batch_size


class Reproduction:
    def __init__(self, dataset_dir: Path, config: ReproduceConfig, say=print):
        self.dataset_dir = Path(dataset_dir)
        self.dataset = Dataset(dataset_dir)
        self.config = config
        self.budget = BUDGETS[config.budget]
        self.say = say
        # a budget's (or a preset's) runs never stand in for another's
        self.runs_dir = config.out / "runs" / (config.budget + (f"-{config.preset}" if config.preset else ""))
        self.notes: list[str] = []
        self.trials: dict[str, int] = {}  # model -> settings tried on validation

    # --- running ---

    def settings(self, run: Run) -> RunSettings:
        """The run's settings: the budget's and this reproduction's, then the run's own, through the one resolver."""
        budget = {"model": run.model, "epochs": self.budget.epochs, "patience": self.budget.patience,
                  "batch_size": self.config.batch_size, "seed": run.seed, "threads": self.config.threads,
                  "device": self.config.device, "progress": self.config.progress}
        return resolve((f"budget {self.budget.name}", budget), (f"run {run.key}", dict(run.settings)),
                       preset=self.config.preset)

    def execute(self, run: Run) -> dict:
        """Train (or resume) and test one run; cached in runs/<key>/result.json."""
        folder = self.runs_dir / run.key
        settings = self.settings(run)
        checkpoint = folder / "checkpoints" / "last.safetensors"
        # a folder with neither (killed before its first checkpoint) is trained again from the start anyway
        changed = changed_settings(folder, settings) if (folder / "result.json").exists() or checkpoint.exists() else {}
        if changed:  # e.g. a default changed since: reusing or resuming it would mix two configurations
            said = ", ".join(f"{name} {then!r} (now {now!r})" for name, (then, now) in sorted(changed.items()))
            if not self.config.move_changed:
                raise DataError(f"this run was trained with other settings than this mahn gives it: {said}; pass "
                                "--move-changed to move it aside and train it again, or reproduce into another --out",
                                folder / "config.json")
            kept = self.config.out / "changed" / self.runs_dir.name
            kept.mkdir(parents=True, exist_ok=True)
            number = 1
            while (kept / f"{run.key}.{number}").exists():
                number += 1
            lock = lock_folder(folder, "training into this run")  # never move a run another process trains
            try:
                close_abandoned(folder)  # a tracked run a kill left open
                shutil.move(folder, kept / f"{run.key}.{number}")  # never deleted: the user's finished run
            finally:
                os.close(lock)
            self.say(f"{run.key} was trained with {said}: moved to {kept / f'{run.key}.{number}'}")
        if (folder / "result.json").exists():
            return read_json(folder / "result.json")
        self.say(f"training {run.key}")
        started = time.perf_counter()
        tested: dict = {}

        def test() -> dict:  # once, whether a tracker asks for it or not
            if not tested:
                model, dataset, _ = load_run(folder, self.dataset_dir, self.config.device)
                eval_config = EvalConfig(split="test", max_len=settings.train.max_len)
                per_user = rank_users(model, dataset, eval_config)
                tested.update(evaluate(model, dataset, eval_config, per_user))
                save_npy(folder / "test_ndcg10.npy", np.stack([per_user[p]["NDCG@10"] for p in PROTOCOLS]))
            return tested

        summary = train_tracked(self.config.track, self.dataset_dir, folder, settings, test=test,
                                name=f"{self.config.out.name}/{self.runs_dir.name}/{run.key}",
                                resume=checkpoint.exists(),
                                force=not checkpoint.exists())
        test_metrics = test()
        result = {"run": run.key, "budget_name": self.budget.name, "runs_dir": self.runs_dir.name, "model": run.model,
                  "seed": run.seed, "settings": dict(run.settings),
                  "test": test_metrics, "valid": summary["valid"],
                  "budget": {k: summary[k] for k in ("epochs", "steps", "sequences", "train_seconds",
                                                     "stopped_early", "best_epoch")},
                  "wall_seconds": time.perf_counter() - started}
        write_json(folder / "result.json", result)
        return result

    def usable(self, model: str) -> bool:
        """Whether the dataset can feed the model (multimodal models need features)."""
        try:
            build_model(model, make_config(model, {}), self.dataset)
        except DataError as e:
            self.notes.append(f"{label(model)} skipped: {e}")
            return False
        return True

    def reads_content(self, model: str, settings: dict) -> bool:
        """Whether `model` with `settings` reads image or text features on this dataset."""
        return build_model(model, make_config(model, defaults(model) | settings), self.dataset).reads_content

    def choose(self, model: str, base: dict) -> dict:
        """Pick settings on validation full NDCG@10 (seed 0) over the budget's search space, with `mahn tune`
        (REPORT/tunes/BUDGET/KEY/: resumed like the runs)."""
        space = self.budget.search.get(model, {})
        if not space:  # the budget searches nothing, or the model learns nothing
            return base
        from mahn.tune import tune

        tunes = self.config.out / "tunes" / self.runs_dir.name
        if not tunes.exists() and self.runs_dir.is_dir() and any(self.runs_dir.iterdir()):
            self.say(f"note: {self.runs_dir} holds runs of the grid this budget searched before `mahn tune` chose "
                     "its settings; they are kept, and the tunes start now (the chosen settings may differ)")
        key = Run(model, 0).with_settings(self.config.preset, **base).key.removesuffix("-seed0")
        preset = {k: v for k, v in preset_layer(self.config.preset, model)[1].items() if k not in space}
        shared = {"epochs": self.budget.epochs, "patience": self.budget.patience, "batch_size": self.config.batch_size,
                  "threads": self.config.threads, "device": self.config.device}
        trials = self.config.trials or self.budget.trials
        self.say(f"tuning {key}: {trials} trials")
        summary = tune(self.dataset_dir, tunes / key, model, trials,
                       seed=0, base=preset | base | shared, progress=self.config.progress, say=lambda line: None,
                       track=self.config.track)
        self.trials[model] = summary["trained"]
        return {**base, **summary["best"]["settings"]}

    def cell(self, model: str, settings: dict) -> list[dict]:
        return [self.execute(Run(model, seed).with_settings(self.config.preset, **settings))
                for seed in range(self.config.seeds)]

    # --- experiments ---

    def mahn_base(self) -> dict:
        """MAHN's settings on this dataset: ablated as far as the dataset's features require. A modality whose
        features cover no item (Office's images: none could be fetched) counts as absent."""
        have = self.dataset.covered_modalities()
        ablate = ("" if "image" in have else "v") + ("" if "text" in have else "t")
        if ablate:
            missing = {"v": "image", "t": "text", "vt": "image and text"}[ablate]
            self.notes.append(f"the dataset lacks {missing} features (or they cover no item): MAHN runs as "
                              f"MAHN-{'-'.join(ablate.upper())}")
        return {"ablate": ablate} if ablate else {}

    def run_all(self) -> dict:
        config = {k: v for k, v in asdict(self.config).items() if k != "track"}  # where runs were sent, not what ran
        results: dict = {"dataset": str(self.dataset_dir), "config": {**config, "out": str(self.config.out)},
                         "budget": asdict(self.budget)}
        experiments = self.config.experiments
        base = self.mahn_base()
        multimodal = not base
        chosen_mahn = self.choose("mahn", base)
        results["chosen"] = {"mahn": chosen_mahn}
        if "compare" in experiments or "groups" in experiments:
            models = self.config.models or tuple(MODELS)
            compare, multimodal_cells = {}, []
            for model in models:
                if model == "mahn":
                    settings = chosen_mahn
                elif self.usable(model):
                    settings = self.choose(model, {})
                    results["chosen"][model] = settings
                else:
                    continue
                compare[label(model)] = self.cell(model, settings)
                if self.reads_content(model, settings):
                    multimodal_cells.append(label(model))
                    twin = model_class(model).id_only
                    if twin is not None:  # the same model without its content: what the content adds
                        compare[id_only_label(model)] = self.cell(model, {**settings, **twin})
            results["compare"], results["multimodal"] = compare, multimodal_cells
        if multimodal and "variants" in experiments:
            results["variants"] = {v: self.cell("mahn", {**chosen_mahn, "variant": v}) for v in VARIANTS}
        if "ablations" in experiments:
            # the ablations the features allow: every one that drops at least what the dataset lacks
            lacking = set(base.get("ablate", ""))
            possible = {label: a for label, a in ABLATIONS.items() if lacking <= set(a)}
            if len(possible) > 1:
                results["ablations"] = {label: self.cell("mahn", {**chosen_mahn, "ablate": a} if a else chosen_mahn)
                                        for label, a in possible.items()}
            else:
                self.notes.append("ablations need image or text features: skipped")
        if not multimodal and "variants" in experiments:
            self.notes.append("variants need image and text features: skipped")
        if "dims" in experiments:
            results["dims"] = {str(d): self.cell("mahn", {**chosen_mahn, "dim": d}) for d in DIMS}
        if "groups" in experiments:
            results["groups"] = self.groups(results["compare"])
        if "cold" in experiments:
            results["cold"] = self.cold(results["chosen"], chosen_mahn)
        results["trials"] = self.trials
        results["notes"] = self.notes
        return results

    def cold(self, chosen: dict, chosen_mahn: dict) -> dict:
        """Every compared model on this dataset's new-item split (data/cold.py), with the settings chosen here."""
        from mahn.data.cold import cold_split

        folder = self.config.out / "cold-data"
        if not (folder / "manifest.json").exists():
            self.say(f"deriving the new-item split ({COLD_FRACTION:.0%} of the items) into {folder}")
            cold_split(self.dataset_dir, folder, COLD_FRACTION, seed=0, force=folder.exists())
        sub = Reproduction(folder, replace(self.config, out=self.config.out / "cold"), self.say)
        cells = {}
        for model in self.config.models or tuple(MODELS):
            if model == "mahn":
                settings = chosen_mahn
            elif sub.usable(model):
                settings = chosen[model] if model in chosen else self.choose(model, {})
            else:
                continue
            cells[label(model)] = sub.cell(model, settings)
            # a model that can learn to rank by content alone but does not by default: a second row that does
            if (defaults(model) | settings).get("id_dropout") == 0:
                cells[f"{label(model)}, id_dropout {COLD_ID_DROPOUT}"] = sub.cell(
                    model, {**settings, "id_dropout": COLD_ID_DROPOUT})
        return cells

    def groups(self, compare: dict) -> dict:
        """MAHN vs the strongest other sequential model, chosen by validation NDCG@10 (never by test)."""
        candidates = {label(name) for name, model in MODELS.items() if model.paper_rival}
        rivals = {name: np.mean([r["valid"]["full"]["NDCG@10"] for r in runs])
                  for name, runs in compare.items() if name in candidates}
        if "MAHN" not in compare or not rivals:
            return {}
        rival = max(rivals, key=rivals.get)
        return {"rival": rival, "by": "validation full NDCG@10",
                "MAHN": group_means(compare["MAHN"]), rival: group_means(compare[rival])}


def id_only_label(model: str) -> str:
    """The row of a model's ID-only twin ("MGT (ours) ID-only")."""
    return f"{label(model)} ID-only"


def reproduce(dataset_dir: Path, config: ReproduceConfig, command: str = "mahn reproduce", say=print) -> dict:
    started = time.perf_counter()
    reproduction = Reproduction(dataset_dir, config, say)  # reads the dataset first: a bad one writes nothing
    config.out.mkdir(parents=True, exist_ok=True)
    results = reproduction.run_all()
    results["paired_tests"] = paired_tests(config.out, results["compare"]) if "compare" in results else {}
    if label("mgt") in results.get("compare", {}):  # our model against every other, too
        results["paired_tests_mgt"] = paired_tests(config.out, results["compare"], reference=label("mgt"))
    if results.get("multimodal"):
        results["best_vs_best"] = best_vs_best(config.out, results["compare"], results["multimodal"])
    results["seconds"] = time.perf_counter() - started
    write_json(config.out / "results.json", results)
    report = write_report(results, config.out, command)
    say(f"report: {report}")
    return results
