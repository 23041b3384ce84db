"""`asdtool ensemble`: z-normalised linear fusion of score folders, with the paper's grid search."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from asdtool.commands.tables import results_table
from asdtool.config.stages import EnsembleConfig


def run(cfg: EnsembleConfig) -> None:
    """Normalise each model's scores per machine type (zero mean, unit std) and combine them linearly."""
    from asdtool.detect.ensemble import ensemble_to_folder

    r = ensemble_to_folder(cfg.scores, cfg.out, cfg.weights, cfg.search, cfg.data_root, cfg.step, cfg.top, cfg.search_out,
                           cfg.reading, force=cfg.force)  # fmt: skip
    console = Console()
    if r.ranked is not None:
        table = Table(title=f"grid search: {len(r.ranked)} weight vectors, step {cfg.step:g}, {r.search_seconds:.2f} s",
                      title_justify="left")  # fmt: skip
        table.add_column("rank", justify="right")
        for name in r.names:
            table.add_column(name, justify="right")
        table.add_column("official score", justify="right")
        for i, p in enumerate(r.ranked[: cfg.top], start=1):
            table.add_row(str(i), *(f"{w:.2f}" for w in p.weights), f"{100 * p.official_score:.2f}")
        console.print(table)
    if r.summary is not None:
        label = ", ".join(f"{w:g} {n}" for w, n in zip(r.weights, r.names))
        console.print(results_table(r.summary, f"{cfg.out.name}: {label}"))
    written = "CSVs and scores.h5" if r.wrote_store else "CSVs"
    extra = "" if r.with_train else " (test clips only: not every folder has training-clip scores)"
    console.print(f"wrote fused {written} of {len(r.names)} models to {cfg.out}{extra}")
