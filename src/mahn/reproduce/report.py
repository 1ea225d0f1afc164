"""REPORT/report.md: the tables (mean ± std over seeds, best in bold, p-values), notes and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mahn.evaluation import PROTOCOLS, SHOWN, seed_stats
from mahn.io import write_bytes
from mahn.models import label as model_label
from mahn.reproduce.plots import plot_bars, plot_dims, plot_groups


def spread(stat: dict) -> str:
    """One `seed_stats` entry as every report cell shows it: mean ± std over seeds."""
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def metric_table(cells: dict[str, list[dict]], cutoffs: tuple[str, ...], pvalues: dict | None = None,
                 budget: bool = False) -> str:
    columns = [(p, m) for p in PROTOCOLS for m in cutoffs]
    summary = {label: seed_stats([r["test"] for r in runs]) for label, runs in cells.items()}
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
            text = spread(s[p][m])
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


def write_report(results: dict, out: Path, command: str) -> Path:
    """REPORT/report.md with the tables and plots, REPORT/results.json with every raw number."""
    budget = results["budget"]
    lines = [f"# mahn reproduce: {results['dataset']}", "", f"Command: `{command}`", "",
             f"Budget `{budget['name']}`: " + (
                 f"at most {budget['epochs']} epochs, early stopping after {budget['patience']} epochs without a "
                 "better validation NDCG@10 (full ranking); " if budget["epochs"] is not None else
                 "each model's own epoch cap and patience (`mahn models --settings`), early stopping on validation "
                 "NDCG@10 (full ranking); ")
             + f"{results['config']['seeds']} seed(s) per cell, batch size {results['config']['batch_size']}.",
             f"Search space (chosen on validation, seed 0): {budget['search'] or 'none (the papers defaults)'}.",
             f"Settings preset: {results['config'].get('preset') or 'none (the declared defaults)'}.",
             f"Chosen settings: {results['chosen']}.",
             "Settings tried on validation per model: "
             + (", ".join(f"{model_label(m)} {n}" for m, n in results.get("trials", {}).items()) or "none") + ".", "",
             "Cells are test-split means ± std over seeds; the best per column is in bold. Protocols: `uni100` "
             "ranks the target among the 100 stored negatives (the paper's), `full` ranks it among all items "
             "(history masked). p: two-sided Wilcoxon signed-rank test, MAHN vs the row's model, on per-user "
             "test NDCG@10 averaged over seeds.", ""]
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    if "compare" in results:
        pvalues = results["paired_tests"]
        lines += ["", "## Comparison with the baselines (Tables 2-3), @10", "",
                  metric_table(results["compare"], ("HR@10", "NDCG@10"), pvalues, budget=True)]
        if results.get("paired_tests_mgt"):
            ours = model_label("mgt")
            lines += ["", f"p, {ours} vs the row's model (the same test):", "",
                      "| model | p (uni100) | p (full) |", "|---|---|---|"]
            lines += [f"| {name} | " + " | ".join(f"{tests[p]:.2g}" for p in PROTOCOLS) + " |"
                      for name, tests in results["paired_tests_mgt"].items()]
        best = results.get("best_vs_best")
        if best:
            ours, theirs = best["multimodal"], best["id_only"]
            lines += ["", f"Best model that reads content against the best that does not (each chosen by "
                      f"{best['chosen_by']}): " + "; ".join(
                          f"{p} NDCG@10 {ours} {best['test_ndcg10'][ours][p]:.4f}, {theirs} "
                          f"{best['test_ndcg10'][theirs][p]:.4f}, "
                          f"{ours if best['higher'][p] == 'multimodal' else theirs} higher, p = {best[p]:.2g}"
                          for p in PROTOCOLS) + "."]
        lines += ["", "## Comparison, @20", "", metric_table(results["compare"], ("HR@20", "NDCG@20"))]
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
    if results.get("cold"):
        cells = results["cold"]
        first = next(iter(cells.values()))[0]["test"]
        new = [(p, m) for p in PROTOCOLS for m in ("HR@10", "NDCG@10")]
        lines += ["", f"## New items: {first['new_items']['items']} items never seen in training, "
                  f"{first['new_items']['users']} test users whose target is one of them", "",
                  "The items were held out of training and validation (`mahn cold-split`); a model with content "
                  "features ranks them through their features, an ID-only model cannot know them. The first two "
                  f"columns are every test user of this split ({first['users']}): what the new items cost or give "
                  "overall; the others, the users whose target is new.", "",
                  "| model | " + " | ".join(f"all users: {p} NDCG@10" for p in PROTOCOLS) + " | "
                  + " | ".join(f"new targets: {p} {m}" for p, m in new) + " |",
                  "|" + "---|" * (1 + len(PROTOCOLS) + len(new))]
        for label, runs in cells.items():
            every = seed_stats([r["test"] for r in runs], ("NDCG@10",))
            news = seed_stats([r["test"]["new_items"] for r in runs], ("HR@10", "NDCG@10"))
            lines.append(f"| {label} | " + " | ".join(spread(every[p]["NDCG@10"]) for p in PROTOCOLS) + " | "
                         + " | ".join(spread(news[p][m]) for p, m in new) + " |")
    path = out / "report.md"
    write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
