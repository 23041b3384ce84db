"""`asdtool baseline`: score clips with a reference detector (log-mel 1-NN, or the organisers' autoencoder)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from asdtool.config.stages import BaselineConfig


def run(cfg: BaselineConfig) -> None:
    """Score test clips with the --method detector and write the official score files.

    Writes anomaly_score_<machine>_section_NN_test.csv and, for decision thresholds,
    anomaly_score_<machine>_section_NN_train.csv: the log-mel methods score training clips
    leave-one-out, the autoencoder scores them with the model trained on them.
    """
    from asdtool.detect.baseline import baseline_to_folder

    autoencoder = cfg.method == "autoencoder"
    settings = None
    if autoencoder:
        from asdtool.models.autoencoder import TrainSettings

        settings = TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                 validation_split=cfg.validation_split, seed=cfg.seed)  # fmt: skip
    last = {}  # machine -> its autoencoder's last epoch

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        clips = bar.add_task(f"{cfg.method} baseline", total=None, note="clips")
        epochs = bar.add_task("autoencoder", total=cfg.epochs, note="", visible=False)

        def on_epoch(machine, log) -> None:
            """Keep a machine type's latest epoch log and show its loss (and validation loss) on the bar."""
            last[machine] = log
            note = f"loss {log.loss:.3f}" + ("" if math.isnan(log.val_loss) else f"  val {log.val_loss:.3f}")
            bar.update(epochs, completed=log.epoch, description=f"autoencoder {machine}", note=note, visible=True)

        scores = baseline_to_folder(
            cfg.data_root, cfg.out, cfg.seconds, cfg.machine, method=cfg.method,
            progress=lambda n, total: bar.update(clips, advance=n, total=total),
            settings=settings, on_epoch=on_epoch if autoencoder else None, reading=cfg.reading, channel=cfg.channel,
        )  # fmt: skip
    console = Console()
    if last:
        table = Table(title=f"autoencoder, {cfg.epochs} epochs, seed {cfg.seed}")
        for column in ("machine", "loss", "val loss"):
            table.add_column(column, justify="left" if column == "machine" else "right")
        for machine, log in last.items():
            table.add_row(machine, f"{log.loss:.4f}", f"{log.val_loss:.4f}")
        console.print(table)
    console.print(f"wrote {cfg.method} scores of {len(scores)} machine types to {cfg.out}")
