"""The evaluation result as Rich tables: the protocols evaluated, then the item-frequency groups."""

from __future__ import annotations

from mahn.evaluation.metrics import METRICS, PROTOCOLS


def render(result: dict, console=None) -> None:
    """Print the metrics table (and the per-group table) with Rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown = [p for p in PROTOCOLS if p in result]  # both, unless the evaluation asked for one
    boosted = f", every new item's score + {result['new_item_boost']:g}" if result.get("new_item_boost") else ""
    table = Table(title=f"{result['split']} split, {result['users']} users{boosted}")
    table.add_column("metric")
    for protocol in shown:
        table.add_column(protocol, justify="right")
    for metric in METRICS:
        table.add_row(metric, *(f"{result[p][metric]:.4f}" for p in shown))
    console.print(table)
    new = result.get("new_items")
    if new:
        cold = Table(title=f"users whose target is a new item ({new['users']} users, {new['items']} new items)")
        cold.add_column("metric")
        for protocol in shown:
            cold.add_column(protocol, justify="right")
        for metric in METRICS:
            cold.add_row(metric, *(f"{new[p][metric]:.4f}" if new[p][metric] is not None else "-"
                                   for p in shown))
        console.print(cold)
    if result.get("groups"):
        groups = Table(title="by target item's training frequency (group 1 = rarest)")
        for column in ("group", "train freq", "users", *(f"{p} {m}" for p in shown for m in ("HR@10", "NDCG@10"))):
            groups.add_column(column, justify="right")
        for g in result["groups"]:
            cells = [f"{g[p][m]:.4f}" if g[p][m] is not None else "-" for p in shown
                     for m in ("HR@10", "NDCG@10")]
            groups.add_row(str(g["group"]), f"{g['min_frequency']}-{g['max_frequency']}", str(g["users"]), *cells)
        console.print(groups)
