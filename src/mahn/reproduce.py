"""`mahn reproduce`: the paper's experiments (Tables 2-5, Figs. 3-5) on any prepared dataset.

Every run is a (model, settings, seed) triple trained by `mahn.train.train` into REPORT/runs/<key>/
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

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluate import METRICS, PROTOCOLS, EvalConfig, evaluate, rank_users
from mahn.io import load_npy, read_json, save_npy, write_bytes, write_json

EXPERIMENTS = ("compare", "variants", "ablations", "dims", "groups")
VARIANTS = ("add-add", "add-cat", "cat-add", "cat-cat")
ABLATIONS = {"MAHN": "", "MAHN-V": "v", "MAHN-T": "t", "MAHN-V-T": "vt"}
DIMS = (10, 20, 30, 40, 50)
SHOWN = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
LABELS = {"mahn": "MAHN", "vbpr": "VBPR", "jrl": "JRL", "mvrnn": "MV-RNN", "gru4rec": "GRU4Rec",
          "caser": "Caser", "sasrec": "SASRec", "bert4rec": "BERT4Rec", "popularity": "Popularity"}


@dataclass(frozen=True)
class Budget:
    name: str
    epochs: int
    patience: int
    seeds: int  # default number of seeds
    search: dict[str, dict[str, list]] = field(default_factory=dict)  # model -> setting -> values tried


BUDGETS = {
    # a smoke check: few epochs, one seed, no search (the papers' defaults)
    "quick": Budget("quick", epochs=3, patience=2, seeds=1),
    # every model to convergence with its papers' defaults, no search: the budget of the runs in docs/
    "standard": Budget("standard", epochs=50, patience=5, seeds=3),
    "full": Budget("full", epochs=60, patience=5, seeds=5, search={
        "*": {"lr": [1e-3, 3e-4]},
        "mahn": {"rec_weight": [1.0, 0.1]},
    }),
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

    def with_settings(self, **values) -> Run:
        """This run with more settings; values equal to the defaults are dropped, so equal runs share a key."""
        from mahn.models import model_class
        from mahn.train import TrainConfig

        defaults = asdict(model_class(self.model).Config()) | asdict(TrainConfig())
        merged = {k: v for k, v in (dict(self.settings) | values).items() if defaults.get(k, object()) != v}
        return Run(self.model, self.seed, tuple(sorted(merged.items())))


@dataclass
class ReproduceConfig:
    out: Path
    seeds: int = 5
    experiments: tuple[str, ...] = EXPERIMENTS
    budget: str = "full"
    models: tuple[str, ...] = ()  # empty: every registered model that the dataset can feed
    batch_size: int = 256
    threads: int = 0  # torch threads per run (0: torch's default)
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown:
            raise DataError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}",
                            "--experiments")
        if self.budget not in BUDGETS:
            raise DataError(f"budget must be one of {', '.join(BUDGETS)}", "--budget")
        if self.seeds < 1:
            raise DataError("seeds must be at least 1", "--seeds")


def split_settings(model: str, settings: dict) -> tuple[object, object]:
    """(model config, train config) from one flat dict of settings."""
    from mahn.models import make_config
    from mahn.train import TrainConfig

    trainer_keys = set(TrainConfig.__dataclass_fields__)
    return (make_config(model, {k: v for k, v in settings.items() if k not in trainer_keys}),
            {k: v for k, v in settings.items() if k in trainer_keys})


class Reproduction:
    def __init__(self, dataset_dir: Path, config: ReproduceConfig, say=print):
        self.dataset_dir = Path(dataset_dir)
        self.dataset = Dataset(dataset_dir)
        self.config = config
        self.budget = BUDGETS[config.budget]
        self.say = say
        self.runs_dir = config.out / "runs" / config.budget  # a budget's runs never stand in for another's
        self.notes: list[str] = []

    # --- running ---

    def execute(self, run: Run) -> dict:
        """Train (or resume) and test one run; cached in runs/<key>/result.json."""
        from mahn.train import TrainConfig, load_run, train

        folder = self.runs_dir / run.key
        if (folder / "result.json").exists():
            return read_json(folder / "result.json")
        model_config, trainer = split_settings(run.model, dict(run.settings))
        train_config = TrainConfig(**{"epochs": self.budget.epochs, "patience": self.budget.patience,
                                      "batch_size": self.config.batch_size, "seed": run.seed,
                                      "threads": self.config.threads, "device": self.config.device,
                                      "progress": self.config.progress,
                                      **trainer})
        self.say(f"training {run.key}")
        started = time.perf_counter()
        checkpoint = folder / "checkpoints" / "last.safetensors"
        summary = train(self.dataset_dir, folder, run.model, model_config, train_config,
                        resume=checkpoint.exists(), force=not checkpoint.exists())
        model, dataset, _ = load_run(folder, self.dataset_dir)
        eval_config = EvalConfig(split="test", max_len=train_config.max_len)
        per_user = rank_users(model, dataset, eval_config)
        test = evaluate(model, dataset, eval_config, per_user)
        save_npy(folder / "test_ndcg10.npy", np.stack([per_user[p]["NDCG@10"] for p in PROTOCOLS]))
        result = {"run": run.key, "budget_name": self.budget.name, "model": run.model, "seed": run.seed,
                  "settings": dict(run.settings),
                  "test": test, "valid": summary["valid"],
                  "budget": {k: summary[k] for k in ("epochs", "steps", "sequences", "train_seconds",
                                                     "stopped_early", "best_epoch")},
                  "wall_seconds": time.perf_counter() - started}
        write_json(folder / "result.json", result)
        return result

    def usable(self, model: str) -> bool:
        """Whether the dataset can feed the model (multimodal models need features)."""
        from mahn.models import build_model, make_config

        try:
            build_model(model, make_config(model, {}), self.dataset)
        except DataError as e:
            self.notes.append(f"{LABELS.get(model, model)} skipped: {e}")
            return False
        return True

    def choose(self, model: str, base: dict) -> dict:
        """Pick settings on validation NDCG@10 (seed 0) over the budget's search space."""
        space = {**self.budget.search.get("*", {}), **self.budget.search.get(model, {})}
        from mahn.models import model_class

        if not space or not getattr(model_class(model), "trainable", True):
            return base
        best, best_score = base, -1.0
        for values in itertools.product(*space.values()):
            candidate = {**base, **dict(zip(space, values, strict=True))}
            result = self.execute(Run(model, 0).with_settings(**candidate))
            score = result["valid"]["full"]["NDCG@10"]
            if score > best_score:
                best, best_score = candidate, score
        return best

    def cell(self, model: str, settings: dict) -> list[dict]:
        return [self.execute(Run(model, seed).with_settings(**settings)) for seed in range(self.config.seeds)]

    # --- experiments ---

    def mahn_base(self) -> dict:
        """MAHN's settings on this dataset: ablated as far as the dataset's features require."""
        have = set(self.dataset.feature_modalities())
        ablate = ("" if "image" in have else "v") + ("" if "text" in have else "t")
        if ablate:
            missing = {"v": "image", "t": "text", "vt": "image and text"}[ablate]
            self.notes.append(f"the dataset lacks {missing} features: MAHN runs as MAHN-{'-'.join(ablate.upper())}")
        return {"ablate": ablate} if ablate else {}

    def run_all(self) -> dict:
        from mahn.models import MODELS

        results: dict = {"dataset": str(self.dataset_dir), "config": {
            **asdict(self.config), "out": str(self.config.out)}, "budget": asdict(self.budget)}
        experiments = self.config.experiments
        base = self.mahn_base()
        multimodal = not base
        chosen_mahn = self.choose("mahn", base)
        results["chosen"] = {"mahn": chosen_mahn}
        if "compare" in experiments or "groups" in experiments:
            models = self.config.models or tuple(MODELS)
            compare = {}
            for model in models:
                if model == "mahn":
                    compare["MAHN"] = self.cell("mahn", chosen_mahn)
                elif self.usable(model):
                    settings = self.choose(model, {})
                    results["chosen"][model] = settings
                    compare[LABELS.get(model, model)] = self.cell(model, settings)
            results["compare"] = compare
        if multimodal and "variants" in experiments:
            results["variants"] = {v: self.cell("mahn", {**chosen_mahn, "variant": v}) for v in VARIANTS}
        if multimodal and "ablations" in experiments:
            results["ablations"] = {label: self.cell("mahn", {**chosen_mahn, "ablate": a} if a else chosen_mahn)
                                    for label, a in ABLATIONS.items()}
        if not multimodal and ({"variants", "ablations"} & set(experiments)):
            self.notes.append("variants and ablations need image and text features: skipped")
        if "dims" in experiments:
            results["dims"] = {str(d): self.cell("mahn", {**chosen_mahn, "dim": d}) for d in DIMS}
        if "groups" in experiments:
            results["groups"] = self.groups(results["compare"])
        results["notes"] = self.notes
        return results

    def groups(self, compare: dict) -> dict:
        """MAHN vs the strongest other sequential model, chosen by validation NDCG@10 (never by test)."""
        rivals = {label: np.mean([r["valid"]["full"]["NDCG@10"] for r in runs])
                  for label, runs in compare.items() if label not in ("MAHN", "Popularity", "VBPR", "JRL")}
        if "MAHN" not in compare or not rivals:
            return {}
        rival = max(rivals, key=rivals.get)
        return {"rival": rival, "by": "validation full NDCG@10",
                "MAHN": group_means(compare["MAHN"]), rival: group_means(compare[rival])}


