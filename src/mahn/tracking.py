"""Experiment tracking (`--track tensorboard|mlflow`): a run's settings, every epoch's loss and validation metrics,
its final test metrics and its files, sent to TensorBoard event files or an MLflow tracking store.

The run folder stays the record (metrics.jsonl, summary.json); a tracker copies it where a user browses runs.
Nothing is written before the run's first checkpoint (a refused or killed-at-once run leaves no tracked run), and a
resumed run continues its tracked run: RUN/tracking.json names it and the last epoch sent, so no epoch is sent
twice and none is lost (the epochs a kill left unsent are sent from metrics.jsonl on resume).

TensorBoard: event files in RUN/tensorboard, or in URI/NAME with `--track-uri URI` (`tensorboard --logdir URI`).
MLflow: the tracking URI `--track-uri`, else $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the
current folder; one experiment per dataset folder name; the run folder's files (not its checkpoints/) as artifacts.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mahn.errors import DataError
from mahn.io import read_json, write_json
from mahn.training.loop import read_history

TRACKERS = ("tensorboard", "mlflow")
STATE_FILE = "tracking.json"
EXTRA = 'pip install "mahn[track]"'


@dataclass(frozen=True)
class TrackConfig:
    kind: str  # tensorboard | mlflow
    uri: str | None = None  # tensorboard: a log folder for many runs; mlflow: a tracking URI

    def __post_init__(self) -> None:
        if self.kind not in TRACKERS:
            raise DataError(f"unknown tracker {self.kind!r}; choose {' or '.join(TRACKERS)}", "--track")
        module = "tensorboard" if self.kind == "tensorboard" else "mlflow"
        try:  # a missing extra is refused before anything trains
            importlib.import_module(module)
        except ImportError:
            raise DataError(f"--track {self.kind} needs {module}: {EXTRA}", "--track") from None
        if self.kind == "mlflow" and self.mlflow_uri.startswith(("http://", "https://")):
            from mlflow.tracking import MlflowClient

            try:  # so is a tracking server that does not answer
                MlflowClient(tracking_uri=self.mlflow_uri).search_experiments(max_results=1)
            except Exception as error:  # noqa: BLE001 - whatever the client raises, it is one line for the user
                raise DataError(f"the MLflow tracking server does not answer: {str(error).splitlines()[0]}",
                                "--track-uri") from None

    @property
    def mlflow_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def metric_key(name: str) -> str:
    """An MLflow-safe key, the same in both trackers: valid/full/NDCG@10 -> valid/full/NDCG_10."""
    return name.replace("@", "_")


def flat_metrics(prefix: str, scores: dict) -> dict[str, float]:
    """{"full": {"NDCG@10": x}} -> {"PREFIX/full/NDCG_10": x}; per-group rows are left out."""
    return {metric_key(f"{prefix}/{protocol}/{name}"): float(value)
            for protocol, values in scores.items() if isinstance(values, dict)
            for name, value in values.items() if isinstance(value, (int, float))}


def epoch_metrics(record: dict) -> dict[str, float]:
    scalars = {key: float(record[key]) for key in ("loss", "lr", "train_seconds", "sequences_per_second")}
    return scalars | flat_metrics("valid", record["valid"])


class TrackedRun:
    """One training run's tracked twin. Hand `epoch` to `train(on_epoch_end=...)`, then call `finish`."""

    def __init__(self, config: TrackConfig, run: Path, dataset_dir: Path, settings: dict, name: str | None = None,
                 tags: dict[str, str] | None = None, resume: bool = False):
        self.config, self.run, self.settings, self.resume = config, Path(run), settings, resume
        self.experiment = Path(dataset_dir).resolve().name
        self.name = name or self.run.name
        self.tags = {"model": str(settings.get("model")), "run_folder": str(self.run.resolve()), **(tags or {})}
        self.backend: _TensorBoard | _MLflow | None = None
        self.sent = 0  # epochs sent so far
        self.broken = False  # a send failed: nothing more is sent

    def epoch(self, record: dict) -> None:
        self.guarded(self._epoch, record)

    def finish(self, test: dict | None = None, status: str = "FINISHED", tags: dict[str, str] | None = None,
               best_epoch: int | None = None) -> None:
        """Send the best epoch's validation metrics (and `test`), the run's files, and close the tracked run;
        `status` FINISHED, KILLED (e.g. a pruned trial) or FAILED. `best_epoch`: the run's summary's (None: the
        epoch of the best validation score so far, as the run keeps it)."""
        self.guarded(self._finish, test, status, tags, best_epoch)

    def guarded(self, send, *args) -> None:
        """A tracker that fails mid-run (a server gone) is reported once and left; the training goes on."""
        if self.broken:
            return
        try:
            send(*args)
        except Exception as error:  # noqa: BLE001 - tracking must never cost a user the run it tracks
            self.broken = True
            print(f"warning: --track {self.config.kind} stopped sending: {str(error).splitlines()[0]} "
                  f"(the run goes on; its folder has every metric)", file=sys.stderr)

    def _epoch(self, record: dict) -> None:
        if self.backend is None:
            self.open()
            self.catch_up(read_history(self.run), before=record["epoch"])  # what a kill left unsent
        self.catch_up([record])
        self.save_state()

    def catch_up(self, history: list[dict], before: int | None = None) -> None:
        """Send the epochs of `history` after the last one sent (and before `before`)."""
        for record in history:
            if self.sent < record["epoch"] and (before is None or record["epoch"] < before):
                self.backend.metrics(epoch_metrics(record), record["epoch"])
                self.sent = record["epoch"]

    def _finish(self, test: dict | None, status: str, tags: dict[str, str] | None, best_epoch: int | None) -> None:
        history = read_history(self.run)
        if self.backend is None:
            self.open()
        self.catch_up(history)  # nothing, unless the run finished before tracking began
        final: dict[str, float] = {"epochs": float(len(history))}
        select = str(self.settings.get("select", "full"))
        best = (next((r for r in history if r["epoch"] == best_epoch), None) if best_epoch is not None
                else max(history, key=lambda r: r["valid"][select]["NDCG@10"], default=None))  # first of equals
        if best is not None:
            final |= {"best_epoch": float(best["epoch"])} | flat_metrics("best_valid", best["valid"])
        final |= flat_metrics("test", test) if test else {}
        self.backend.close(final, self.run, status, tags or {})
        self.save_state(finished=True)

    @property
    def where(self) -> str:
        return self.config.mlflow_uri if self.config.kind == "mlflow" else str(self.config.uri)

    def open(self) -> None:
        state = read_json(self.run / STATE_FILE) if (self.run / STATE_FILE).is_file() else {}
        if not self.resume or state.get("kind") != self.config.kind or state.get("uri") != self.where:
            state = {}  # a run trained from scratch (or with another tracker) is a new tracked run
        self.sent = state.get("sent", 0)
        if self.config.kind == "tensorboard":
            folder = state.get("id") or unused(Path(self.config.uri) / self.experiment / self.name
                                               if self.config.uri else self.run / "tensorboard")
            self.backend = _TensorBoard(Path(folder), self.settings)
        else:
            self.backend = _MLflow(self.config.mlflow_uri, self.experiment, self.name, self.settings, self.tags,
                                   state.get("id"))
        self.save_state()

    def save_state(self, finished: bool = False) -> None:
        write_json(self.run / STATE_FILE, {"kind": self.config.kind, "uri": self.where, "id": self.backend.id,
                                           "sent": self.sent, "finished": finished})


