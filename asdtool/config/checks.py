"""Range checks of the stage configs' `validate()`: finite numbers, bounds, seeds, hops; one-line refusals naming the flag."""

from __future__ import annotations

import math
from typing import Any

from asdtool.core.errors import AsdError

MAX_SEED = 2**32 - 1  # numpy's seed range


def flag(name: str) -> str:
    """Return the command-line flag of a config field (`smote_ratio` -> `--smote-ratio`)."""
    return "--" + name.replace("_", "-")


def finite(name: str, value: Any) -> None:
    """Refuse nan and inf, which pass every comparison check or fail it in silence (nan < x is False)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise AsdError(f"{flag(name)} must be a finite number, got {value}")


def at_least(cfg, minimum: float, *names: str) -> None:
    """Refuse any of the named fields of `cfg` that is given and not a finite number of at least `minimum`."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None:
            finite(name, value)
            if value < minimum:
                raise AsdError(f"{flag(name)} must be at least {minimum:g}, got {value}")


def positive(cfg, *names: str) -> None:
    """Refuse any of the named fields of `cfg` that is given and not a finite positive number."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None:
            finite(name, value)
            if not value > 0:
                raise AsdError(f"{flag(name)} must be a positive number, got {value}")


def within(cfg, name: str, low: float, high: float, *, above: bool = False, unit: str = "") -> None:
    """Refuse a value outside [low, high] (with `above`: (low, high]); integers read `low..high`."""
    value = getattr(cfg, name)
    if value is None:
        return
    finite(name, value)
    if value < low or (above and value == low) or value > high:
        if isinstance(low, int) and isinstance(high, int) and not above:
            span = f"{low}..{high}"
        else:
            span = f"{'(' if above else '['}{low:g}, {high:g}]"
        raise AsdError(f"{flag(name)} must lie in {span}{unit}, got {value}")


SAMPLE_RATE = 16_000  # asdtool.data.audio.SAMPLE_RATE (that module imports numpy); every recording is read at it
MAX_BATCH = 4096  # windows per forward pass of score and serve
MAX_THREADS = 1024
MAX_HOP = 3600.0  # seconds between window starts
MAX_RECORDING = 86_400.0  # seconds: the longest --max-seconds accepted (a day)


def check_hop(cfg) -> None:
    """Refuse a hop that is not finite, not in (0, MAX_HOP] seconds, or shorter than one sample."""
    within(cfg, "hop", 0.0, MAX_HOP, above=True, unit=" seconds")
    if cfg.hop is not None and cfg.hop < 1 / SAMPLE_RATE:
        raise AsdError(f"--hop {cfg.hop:g} s is shorter than one sample at {SAMPLE_RATE // 1000} kHz "
                       f"({1 / SAMPLE_RATE:g} s)")  # fmt: skip


def check_seed(cfg) -> None:
    """Refuse a seed outside numpy's range 0..2**32-1."""
    if not 0 <= cfg.seed <= MAX_SEED:
        raise AsdError(f"--seed must lie in 0..{MAX_SEED}, got {cfg.seed}")