def group_means(runs: list[dict]) -> list[dict]:
    """Per frequency group: metrics averaged over seeds."""
    groups = []
    for index, first in enumerate(runs[0]["test"]["groups"]):
        row = {k: first[k] for k in ("group", "items", "min_frequency", "max_frequency", "users")}
        for protocol in PROTOCOLS:
            row[protocol] = {m: float(np.mean([r["test"]["groups"][index][protocol][m] or 0.0 for r in runs]))
                             for m in ("HR@10", "NDCG@10")}
        groups.append(row)
    return groups


def stats(runs: list[dict]) -> dict:
    """protocol -> metric -> {"mean", "std"} over seeds (population std; 0 with one seed)."""
    return {p: {m: {"mean": float(np.mean([r["test"][p][m] for r in runs])),
                    "std": float(np.std([r["test"][p][m] for r in runs]))} for m in METRICS}
            for p in PROTOCOLS}


def per_user_ndcg(out: Path, runs: list[dict]) -> np.ndarray:
    """(protocols, users) test NDCG@10 averaged over a cell's seeds."""
    return np.mean([load_npy(out / "runs" / r["budget_name"] / r["run"] / "test_ndcg10.npy") for r in runs], axis=0)


def paired_tests(out: Path, compare: dict) -> dict:
    """Wilcoxon signed-rank p-values, MAHN vs each model, on per-user test NDCG@10 (two-sided)."""
    from scipy.stats import wilcoxon

    if "MAHN" not in compare:
        return {}
    ours = per_user_ndcg(out, compare["MAHN"])
    tests = {}
    for label, runs in compare.items():
        if label == "MAHN":
            continue
        theirs = per_user_ndcg(out, runs)
        tests[label] = {}
        for index, protocol in enumerate(PROTOCOLS):
            difference = ours[index] - theirs[index]
            tests[label][protocol] = (1.0 if not np.any(difference) else
                                      float(wilcoxon(ours[index], theirs[index]).pvalue))
    return tests


