"""The before/after table of docs/investigations/defaults.md: test NDCG@10 (full ranking and uni100) of one seed,
`mahn train DATA --model M` with the old defaults (runs/before, commit e46aee7) and today's (runs/after).

Usage: python scripts/before_after.py [--runs runs] [--json docs/investigations/defaults.json]
The runs come from `scripts/defaults.sh before|after DATASET...` (an "after" run missing there is read from
seed 0 of `scripts/defaults.sh report DATASET`, the same command); a run still missing on either side is shown
as "…" and left out of the JSON. The JSON is what the README's numbers on today's defaults are read from.
A row the JSON already holds whose runs are not under --runs (runs/ is not committed: a later session adds a
row without training every other again) is kept as it is, marked "kept", with its test against the old defaults;
the best-against-best test is kept where both of its runs are kept rows (it needs their per-user scores), and
marked stale where one is kept and the other new.

Where a row has more seeds (`MODEL-seed1`, `MODEL-seed2` in runs/before/DATASET and runs/after/DATASET:
runs/lanes-style `scripts/probe.sh ... --seed N`), the row is the mean over the seeds both sides have, and
the table says how many.

Per dataset it also pairs the best multimodal run (MAHN, MGT) with the best ID-only one (SASRec, BERT4Rec,
GRU4Rec) of today's defaults, each chosen by validation full NDCG@10, and tests them on per-user test NDCG@10
(two-sided Wilcoxon over the test users of one seed: whether these users' scores differ, not whether a reseeded
run would; the 3-seed reports test over seeds).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import orjson

from mahn.data.dataset import covered_modalities
from mahn.reproduce.stats import paired_p

DATASETS = ("demo", "office", "instruments", "hm", "phones", "clothing")
MODELS = ("mahn", "mgt", "sasrec", "bert4rec", "gru4rec")
MULTIMODAL = ("mahn", "mgt")
LABELS = {"mahn": "MAHN", "mgt": "MGT (ours)", "sasrec": "SASRec", "bert4rec": "BERT4Rec", "gru4rec": "GRU4Rec"}


def probe(path: Path) -> dict | None:
    """One probe run (scripts/probe.sh: RUN/ and RUN.test.json); None while it is not finished."""
    if not path.with_suffix(".test.json").is_file():
        return None
    test = orjson.loads(path.with_suffix(".test.json").read_bytes())
    summary = orjson.loads((path / "summary.json").read_bytes())
    return {"full": test["full"]["NDCG@10"], "uni100": test["uni100"]["NDCG@10"], "epochs": summary["epochs"],
            "best_epoch": summary["best_epoch"], "valid_full": summary["valid"]["full"]["NDCG@10"], "run": str(path)}


def report_run(report: Path, model: str, data: Path) -> dict | None:
    """Seed 0 of `model` at its defaults in a `standard` report (scripts/defaults.sh report): the same command."""
    key = model
    if model == "mahn":  # MAHN drops the modalities the dataset lacks, as `mahn reproduce` runs it
        have = covered_modalities(orjson.loads((data / "manifest.json").read_bytes()))
        ablate = ("" if "image" in have else "v") + ("" if "text" in have else "t")
        key = f"mahn-ablate={ablate}" if ablate else "mahn"
    result_file = report / "runs" / "standard" / f"{key}-seed0" / "result.json"
    if not result_file.is_file():
        return None
    result = orjson.loads(result_file.read_bytes())
    return {"full": result["test"]["full"]["NDCG@10"], "uni100": result["test"]["uni100"]["NDCG@10"],
            "epochs": result["budget"]["epochs"], "best_epoch": result["budget"]["best_epoch"],
            "valid_full": result["valid"]["full"]["NDCG@10"], "run": str(result_file.parent)}


SEEDS = (1, 2)  # seeds beyond 0, where a row was rerun (runs/{before,after}/DATASET/MODEL-seedN)


def collect(runs: Path) -> dict:
    """dataset -> model -> {"before", "after"}; "after" is a probe in runs/after, else seed 0 of the report.
    Each side is seed 0's run, or with more seeds on both sides their mean ("seeds", "per_seed")."""
    found: dict = {}
    for dataset in DATASETS:
        for model in MODELS:
            report, data = runs / "reproduce" / "defaults" / dataset, runs / "real" / dataset
            after = probe(runs / "after" / dataset / model) or (
                report_run(report, model, data) if report.is_dir() else None)
            pair = {"before": probe(runs / "before" / dataset / model), "after": after}
            if pair["before"] and pair["after"]:
                more = {seed: [probe(runs / side / dataset / f"{model}-seed{seed}") for side in ("before", "after")]
                        for seed in SEEDS}
                more = {seed: sides for seed, sides in more.items() if all(sides)}
                if more:
                    pair = {side: averaged(pair[side], [sides[i] for sides in more.values()], [0, *more])
                            for i, side in enumerate(("before", "after"))}
            if any(pair.values()):
                found.setdefault(dataset, {})[model] = pair
    return found


