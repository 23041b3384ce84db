"""`asdtool pseudolabel`: pseudo attribute labels by AHC of a stage-one model's embeddings, with UMAP plots."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asdtool.config.stages import PseudolabelConfig


def results_table(result, title: str, suggest: bool) -> Table:
    """Return a rich table: machine, clips, clusters, silhouette, ARI (and the suggested count)."""
    table = Table(title=title, title_justify="left")
    table.add_column("machine")
    for col in ("clips", "clusters", "silhouette", "ARI (hidden)") + (("suggested k",) if suggest else ()):
        table.add_column(col, justify="right")
    for m, mc in result.machines.items():
        k = f"{mc.k}" + (" (silhouette)" if mc.k_from == "silhouette" else "")
        sil = "-" if mc.silhouette is None else f"{mc.silhouette:.3f}"
        ari = "-" if mc.ari is None else f"{mc.ari:.3f}"
        cells = [m, str(len(mc.clips)), k, sil, ari]
        if suggest:
            best = mc.suggestion.best_k if mc.suggestion else None
            cells.append("-" if best is None else f"{best} ({mc.suggestion.silhouette[best]:.3f})")
        table.add_row(*cells)
    return table


def run(cfg: PseudolabelConfig) -> None:
    """Cluster the embeddings of machine types without attributes into pseudo attribute classes (paper, section 2.4).

    The labels feed `asdtool finetune --labels pseudo --pseudo-labels OUT` (the -pse models).
    """
    from asdtool.train.pseudolabel import pseudolabel_to_files

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]embed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )
    task = bar.add_task("clips", total=None)

    def on_clips(advance: int, total: int) -> None:
        """Start the bar on the first batch, then advance it by `advance` of `total` clips."""
        if not bar.live.is_started:  # the bar appears with the first batch, after all input checks
            bar.start()
        bar.update(task, advance=advance, total=total)

    try:
        result, paths = pseudolabel_to_files(
            cfg.model, cfg.data_root, cfg.out, cfg.clusters, cfg.plots, cfg.suggest, cfg.suggest_range, cfg.linkage,
            cfg.seconds, cfg.batch_size, cfg.device, cfg.seed, progress=on_clips, reading=cfg.reading,
            attribute_truth=cfg.attribute_truth, force=cfg.force,
        )  # fmt: skip
    finally:
        if bar.live.is_started:
            bar.stop()
    table = results_table(result, f"pseudolabel -> {paths.labels}", cfg.suggest)
    table.caption = f"{cfg.linkage} linkage; UMAP plots in {paths.plots}; summary {paths.summary.name}"
    Console().print(table)
