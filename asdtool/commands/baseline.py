"""`asdtool baseline`: score test clips with the log-mel 1-NN reference detector."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from asdtool.config import BaselineConfig


def run(cfg: BaselineConfig) -> None:
    """Score test clips by the cosine distance of their mean log-mel spectrum to the nearest training clip.

    Writes anomaly_score_<machine>_section_NN_test.csv and, for decision thresholds,
    anomaly_score_<machine>_section_NN_train.csv (training clips scored leave-one-out).
    """
    from asdtool.baseline import baseline_to_folder

    with Progress(
        TextColumn("[bold]log-mel baseline"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("score", total=None)
        scores = baseline_to_folder(cfg.data_root, cfg.out, cfg.seconds, cfg.machine,
                                    progress=lambda n, total: bar.update(task, advance=n, total=total))  # fmt: skip
    Console().print(f"wrote scores of {len(scores)} machine types to {cfg.out}")