def averaged(first: dict, others: list[dict], seeds: list[int]) -> dict:
    """Seed 0's run (kept for its epochs and its per-user scores) with the mean over every seed's test scores."""
    runs = [first, *others]
    return {**first, "seeds": seeds, "per_seed": [{k: r[k] for k in ("full", "uni100", "valid_full", "run")}
                                                  for r in runs],
            **{key: float(np.mean([r[key] for r in runs])) for key in ("full", "uni100", "valid_full")}}


def per_user(run: dict) -> dict[str, np.ndarray]:
    """Per-user test NDCG@10 under both protocols: stored by the report, recomputed for a probe."""
    from mahn.evaluation import PROTOCOLS, EvalConfig, rank_users
    from mahn.training import load_run

    stored = Path(run["run"]) / "test_ndcg10.npy"
    if stored.is_file():
        return dict(zip(PROTOCOLS, np.load(stored), strict=True))
    model, dataset, record = load_run(Path(run["run"]), device="cpu")
    scores = rank_users(model, dataset, EvalConfig(split="test", max_len=record["train"]["max_len"]))
    return {protocol: scores[protocol]["NDCG@10"] for protocol in PROTOCOLS}


def chosen(models: dict) -> tuple[str, str] | None:
    """The best multimodal and the best ID-only model of today's defaults on one dataset, by validation."""
    after = {model: pair["after"] for model, pair in models.items() if pair["after"] is not None}
    sides = [[m for m in after if m in MULTIMODAL], [m for m in after if m not in MULTIMODAL]]
    if not all(sides):
        return None
    multimodal, id_only = (max(side, key=lambda m: after[m]["valid_full"]) for side in sides)
    return multimodal, id_only


def paired_test(models: dict, committed: dict | None) -> dict | None:
    """best_vs_best from the runs here; a committed test where both chosen rows are kept; else a stale mark."""
    pair = chosen(models)
    if pair is None:
        return None
    kept = ["kept" in models[model] for model in pair]
    if not any(kept):
        return best_vs_best(models, *pair)
    if all(kept) and committed and (committed["multimodal"], committed["id_only"]) == tuple(LABELS[m] for m in pair):
        return committed
    return {"multimodal": LABELS[pair[0]], "id_only": LABELS[pair[1]],
            "stale": "one of the two runs is not here and the other is new: train both again to test them"}


def best_vs_best(models: dict, multimodal: str, id_only: str) -> dict:
    """The best multimodal run against the best ID-only run of today's defaults on one dataset (see the top)."""
    after = {model: pair["after"] for model, pair in models.items()}
    first, second = per_user(after[multimodal]), per_user(after[id_only])
    result = {"multimodal": LABELS[multimodal], "id_only": LABELS[id_only], "chosen_by": "validation full NDCG@10",
              "seeds": 1}
    for protocol, a in first.items():
        b = second[protocol]
        result[protocol] = {"p": paired_p(a, b),
                            "higher": LABELS[multimodal] if a.mean() >= b.mean() else LABELS[id_only],
                            "multimodal": float(a.mean()), "id_only": float(b.mean())}
    return result


def below_tests(found: dict) -> dict:
    """For each row where today's defaults score below the old ones under full ranking: is the loss real? Two-sided
    Wilcoxon signed-rank over the test users of per-user NDCG@10, each side averaged over its seeds."""
    tests: dict = {}
    for dataset, models in found.items():
        for model, pair in models.items():
            if not (pair["before"] and pair["after"]) or pair["after"]["full"] >= pair["before"]["full"]:
                continue
            sides = {side: [per_user(run) for run in pair[side].get("per_seed", [pair[side]])]
                     for side in ("before", "after")}
            result = {"seeds": len(sides["after"])}
            for protocol in ("full", "uni100"):
                before, after = (np.mean([scores[protocol] for scores in sides[side]], axis=0)
                                 for side in ("before", "after"))
                result[protocol] = {"p": paired_p(after, before),
                                    "higher": "after" if after.mean() >= before.mean() else "before"}
            tests.setdefault(dataset, {})[model] = result
    return tests


