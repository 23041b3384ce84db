"""The backbone registry: which backbones and sizes exist, building one, counting its parameters."""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from asdtool.core.errors import AsdError
from asdtool.config.choices import Backbone, Size

BACKBONE_MODULES = {"beats": "asdtool.models.backbones.beats", "eat": "asdtool.models.backbones.eat"}


def load_backbone(name: str, checkpoint: str | Path | None = None, size: str = "base", **overrides) -> nn.Module:
    """Return a backbone encoder in eval mode; from `checkpoint` when given, else randomly initialised at `size`."""
    if name not in Backbone.values():
        raise AsdError(f"unknown backbone {name!r}; choose one of {Backbone.listed()}")
    if size not in Size.values():
        raise AsdError(f"unknown backbone size {size!r}; choose one of {Size.listed()}")
    return importlib.import_module(BACKBONE_MODULES[name]).load(checkpoint, size=size, **overrides)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """Return (total, trainable) parameter counts of `module`; shared tensors count once."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
