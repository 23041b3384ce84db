"""Learning-rate schedules of the fine-tuning recipes (no torch needed)."""

from __future__ import annotations

import math

from asdtool.config.stages import FinetuneConfig


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    """Return the learning rate of optimiser step `step` (0-based) under the configured schedule.

    warmup-linear: linear from `lr` to `max_lr` over `warmup` steps, then linear down to `min_lr`
    at the last step. cosine-restarts: cycles of `cycle_steps` (default: all steps), each a linear
    warm-up from `lr` to `max_lr` over `warmup` steps, then a cosine from `max_lr` to `min_lr`.
    constant: `max_lr` after the warm-up.
    """
    if cfg.scheduler == "cosine-restarts":
        cycle = cfg.cycle_steps or cfg.steps
        step, length = step % cycle, cycle
    else:
        length = cfg.steps
    if step < cfg.warmup:
        return cfg.lr + (cfg.max_lr - cfg.lr) * (step + 1) / cfg.warmup
    if cfg.scheduler == "constant":
        return cfg.max_lr
    span = max(length - cfg.warmup - 1, 1)
    t = min((step - cfg.warmup) / span, 1.0)
    if cfg.scheduler == "warmup-linear":
        return cfg.max_lr + (cfg.min_lr - cfg.max_lr) * t
    return cfg.min_lr + 0.5 * (cfg.max_lr - cfg.min_lr) * (1 + math.cos(math.pi * t))