def keep_committed(found: dict, committed: dict) -> dict:
    """`found` with the committed rows whose runs are not here, marked "kept", in the order DATASETS, MODELS."""
    merged = {dataset: dict(models) for dataset, models in found.items()}
    for dataset, models in committed.get("before_after", {}).items():
        for model, pair in models.items():
            local = merged.get(dataset, {}).get(model)
            if not (local and local["before"] and local["after"]):
                merged.setdefault(dataset, {})[model] = {**pair, "kept": True}
    return {dataset: {model: merged[dataset][model] for model in MODELS if model in merged[dataset]}
            for dataset in DATASETS if dataset in merged}


def cell(run: dict | None, protocol: str) -> str:
    return "…" if run is None else f"{run[protocol]:.4f}"


def change(pair: dict, protocol: str) -> str:
    if pair["before"] is None or pair["after"] is None or pair["before"][protocol] == 0:
        return "" if pair["before"] is None or pair["after"] is None else "new"
    return f"{pair['after'][protocol] / pair['before'][protocol] - 1:+.0%}"


def markdown(found: dict) -> str:
    lines = ["| dataset | model | full, before | full, after | change | uni100, before | uni100, after | change "
             "| epochs (best), after | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, models in found.items():
        for model, pair in models.items():
            after = pair["after"]
            epochs = "…" if after is None else f"{after['epochs']} ({after['best_epoch']})"
            seeds = len((after or {}).get("seeds", [0]))
            lines.append(f"| {dataset} | {LABELS[model]} | {cell(pair['before'], 'full')} | {cell(after, 'full')} "
                         f"| {change(pair, 'full')} | {cell(pair['before'], 'uni100')} | {cell(after, 'uni100')} "
                         f"| {change(pair, 'uni100')} | {epochs} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="holds before/, after/, reproduce/defaults/ "
                        "and the prepared datasets in real/ (scripts/defaults.sh)")
    parser.add_argument("--json", type=Path, help="also write the finished pairs here (atomically)")
    args = parser.parse_args()
    found = collect(args.runs)
    committed = orjson.loads(args.json.read_bytes()) if args.json and args.json.is_file() else {}
    found = keep_committed(found, committed)
    print(markdown(found))
    pairs = {dataset: paired_test(models, committed.get("best_vs_best", {}).get(dataset))
             for dataset, models in found.items()}
    print("\n| dataset | best multimodal | best ID-only | test full NDCG@10 | p (full), higher | "
          "test uni100 NDCG@10 | p (uni100), higher |\n|---|---|---|---|---|---|---|")
    for dataset, pair in pairs.items():
        if pair is not None and "stale" in pair:
            print(f"| {dataset} | {pair['multimodal']} | {pair['id_only']} | {pair['stale']} | | | |")
        elif pair is not None:
            cells = [f"{pair[p]['multimodal']:.4f} / {pair[p]['id_only']:.4f} | {pair[p]['p']:.2g}, {pair[p]['higher']}"
                     for p in ("full", "uni100")]
            print(f"| {dataset} | {pair['multimodal']} | {pair['id_only']} | " + " | ".join(cells) + " |")
    below = below_tests({dataset: {model: pair for model, pair in models.items() if "kept" not in pair}
                         for dataset, models in found.items()})
    for dataset, tests in committed.get("below", {}).items():  # a kept row keeps its test
        for model, test in tests.items():
            if "kept" in found.get(dataset, {}).get(model, {}):
                below.setdefault(dataset, {})[model] = test
    print("\n| dataset | model, below its old defaults | seeds | p (full), higher | p (uni100), higher |\n"
          "|---|---|---|---|---|")
    for dataset, models in below.items():
        for model, test in models.items():
            print(f"| {dataset} | {LABELS[model]} | {test['seeds']} | "
                  + " | ".join(f"{test[p]['p']:.2g}, {test[p]['higher']}" for p in ("full", "uni100")) + " |")
    if args.json:
        complete = {dataset: {model: {side: pair[side] for side in ("before", "after", "kept") if side in pair}
                              for model, pair in models.items() if pair["before"] and pair["after"]}
                    for dataset, models in found.items()}
        complete = {dataset: models for dataset, models in complete.items() if models}
        complete = {"before_after": complete, "best_vs_best": {d: pair for d, pair in pairs.items() if pair},
                    "below": below}
        temporary = args.json.with_name(f".{args.json.name}.tmp")
        temporary.write_bytes(orjson.dumps(complete, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        os.replace(temporary, args.json)


if __name__ == "__main__":
    main()
