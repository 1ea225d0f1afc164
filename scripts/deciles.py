"""Per-decile test metrics of the probes in a folder (scripts/probe.sh), as a Markdown table and a plot.

Usage: python scripts/deciles.py OUT [--metric HR@10] [--protocol uni100] [--plot OUT/deciles.png]
Rows: one per NAME.test.json in OUT, with the item-frequency groups (1 = rarest, by training
frequency), the overall uni100 and full NDCG@10, and the run's epochs (best epoch).
OUT may also be a `mahn reproduce` results.json: one row per compared model, each number the mean over
its seeds.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson


def rows(folder: Path, metric: str, protocol: str) -> list[dict]:
    found = []
    for path in sorted(folder.glob("*.test.json")):
        result = orjson.loads(path.read_bytes())
        summary_path = folder / path.name.removesuffix(".test.json") / "summary.json"
        summary = orjson.loads(summary_path.read_bytes()) if summary_path.exists() else {}
        found.append({"name": path.name.removesuffix(".test.json"),
                      "groups": [g[protocol][metric] for g in result["groups"]],
                      "uni100": result["uni100"]["NDCG@10"], "full": result["full"]["NDCG@10"],
                      "epochs": summary.get("epochs"), "best": summary.get("best_epoch")})
    return found


def reproduce_rows(path: Path, metric: str, protocol: str) -> list[dict]:
    """The compared models of a `mahn reproduce` results.json, averaged over seeds."""
    import numpy as np

    found = []
    for name, runs in orjson.loads(path.read_bytes())["compare"].items():
        tests = [r["test"] for r in runs]
        found.append({"name": f"{name} ({len(runs)} seeds)",
                      "groups": [float(np.mean([t["groups"][g][protocol][metric] or 0.0 for t in tests]))
                                 for g in range(len(tests[0]["groups"]))],
                      "uni100": float(np.mean([t["uni100"]["NDCG@10"] for t in tests])),
                      "full": float(np.mean([t["full"]["NDCG@10"] for t in tests])),
                      "epochs": round(float(np.mean([r["budget"]["epochs"] for r in runs]))),
                      "best": round(float(np.mean([r["budget"]["best_epoch"] for r in runs])))})
    return found


def table(found: list[dict], metric: str, protocol: str) -> str:
    groups = len(found[0]["groups"]) if found else 0
    header = ["run", *[f"g{g + 1}" for g in range(groups)], "uni100 NDCG@10", "full NDCG@10", "epochs (best)"]
    lines = [f"{protocol} {metric} per item-frequency group (g1 = rarest); random ranking scores 10/101 = 0.099 "
             "on uni100 HR@10", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in found:
        cells = [r["name"], *[f"{v:.3f}" if v is not None else "–" for v in r["groups"]],
                 f"{r['uni100']:.4f}", f"{r['full']:.4f}", f"{r['epochs']} ({r['best']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(found: list[dict], metric: str, protocol: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in found:
        ax.plot(range(1, len(r["groups"]) + 1), [v or 0.0 for v in r["groups"]], marker="o", label=r["name"])
    if protocol == "uni100" and metric == "HR@10":
        ax.axhline(10 / 101, color="grey", linestyle="--", label="random")
    ax.set_xlabel("item group by training frequency (1 = rarest)")
    ax.set_ylabel(f"test {protocol} {metric}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--metric", default="HR@10")
    parser.add_argument("--protocol", default="uni100")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.folder.suffix == ".json":
        found = reproduce_rows(args.folder, args.metric, args.protocol)
    else:
        found = rows(args.folder, args.metric, args.protocol)
    print(table(found, args.metric, args.protocol))
    if args.plot:
        plot(found, args.metric, args.protocol, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
