"""`mahn tune`: Optuna's TPE search over one model's settings on validation full NDCG@10, with pruning.

The space is declared once per model (mahn.search); `mahn reproduce --budget full` searches it through this
function, the same number of trials for every model. Each setting is a categorical choice among the declared
values, never a continuous range, so a grid over the same values covers the same space and the time each
takes to reach a validation score compares fairly (benchmarks/tune_vs_grid.py). Each trial trains a normal
run folder, OUT/trials/NNNN/, reports its best validation full NDCG@10 so far after every epoch, and the pruner
stops it when even its recent rate of gain, kept up to its last epoch, would leave it below the best completed
trial (`RisingBoundPruner`; `--pruner median` is Optuna's median rule). Settings that TPE picks again are told
their earlier result without training (the same settings and seed train the same run) and do not count as
trials; the tune ends early once every point of the space has been tried.

The study lives in OUT/study.db (SQLite) under a name fixed by the model, so running the same command again
resumes it: a trial left running by a killed tune is marked FAIL, its folder removed, and its settings tried
again (a new trial, trained from scratch), and the tune ends when `trials` trials have been trained (complete or
pruned), those of earlier calls included. OUT/best.toml holds the best trial's settings for `mahn train
--config`; OUT/tune.json every trial.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.io import lock_folder, write_bytes, write_json
from mahn.models import build_model, make_config, model_class
from mahn.search import search_space
from mahn.settings import HOW_NOT_WHAT, defaults, resolve
from mahn.tracking import TrackConfig, TrackedRun, close_abandoned
from mahn.training import train
from mahn.training.batches import training_users
from mahn.training.loop import changed_settings, described

PRUNERS = ("bound", "median", "none")
RISE_WINDOW = 10  # epochs over which a trial's rate of gain is measured (and trained before it can be pruned)
MEDIAN_AFTER_TRIALS = 4  # --pruner median: completed trials before any is pruned
MEDIAN_AFTER_EPOCHS = 5  # --pruner median: epochs every trial trains before it can be pruned
REPEATS_AT_MOST = 20  # TPE's picks of tried settings in a row before an untried point is taken at random
FINISHED = ("COMPLETE", "PRUNED")


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise DataError('mahn tune (and mahn reproduce --budget full) needs optuna: pip install "mahn[tune]"') from None
    return optuna


class RisingBoundPruner:
    """Stops a trial whose best validation score so far, rising for the rest of its epochs at the rate of its last
    `window` epochs, would still end below the best completed trial; never before `min_epochs`.

    Optuna's median rule compares trials at the same epoch, which stops a slow learner (a lower learning rate)
    that trails early and leads late: on Amazon Office it pruned the grid's best SASRec after 5 epochs. This
    bound compares a trial with where it could still go: a curve still climbing is kept, one that has flattened
    below the best is stopped. Learning curves flatten, so the straight line is optimistic once a curve has
    turned; before that (a flat start, then a climb: SASRec on H&M sits at the popularity score for its first 40
    epochs, 120 steps) no curve says where it goes, so no trial is judged before it has trained as long as early
    stopping would wait for a better score (`min_epochs`: patience epochs and patience_steps steps)."""

    def __init__(self, epochs: int, min_epochs: int, window: int = RISE_WINDOW):
        self.epochs, self.min_epochs, self.window = epochs, max(min_epochs, window), window

    def prune(self, study, trial) -> bool:
        scores = trial.intermediate_values  # epoch -> best validation score so far
        if not scores:
            return False
        epoch = max(scores)
        if epoch < self.min_epochs or epoch - self.window not in scores:
            return False
        completed = [t.value for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not completed:
            return False
        rate = (scores[epoch] - scores[epoch - self.window]) / self.window
        return scores[epoch] + rate * (self.epochs - epoch) < max(completed)


def make_pruner(kind: str, epochs: int, min_epochs: int):
    """The pruner `--pruner kind` names, for trials of at most `epochs` epochs, judged from `min_epochs` on."""
    optuna = import_optuna()
    if kind == "bound":
        return RisingBoundPruner(epochs, min_epochs)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_AFTER_TRIALS, n_warmup_steps=MEDIAN_AFTER_EPOCHS)
    return optuna.pruners.NopPruner()


def tune(dataset_dir: str | Path, out: str | Path, model: str, trials: int, minutes: float | None = None,
         seed: int = 0, base: dict | None = None, progress: bool = False, say=print,
         track: TrackConfig | None = None, pruner: str = "bound") -> dict:
    """Run (or resume) the study in `out` until `trials` trials have been trained or `minutes` have passed;
    `base` holds settings every trial shares (e.g. epochs); `track` sends every trial to a tracker; `pruner` is
    one of PRUNERS. Returns what OUT/tune.json holds."""
    optuna = import_optuna()
    out = Path(out)
    if trials < 1:
        raise DataError(f"trials must be at least 1, got {trials}", "--trials")
    if minutes is not None and minutes <= 0:
        raise DataError(f"minutes must be positive, got {minutes}", "--minutes")
    if pruner not in PRUNERS:
        raise DataError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}", "--pruner")
    space = search_space(model)
    own = sorted(set(base or {}) & {"model", "seed"})
    if own:
        raise DataError(f"{', '.join(own)} is set by the tune's own option (--{own[0]}), not as a shared setting",
                        "--set")
    searched = sorted(set(base or {}) & set(space))
    if searched:
        raise DataError(f"{', '.join(searched)} is what the search varies; leave it out of the shared settings",
                        "--set")
    if not model_class(model).trainable:
        raise DataError(f"{model} learns nothing: there is nothing to tune", "--model")
    dataset = Dataset(dataset_dir)
    fixed = {**(base or {}), "model": model, "seed": seed}
    shared = resolve(("tune", fixed)).flat()  # bad settings are refused here, before anything is written
    build_model(model, make_config(model, defaults(model) | fixed), dataset)  # and so are missing features
    steps_per_epoch = math.ceil(len(training_users(dataset)) / shared["batch_size"])
    patience_epochs = max(shared["patience"], math.ceil(shared["patience_steps"] / steps_per_epoch))
    if out.is_dir() and not (out / "study.db").exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise DataError("not empty and not a tune folder (no study.db); choose another --out", out)

    optuna.logging.set_verbosity(optuna.logging.INFO if progress else optuna.logging.WARNING)
    lock = lock_folder(out, "tuning into this folder")
    try:
        return _tune(optuna, Path(dataset_dir), out, model, space, trials, minutes, fixed, progress, say, track,
                     make_pruner(pruner, shared["epochs"], patience_epochs))
    finally:
        os.close(lock)


def _tune(optuna, dataset_dir: Path, out: Path, model: str, space: dict[str, list], trials: int,
          minutes: float | None, fixed: dict, progress: bool, say, track: TrackConfig | None, pruner) -> dict:
    from optuna.trial import TrialState

    started, cpu = time.perf_counter(), time.process_time()
    name = f"mahn-tune-{model}"
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    others = [n for n in optuna.study.get_all_study_names(storage) if n != name]
    if others:
        raise DataError(f"holds another study ({others[0]}); choose another --out", out)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=trial_sampler(optuna, fixed["seed"], 0), pruner=pruner)
    # what decides the trials' results: not where or how loudly they train
    identity = {"dataset": str(dataset_dir.resolve()), "space": space,
                "settings": {k: v for k, v in fixed.items() if k not in HOW_NOT_WHAT}}
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", identity)
    elif saved != identity:
        raise DataError(f"holds a study of other data, settings or space ({json.dumps(saved)}); choose another --out",
                        out)
    # and what the defaults made of the rest: a newer mahn's may differ, and its trials must not join theirs
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        folder = out / "trials" / f"{trial.number:04d}"
        settings = resolve(("tune", {"progress": progress, **fixed}), (f"trial {trial.number}", trial.params))
        changed = changed_settings(folder, settings)
        if changed:
            raise DataError(f"holds trials trained under other settings than this mahn gives them (trial "
                            f"{trial.number:04d}: {described(changed)}); choose another --out", folder / "config.json")
    # this process holds the folder's lock, so a running trial is one a killed tune left: try its settings again
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
        # its folder is never trained on again (and may hold a killed writer's temporary file): not kept
        close_abandoned(out / "trials" / f"{trial.number:04d}")
        shutil.rmtree(out / "trials" / f"{trial.number:04d}", ignore_errors=True)
        say(f"trial {trial.number:04d} was cut short: its settings are tried again")

    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
    points = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    stopped = None
    while len(trained(done := finished_trials(study))) < trials:
        tried = {json.dumps(t.params, sort_keys=True) for t in done}
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            stopped = f"--minutes {minutes:g} spent"
        elif len(tried) == len(points):
            stopped = "every setting of the space tried"
        if stopped:
            say(f"{stopped}: no new trial started")
            break
        # seeded by how many trials have finished, not once per call: a sampler seeded once a call would draw
        # again, in each resumed call, the points its first call drew (TPE's first trials are random), so a
        # resumed tune would spend its trials repeating them. Finished, not all: a trial a kill cut short (FAIL,
        # then retried) must not shift the seeds of those after it
        study.sampler = trial_sampler(optuna, fixed["seed"], len(done))
        if repeats_in_a_row(done) >= REPEATS_AT_MOST:  # TPE keeps to what it tried: an untried point instead
            untried = [p for p in points if json.dumps(p, sort_keys=True) not in tried]
            pick = np.random.default_rng(np.random.SeedSequence([fixed["seed"], len(done)])).integers(len(untried))
            study.enqueue_trial(untried[pick])
        trial = study.ask(distributions)
        earlier = next((t for t in done if t.params == trial.params), None)
        if earlier is None:
            run_trial(optuna, study, trial, dataset_dir, out, fixed, progress, say, track)
        else:
            repeat(study, trial, earlier, say)
    return write_summary(study, out, space, trials, fixed, stopped,
                         {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu})


def trial_sampler(optuna, seed: int, number: int):
    """TPE seeded by the tune's seed and the number of trials finished before this one: the trials depend on the
    seed and on the trials before them, not on how many calls (or kills) they took."""
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, number]).generate_state(1)[0]))


def finished_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]


def trained(done: list) -> list:
    """The finished trials `done` that trained: what `trials` counts (a repeat is told an earlier trial's result)."""
    return [t for t in done if "same_as" not in t.user_attrs]


def repeats_in_a_row(done: list) -> int:
    """How many of the last finished trials were repeats."""
    count = 0
    for trial in reversed(done):
        if "same_as" not in trial.user_attrs:
            break
        count += 1
    return count


def repeat(study, trial, earlier, say) -> None:
    """Tell `trial` the result of the finished `earlier` with the same settings, without training: TPE picks a
    set of categorical values again now and then, and the same settings with the same seed train the same run.
    The repeat tells TPE once more what those settings gave; it does not count as a trial."""
    for key, value in (earlier.user_attrs | {"seconds": 0.0, "cpu_seconds": 0.0, "same_as": earlier.number}).items():
        trial.set_user_attr(key, value)
    for step, value in earlier.intermediate_values.items():  # what the pruner compares later trials with
        trial.report(value, step)
    study.tell(trial, earlier.value if earlier.state.name == "COMPLETE" else None, state=earlier.state)
    say(f"trial {trial.number:04d}: the settings of trial {earlier.number:04d}, not trained again")


def run_trial(optuna, study, trial, dataset_dir: Path, out: Path, fixed: dict, progress: bool, say,
              track: TrackConfig | None) -> None:
    from optuna.trial import TrialState

    settings = resolve(("tune", {"progress": progress, **fixed}), (f"trial {trial.number}", trial.params))
    folder = out / "trials" / f"{trial.number:04d}"
    tracked = None if track is None else TrackedRun(track, folder, dataset_dir, settings.flat(),
                                                    f"{out.parent.name}/{out.name}/trial-{trial.number:04d}",
                                                    tags={"tune": str(out.resolve()), "trial": str(trial.number)})
    scores: list[float] = []

    def after_epoch(record: dict) -> None:
        if tracked is not None:
            tracked.epoch(record)
        scores.append(record["valid"]["full"]["NDCG@10"])
        # the best so far, as the run keeps its best epoch: one noisy epoch should not get a trial pruned
        trial.report(max(scores), record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned  # stops train(); the run folder keeps what it trained

    started, cpu = time.perf_counter(), time.process_time()
    try:
        train(dataset_dir, folder, settings, force=True, on_epoch_end=after_epoch)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except BaseException as error:
        failed = isinstance(error, Exception)
        if failed:  # would fail again: not retried on resume (Ctrl-C leaves it RUNNING, to be tried again)
            study.tell(trial, state=TrialState.FAIL)
        if tracked is not None and tracked.backend is not None:
            tracked.finish(status="FAILED" if failed else "KILLED")
        raise
    if tracked is not None:  # validation only: a search must not look at the test split
        tracked.finish(status="FINISHED" if state == TrialState.COMPLETE else "KILLED",
                       tags={"optuna_state": state.name})
    for key, value in {"valid_full_ndcg10": max(scores), "epochs": len(scores),
                       "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, max(scores) if state == TrialState.COMPLETE else None, state=state)
    say(f"trial {trial.number:04d} {state.name.lower()} after {len(scores)} epochs: valid NDCG@10 full "
        f"{max(scores):.4f}  {' '.join(f'{k}={v}' for k, v in trial.params.items())}")


def write_summary(study, out: Path, space: dict[str, list], trials: int, fixed: dict, stopped: str | None,
                  this_call: dict[str, float]) -> dict:
    """OUT/tune.json (every trial) and OUT/best.toml (the best finished trial's settings)."""
    rows = [{"number": t.number, "state": t.state.name, "settings": t.params,
             "valid_full_ndcg10": t.user_attrs.get("valid_full_ndcg10"), "epochs": t.user_attrs.get("epochs"),
             "seconds": t.user_attrs.get("seconds"), "cpu_seconds": t.user_attrs.get("cpu_seconds"),
             "same_as": t.user_attrs.get("same_as")}
            for t in study.get_trials(deepcopy=False)]
    done = [r for r in rows if r["state"] in FINISHED]
    trained = [r for r in done if r["same_as"] is None]
    best = max(done, key=lambda r: r["valid_full_ndcg10"], default=None)  # the first of equals
    summary = {"model": fixed["model"], "dataset": study.user_attrs["identity"]["dataset"], "settings": fixed,
               "space": space, "trials_asked": trials, "trained": len(trained), "finished": len(done),
               "stopped": stopped, "best": best, "trials": rows,
               # over every trial of every call (a trial cut short by a kill has no time recorded)
               "seconds": {"wall": sum(r["seconds"] or 0 for r in rows),
                           "cpu": sum(r["cpu_seconds"] or 0 for r in rows)},
               "this_call_seconds": this_call}
    if best is not None:
        values = {**fixed, **best["settings"]}
        values = {"model": values.pop("model"), **values}
        header = (f"# mahn tune: trial {best['number']:04d}, the best of {len(done)} finished (valid NDCG@10 full "
                  f"{best['valid_full_ndcg10']:.4f}); use with `mahn train DATA --config best.toml`\n")
        write_bytes(out / "best.toml", to_toml(values, header).encode())
    write_json(out / "tune.json", summary)
    return summary


def to_toml(values: dict[str, Any], header: str = "") -> str:
    """A flat TOML table of scalars (tomllib reads TOML but nothing in the standard library writes it)."""
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)  # a float keeps its point or exponent: 0.0 and 1e-05 read back as floats
        if isinstance(value, str):
            return json.dumps(value)
        raise TypeError(f"no TOML form for {value!r}")

    text = header + "".join(f"{key} = {literal(value)}\n" for key, value in values.items())
    assert tomllib.loads(text) == values, text
    return text
