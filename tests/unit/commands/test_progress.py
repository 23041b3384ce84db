"""Tests for asdtool/commands/progress.py: the training commands' progress bar."""

import io

import pytest
from rich.console import Console

from asdtool.commands.progress import step_bar


def _console():
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_the_bar_appears_with_the_first_step_and_is_gone_after_the_block():
    console = _console()
    with step_bar("train", "loss {task.fields[loss]:.2f}", 4, console, True, loss=float("nan")) as bar:
        assert not bar.bar.live.is_started  # nothing drawn while the inputs are checked
        bar.step(1, loss=0.5)
        assert bar.bar.live.is_started and bar.bar.tasks[0].completed == 1
        bar.step(3, loss=0.25)
        assert bar.bar.tasks[0].completed == 3 and bar.bar.tasks[0].fields["loss"] == 0.25
    assert not bar.bar.live.is_started
    assert "loss 0.25" in console.file.getvalue()


def test_an_error_inside_the_block_stops_the_bar_and_a_hidden_bar_draws_nothing():
    console = _console()
    with pytest.raises(RuntimeError):
        with step_bar("train", "", 2, console, True) as bar:
            bar.step(1)
            raise RuntimeError("stop")
    assert not bar.bar.live.is_started
    hidden = _console()
    with step_bar("train", "", 2, hidden, False) as bar:
        bar.step(2)
    assert hidden.file.getvalue() == ""
