"""Rich tables shared by several commands."""

from __future__ import annotations

from rich.table import Table

from asdtool.evaluate.report import percent


def results_table(summary: dict, title: str) -> Table:
    """Return a rich table in the paper's Table 4 layout (percentages)."""
    table = Table(title=title, title_justify="left")
    table.add_column("machine")
    for col in ("AUC (source)", "AUC (target)", "pAUC", "hmean"):
        table.add_column(col, justify="right")
    for machine, m in summary["machines"].items():
        table.add_row(machine, *(percent(m[k]) for k in ("auc_source", "auc_target", "pauc", "hmean")))
    table.add_section()
    table.add_row(
        "[bold]hmean",
        *(percent(summary[k], "[bold]") for k in ("hmean_auc_source", "hmean_auc_target", "hmean_pauc", "official_score")),
    )
    table.caption = f"official score {100 * summary['official_score']:.2f}, arithmetic mean {100 * summary['arithmetic_mean']:.2f}"
    return table
