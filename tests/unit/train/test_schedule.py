"""Learning-rate schedules of the recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asdtool.config.stages import FinetuneConfig
from asdtool.train.schedule import lr_at


def cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(data_root=Path("d"), out=Path("o"), **kw)


def test_warmup_linear_schedule():
    cfg_ = cfg(steps=11, warmup=2, lr=0.0, max_lr=1.0, min_lr=0.0)
    lrs = [lr_at(s, cfg_) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == 1.0 and lrs[-1] == 0.0
    assert lrs[6] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_cosine_restarts_schedule():
    # the paper's LoRA recipe: from 1e-4, 10 warm-up steps to 5e-3, cosine down to 1e-5, restarting
    cfg_ = cfg(steps=100, warmup=10, lr=1e-4, max_lr=5e-3, min_lr=1e-5, scheduler="cosine-restarts", cycle_steps=50)
    assert lr_at(0, cfg_) == pytest.approx(1e-4 + (5e-3 - 1e-4) / 10)
    assert lr_at(9, cfg_) == pytest.approx(5e-3)
    assert lr_at(10, cfg_) == pytest.approx(5e-3)
    assert lr_at(49, cfg_) == pytest.approx(1e-5)
    assert lr_at(29, cfg_) == pytest.approx(1e-5 + 0.5 * (5e-3 - 1e-5) * (1 + np.cos(np.pi * 19 / 39)))
    assert lr_at(50, cfg_) == lr_at(0, cfg_) and lr_at(99, cfg_) == lr_at(49, cfg_)
