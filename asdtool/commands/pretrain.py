"""`asdtool pretrain`: self-supervised pre-training of BEATs or EAT on unlabeled audio."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

from asdtool.commands.progress import step_bar
from asdtool.config.stages import PretrainConfig

UNFINISHED = 3  # exit code of a run stopped by --max-minutes: resumable, not failed


def kept(cfg: PretrainConfig) -> tuple[str, int]:
    """Return the file an interrupted run keeps and the step it holds (0: none yet), read from disk."""
    from asdtool.core.errors import AsdError
    from asdtool.pretrain.loop import RESUME, read_state

    try:
        return f"{cfg.out}/{RESUME}", int(read_state(cfg.out / RESUME)["step"])
    except (AsdError, KeyError, ValueError):
        return f"{cfg.out}/{RESUME}", 0


def run(cfg: PretrainConfig) -> None:
    """Pre-train a backbone and write it in its official checkpoint format.

    Exit code 3 when --max-minutes stopped the run before its last step (resume it with --resume).
    """
    from asdtool.pretrain.loop import BACKBONE, pretrain

    main = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=True)
    figures = "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[rate]:.1f} clips/s"
    with step_bar(f"pretrain {cfg.backbone}-{cfg.size}", figures, cfg.steps, console, main, loss=float("nan"), lr=0.0,
                  rate=0.0) as bar:  # fmt: skip

        def on_step(row: dict) -> None:
            """Show the step, loss, learning rate and clips/s."""
            bar.step(row["step"], loss=row["loss"], lr=row["lr"], rate=row["clips_per_s"])

        result = pretrain(cfg, on_step=on_step)
    if not main:
        return
    table = Table(title=f"pretrain -> {cfg.out}", title_justify="left", show_header=False)
    for key, value in [
        ("backbone", f"{cfg.backbone}-{cfg.size} ({'from ' + cfg.checkpoint if cfg.checkpoint else 'random init'})"),
        ("corpus", f"{result.clips} clips ({result.skipped} test or anomalous clips left out)"),
        ("parameters", f"{result.total_params / 1e6:.2f}M"),
        ("steps", f"{result.steps} of {result.total_steps}"),
        ("final loss", f"{result.loss:.4f}"),
        ("wall time", f"{result.wall_seconds:.1f} s"),
        ("checkpoint", str(cfg.out / BACKBONE) if result.complete else "not yet (unfinished)"),
    ]:
        table.add_row(key, value)
    Console().print(table)
    if not result.complete:
        console.print(f"[yellow]stopped by --max-minutes at step {result.steps} of {result.total_steps}; "
                      f"run the same command with --resume to continue[/]", highlight=False)  # fmt: skip
        raise typer.Exit(UNFINISHED)
