"""`asdtool corpus`: write an unlabeled pre-training corpus of generic machine-like sound."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asdtool.config.stages import CorpusConfig


def run(cfg: CorpusConfig) -> None:
    """Write an unlabeled corpus of machine-like sound (eight families, never a dev clip) and count its families."""
    from asdtool.core.atomic import check_writable
    from asdtool.data.synth.corpus import check_corpus_out, write_corpus

    # a folder of anything else is refused here, before the bar; --overwrite is checked again by write_corpus
    check_corpus_out(cfg.out, cfg.overwrite)
    check_writable(cfg.out)
    console = Console()
    with Progress(
        TextColumn("corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("clips", total=None)
        summary = write_corpus(
            cfg.out, seed=cfg.seed, clips=cfg.clips, seconds=cfg.seconds,
            progress=lambda done, total: bar.update(task, completed=done, total=total), overwrite=cfg.overwrite,
        )  # fmt: skip

    table = Table(title=f"{summary.out} (seed {summary.seed}, {summary.seconds:g} s clips)")
    table.add_column("family")
    table.add_column("main", justify="right")
    table.add_column("share", justify="right")
    table.add_column("mixed in", justify="right")
    for family, count in summary.families.items():
        table.add_row(family, str(count), f"{count / summary.clips:.0%}", str(summary.mixed_in[family]))
    console.print(table)
    console.print(
        f"{summary.clips} clips written to {summary.out} "
        f"({summary.mixed} mixed, {summary.events} with a fault-like event)"
    )
