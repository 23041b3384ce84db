"""`asdtool embed`: embed every train and test clip with a fine-tuned model or a frozen backbone into an HDF5 store."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from asdtool.config.stages import EmbedConfig


def run(cfg: EmbedConfig) -> None:
    """Embed every train and test clip of every machine type (batched, inference mode)."""
    from asdtool.detect.embed import embed_to_store

    with Progress(
        TextColumn("[bold]embed"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} clips/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("embed", total=None, rate=0.0)
        frozen = None
        if cfg.backbone is not None:
            frozen = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "size": cfg.size, "layer": cfg.layer,
                      "pooling": cfg.pooling, "seed": cfg.seed}  # fmt: skip
        dataset, groups, dev = embed_to_store(
            cfg.model, cfg.data_root, cfg.out, cfg.batch_size, cfg.device, cfg.amp, cfg.seconds, cfg.name,
            progress=lambda n, total: bar.update(task, advance=n, total=total, rate=bar.tasks[0].speed or 0.0),
            frozen=frozen, reading=cfg.reading, channel=cfg.channel, force=cfg.force,
        )  # fmt: skip
        rate = bar.tasks[0].finished_speed or bar.tasks[0].speed or 0.0
    table = Table(title=f"embed -> {cfg.out}", title_justify="left")
    for col in ("machine", "train clips", "test clips", "dims"):
        table.add_column(col, justify="right" if col != "machine" else "left")
    for machine in dataset.machines:
        train = groups.get((machine, "train"))
        test = groups.get((machine, "test"))
        dims = (train or test)[1].shape[1]
        table.add_row(machine, str(len(train[0]) if train else 0), str(len(test[0]) if test else 0), str(dims))
    table.caption = f"{len(dataset.clips)} clips, {rate:.1f} clips/s on {dev}"
    Console().print(table)
