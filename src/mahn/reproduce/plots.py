"""The report's PNG figures (Matplotlib, Agg): ablation bars, the embedding-size curve, frequency groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mahn.evaluation import PROTOCOLS, seed_stats
from mahn.io import write_bytes


def plot_bars(cells: dict[str, list[dict]], title: str, path: Path) -> None:
    """One panel per protocol (their scales differ tenfold), HR@10 and NDCG@10 bars per cell."""
    plt = pyplot()
    labels = list(cells)
    summary = {label: seed_stats([r["test"] for r in runs]) for label, runs in cells.items()}
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
    plt = pyplot()
    dims = [int(d) for d in cells]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for metric in ("HR@10", "NDCG@10"):
            s = [seed_stats([r["test"] for r in cells[str(d)]])[protocol][metric] for d in dims]
            ax.errorbar(dims, [c["mean"] for c in s], yerr=[c["std"] for c in s], marker="o", capsize=3,
                        label=metric)
        ax.set_xlabel("embedding size d")
        ax.set_title(f"MAHN, {protocol} protocol")
        ax.set_xticks(dims)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_groups(groups: dict, path: Path) -> None:
    plt = pyplot()
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


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    import io

    plt = pyplot()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