# --- the report ---


def metric_table(cells: dict[str, list[dict]], cutoffs: tuple[str, ...], pvalues: dict | None = None,
                 budget: bool = False) -> str:
    columns = [(p, m) for p in PROTOCOLS for m in cutoffs]
    summary = {label: stats(runs) for label, runs in cells.items()}
    best = {c: max(summary[label][c[0]][c[1]]["mean"] for label in summary) for c in columns}
    header = ["model"] + [f"{p} {m}" for p, m in columns]
    if pvalues is not None:
        header += ["p (uni100)", "p (full)"]
    if budget:
        header += ["epochs (best)", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, s in summary.items():
        row = [label]
        for p, m in columns:
            text = f"{s[p][m]['mean']:.4f} ± {s[p][m]['std']:.4f}"
            row.append(f"**{text}**" if s[p][m]["mean"] == best[(p, m)] else text)
        if pvalues is not None:
            row += [f"{pvalues[label][p]:.2g}" if label in pvalues else "–" for p in PROTOCOLS]
        if budget:
            runs = cells[label]
            row += [f"{np.mean([r['budget']['epochs'] for r in runs]):.0f} "
                    f"({np.mean([r['budget']['best_epoch'] for r in runs]):.0f})",
                    f"{np.mean([r['budget']['train_seconds'] for r in runs]):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_bars(cells: dict[str, list[dict]], title: str, path: Path) -> None:
    """One panel per protocol (their scales differ tenfold), HR@10 and NDCG@10 bars per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(cells)
    summary = {label: stats(runs) for label, runs in cells.items()}
    metrics = ("HR@10", "NDCG@10")
    width = 0.8 / len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for i, label in enumerate(labels):
            x = np.arange(len(metrics)) + i * width
            ax.bar(x, [summary[label][protocol][m]["mean"] for m in metrics], width, capsize=3, label=label,
                   yerr=[summary[label][protocol][m]["std"] for m in metrics])
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics)
        ax.set_ylabel("test metric (mean ± std over seeds)")
        ax.set_title(f"{title}, {protocol} protocol")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_dims(cells: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [int(d) for d in cells]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for metric in ("HR@10", "NDCG@10"):
            s = [stats(cells[str(d)])[protocol][metric] for d in dims]
            ax.errorbar(dims, [c["mean"] for c in s], yerr=[c["std"] for c in s], marker="o", capsize=3,
                        label=metric)
        ax.set_xlabel("embedding size d")
        ax.set_title(f"MAHN, {protocol} protocol")
        ax.set_xticks(dims)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_groups(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k in groups if k not in ("rival", "by")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        x = np.arange(len(groups[labels[0]]))
        for i, label in enumerate(labels):
            ax.bar(x + i * 0.4, [g[protocol]["NDCG@10"] for g in groups[label]], 0.4, label=label)
        ax.set_xticks(x + 0.2, [str(g["group"]) for g in groups[labels[0]]])
        ax.set_xlabel("item group by training frequency (1 = rarest)")
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"{protocol} protocol")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def write_report(results: dict, out: Path, command: str) -> Path:
    """REPORT/report.md with the tables and plots, REPORT/results.json with every raw number."""
    budget = results["budget"]
    lines = [f"# mahn reproduce: {results['dataset']}", "", f"Command: `{command}`", "",
             f"Budget `{budget['name']}`: at most {budget['epochs']} epochs, early stopping after "
             f"{budget['patience']} epochs without a better validation NDCG@10 (full ranking); "
             f"{results['config']['seeds']} seed(s) per cell, batch size {results['config']['batch_size']}.",
             f"Search space (chosen on validation, seed 0): {budget['search'] or 'none (the papers defaults)'}.",
             f"Chosen settings: {results['chosen']}.", "",
             "Cells are test-split means ± std over seeds; the best per column is in bold. Protocols: `uni100` "
             "ranks the target among the 100 stored negatives (the paper's), `full` ranks it among all items "
             "(history masked). p: two-sided Wilcoxon signed-rank test, MAHN vs the row's model, on per-user "
             "test NDCG@10 averaged over seeds.", ""]
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    if "compare" in results:
        pvalues = results["paired_tests"]
        lines += ["", "## Comparison with the baselines (Tables 2-3), @10", "",
                  metric_table(results["compare"], ("HR@10", "NDCG@10"), pvalues, budget=True),
                  "", "## Comparison, @20", "", metric_table(results["compare"], ("HR@20", "NDCG@20"))]
    if "variants" in results:
        lines += ["", "## Fusion variants (Tables 4-5)", "", metric_table(results["variants"], SHOWN)]
    if "ablations" in results:
        plot_bars(results["ablations"], "MAHN ablations", out / "fig3_ablations.png")
        lines += ["", "## Ablations (Fig. 3)", "", metric_table(results["ablations"], SHOWN), "",
                  "![ablations](fig3_ablations.png)"]
    if "dims" in results:
        plot_dims(results["dims"], out / "fig4_dims.png")
        lines += ["", "## Embedding size (Fig. 4)", "",
                  metric_table({f"d = {d}": runs for d, runs in results["dims"].items()}, SHOWN), "",
                  "![dims](fig4_dims.png)"]
    if results.get("groups"):
        groups = results["groups"]
        plot_groups(groups, out / "fig5_groups.png")
        lines += ["", f"## Item-frequency groups (Fig. 5): MAHN vs {groups['rival']} "
                  f"(the strongest other sequential model by {groups['by']})", "",
                  "| group | train freq | users | " + " | ".join(
                      f"{label} {p} NDCG@10" for label in ("MAHN", groups["rival"]) for p in PROTOCOLS) + " |",
                  "|" + "---|" * (3 + 2 * len(PROTOCOLS))]
        for ours, theirs in zip(groups["MAHN"], groups[groups["rival"]], strict=True):
            lines.append(f"| {ours['group']} | {ours['min_frequency']}-{ours['max_frequency']} | {ours['users']} | "
                         + " | ".join(f"{g[p]['NDCG@10']:.4f}" for g in (ours, theirs) for p in PROTOCOLS) + " |")
        lines += ["", "![groups](fig5_groups.png)"]
    path = out / "report.md"
    write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def reproduce(dataset_dir: Path, config: ReproduceConfig, command: str = "mahn reproduce", say=print) -> dict:
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    reproduction = Reproduction(dataset_dir, config, say)
    results = reproduction.run_all()
    results["paired_tests"] = paired_tests(config.out, results["compare"]) if "compare" in results else {}
    results["seconds"] = time.perf_counter() - started
    write_json(config.out / "results.json", results)
    report = write_report(results, config.out, command)
    say(f"report: {report}")
    return results
