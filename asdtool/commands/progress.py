"""The progress bar of the training commands (`finetune`, `pretrain`): one per run, drawn from the first step."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepBar:
    """A bar of training steps that appears with the first step, after every input check has passed."""

    def __init__(self, label: str, figures: str, total: int, console: Console, shown: bool, **start: float):
        self.bar = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(figures),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not shown,
            auto_refresh=False,  # no refresh thread: a Ctrl-C can then never leave one waiting on a lock
        )  # fmt: skip
        self.task = self.bar.add_task(label, total=total, **start)

    @property
    def speed(self) -> float:
        """Steps per second so far (0 before the second step)."""
        return self.bar.tasks[0].speed or 0.0

    def step(self, completed: int, **figures: float) -> None:
        """Show step `completed` of the run with its figures (the fields `figures` of the label names)."""
        if not self.bar.live.is_started:
            self.bar.start()
        self.bar.update(self.task, completed=completed, **figures)
        self.bar.refresh()


@contextlib.contextmanager
def step_bar(label: str, figures: str, total: int, console: Console, shown: bool, **start: float) -> Iterator[StepBar]:
    """Yield a `StepBar`; it is gone from the terminal when the block ends, however it ends."""
    bar = StepBar(label, figures, total, console, shown, **start)
    try:
        yield bar
    finally:
        if bar.bar.live.is_started:
            bar.bar.stop()
