"""`asdtool synth`: write the embedded synthetic DCASE 2024 dev set."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asdtool.config import SynthConfig


def run(cfg: SynthConfig) -> None:
    """Write a synthetic DCASE 2024 Task 2 dev set (seven machine types, exact layout and names)."""
    from asdtool.atomic import check_output
    from asdtool.data.dcase import DEV_MACHINES
    from asdtool.data.synth import MACHINES, SynthSizes, paper_sizes, synthesize

    check_output(cfg.out, folder=True)  # machine folders inside are checked against --overwrite by synthesize
    base = paper_sizes() if cfg.paper_sizes else SynthSizes()
    sizes = SynthSizes(
        seconds=base.seconds if cfg.seconds is None else cfg.seconds,
        source_train=base.source_train if cfg.source_train is None else cfg.source_train,
        target_train=base.target_train if cfg.target_train is None else cfg.target_train,
        test_per_domain=base.test_per_domain if cfg.test_per_domain is None else cfg.test_per_domain,
    )
    console = Console()
    with Progress(
        TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("clips", total=None)
        summary = synthesize(
            cfg.out, seed=cfg.seed, sizes=sizes, machines=cfg.machine or DEV_MACHINES,
            progress=lambda done, total: bar.update(task, completed=done, total=total), overwrite=cfg.overwrite,
        )  # fmt: skip

    table = Table(title=f"{summary.out} (seed {summary.seed}, {sizes.seconds:g} s clips)")
    table.add_column("machine")
    table.add_column("attributes")
    for column in ("train source", "train target", "test normal", "test anomaly"):
        table.add_column(column, justify="right")
    for name, counts in summary.counts.items():
        spec = MACHINES[name]
        keys = ", ".join(spec.keys)
        table.add_row(
            name,
            f"noAttribute (hidden: {keys})" if spec.hidden else keys,
            *(str(counts[k]) for k in ("train_source", "train_target", "test_normal", "test_anomaly")),
        )
    console.print(table)
    console.print(f"{summary.total} clips written to {summary.out}")