def train_tracked(track: TrackConfig | None, dataset_dir: str | Path, run: str | Path, settings,
                  test: Callable[[], dict] | None = None, name: str | None = None, **train_kwargs) -> dict:
    """`mahn.training.train`, tracked when `track` is given: every epoch as it ends, then `test()`'s metrics and the
    run's files; a run that raises is closed as FAILED (KILLED on Ctrl-C) and the error goes on."""
    from mahn.training import train

    if track is None:
        return train(dataset_dir, run, settings, **train_kwargs)
    resuming = train_kwargs.get("resume", False) and (Path(run) / "checkpoints" / "last.safetensors").exists()
    tracked = TrackedRun(track, Path(run), Path(dataset_dir), settings.flat(), name, resume=resuming)
    caller = train_kwargs.pop("on_epoch_end", None)

    def on_epoch_end(record: dict) -> None:
        tracked.epoch(record)
        if caller is not None:
            caller(record)

    try:
        summary = train(dataset_dir, run, settings, on_epoch_end=on_epoch_end, **train_kwargs)
    except BaseException as error:
        if tracked.backend is not None:
            tracked.finish(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tested = None
    try:
        tested = test() if test else None
    except Exception as error:  # noqa: BLE001 - the run is trained; a failed test for the tracker must not undo it
        print(f"warning: --track {track.kind}: the test metrics were not sent ({str(error).splitlines()[0]})",
              file=sys.stderr)
    tracked.finish(tested, best_epoch=summary["best_epoch"])
    return summary


def unused(folder: Path) -> Path:
    """`folder`, or `folder-2`, `folder-3`... when it already holds another tracked run's event files."""
    candidate, number = folder, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


def close_abandoned(run: Path) -> None:
    """Close the MLflow run of a run folder about to be removed (a tune's cut trial), as KILLED."""
    state = read_json(run / STATE_FILE) if (run / STATE_FILE).is_file() else {}
    if state.get("kind") != "mlflow" or state.get("finished") or not state.get("id"):
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=state["uri"]).set_terminated(state["id"], status="KILLED")
    except Exception as error:  # noqa: BLE001 - a tracker gone is a warning, not a failed tune
        print(f"warning: could not close the MLflow run of {run}: {str(error).splitlines()[0]}", file=sys.stderr)


class _TensorBoard:
    def __init__(self, folder: Path, settings: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.settings, self.id = folder, settings, str(folder)
        self.writer = SummaryWriter(str(folder))
        self.writer.add_text("settings", "\n".join(f"    {k} = {v!r}" for k, v in settings.items()), 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, final: dict[str, float], run: Path, status: str, tags: dict[str, str]) -> None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else repr(v) for k, v in self.settings.items()}
        self.writer.add_hparams(hparams, {f"final/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.add_text("status", " ".join([status, *(f"{k}={v}" for k, v in tags.items())]), 0)
        self.writer.close()


class _MLflow:
    def __init__(self, uri: str, experiment: str, name: str, settings: dict, tags: dict[str, str], run_id: str | None):
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's first migration is not news
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is None:  # a local store keeps its artifacts beside it, not in the current folder
            beside = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).resolve().as_uri() \
                if uri.startswith("sqlite:///") else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=beside)
        else:
            experiment_id = found.experiment_id
        self.id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(self.id, params=[Param(k, str(v)) for k, v in settings.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, final: dict[str, float], run: Path, status: str, tags: dict[str, str]) -> None:
        self.metrics(final, 0)
        for key, value in tags.items():
            self.client.set_tag(self.id, key, value)
        for path in sorted(run.iterdir()):  # the run's files; checkpoints/ repeats best.safetensors with Adam's state
            if path.is_file() and not path.name.startswith("."):
                self.client.log_artifact(self.id, str(path))
        self.client.set_terminated(self.id, status=status)
