"""`asdtool finetune`: train an attribute classifier (BEATs, EAT or Dual; full or LoRA; real or pseudo labels)."""

from __future__ import annotations

import os
import warnings

from rich.console import Console
from rich.table import Table

from asdtool.commands.progress import step_bar
from asdtool.config.stages import FinetuneConfig



def kept(cfg: FinetuneConfig) -> tuple[str, int]:
    """Return the file an interrupted run keeps and the step it holds (0: none yet), read from disk."""
    from asdtool.models.checkpoint import read_checkpoint
    from asdtool.core.errors import AsdError

    try:
        return f"{cfg.out}/checkpoint.pt", int(read_checkpoint(cfg.out)["step"])
    except (AsdError, KeyError, ValueError):
        return f"{cfg.out}/checkpoint.pt", 0


def run(cfg: FinetuneConfig) -> None:
    """Fine-tune a pre-trained audio transformer by classifying machine attributes with ArcFace.

    Works under `torchrun --nproc-per-node N -m asdtool finetune ...` with DistributedDataParallel.
    """
    from asdtool.train.finetune import finetune

    main = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = ("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  lr {task.fields[lr]:.2e}  "
                   "{task.fields[rate]:.2f} steps/s")
        label = f"{cfg.backbone}{'-lora' if cfg.lora_rank else ''}"
        with step_bar(label, figures, cfg.steps, console, main, loss=float("nan"), acc=float("nan"), lr=0.0,
                      rate=0.0) as bar:  # fmt: skip

            def on_step(row: dict) -> None:
                """Show the step, loss, accuracy, learning rate and steps/s."""
                bar.step(row["step"], loss=row["loss"], acc=row["accuracy"], lr=row["lr"], rate=bar.speed)

            result = finetune(cfg, on_step=on_step)
    if not main:
        return
    table = Table(title=f"finetune -> {cfg.out}", title_justify="left", show_header=False)
    for key, value in [
        ("backbone", f"{cfg.backbone} ({cfg.checkpoint or 'random init, ' + cfg.size})"),
        ("mode", f"LoRA r={cfg.lora_rank}" if cfg.lora_rank else "full fine-tuning"),
        ("training clips", ", ".join(f"{n} ({root})" for root, n in result.clips.items())),
        ("classes", str(result.classes)),
        ("parameters", f"{result.total_params / 1e6:.2f}M total, {result.trainable_params / 1e6:.2f}M trainable"),
        ("steps", str(result.steps)),
        ("final loss", f"{result.loss:.4f}"),
        ("final accuracy", f"{result.accuracy:.3f}"),
        ("wall time", f"{result.wall_seconds:.1f} s"),
    ]:
        table.add_row(key, value)
    Console().print(table)
    notes = sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)})
    for note in notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
