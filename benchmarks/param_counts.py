"""Print total and trainable parameter counts of the paper's models at full size, next to Table 1.

Models are built on the meta device (shapes only, no memory, no init cost), so this runs in
seconds. Usage: python benchmarks/param_counts.py [--classes N] [--rank R]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from asdtool.models.backbones.registry import count_parameters
from asdtool.models.classifier import build_classifier

# Table 1 of the paper: (total, trainable) in millions
PAPER = {
    "BEATs-full": (90.0, 90.0),
    "BEATs-LoRA": (90.0, 3.73),
    "EAT-full": (88.0, 88.0),
    "EAT-LoRA": (88.0, 11.25),
    "Dual Pre-trained": (180.0, 14.98),
}
MODELS = {  # name -> (classifier backbone, LoRA?)
    "BEATs-full": ("beats", False),
    "BEATs-LoRA": ("beats", True),
    "EAT-full": ("eat", False),
    "EAT-LoRA": ("eat", True),
    "Dual Pre-trained": ("dual", True),
}


def parameter_report(n_classes: int = 100, rank: int = 64, size: str = "base", **head_args) -> list[dict]:
    """Return one row per paper model: name, total, trainable, backbone, head (parameter counts)."""
    rows = []
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # peft's notes about custom (non-transformers) models
        for name, (backbone, lora) in MODELS.items():
            model = build_classifier(backbone, n_classes, size=size, lora_rank=rank if lora else 0, **head_args)
            total, trainable = count_parameters(model)
            backbones = [model.beats.backbone, model.eat.backbone] if backbone == "dual" else [model.backbone]
            base = sum(count_parameters(b)[0] for b in backbones)
            adapters = sum(count_parameters(b)[1] for b in backbones) if lora else 0
            rows.append(dict(name=name, total=total, trainable=trainable, backbone=base - adapters,
                             adapters=adapters, head=total - base))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100, help="ArcFace classes (weights: classes x emb_dim)")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (paper: 64)")
    parser.add_argument("--size", default="base", choices=("base", "tiny"))
    args = parser.parse_args()
    rows = parameter_report(args.classes, args.rank, args.size)
    header = (f"{'model':<17} {'total':>9} {'trainable':>10} {'backbone':>9} {'LoRA':>7} {'head':>7}"
              "  | paper total / trainable")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        paper = PAPER[r["name"]]
        print(f"{r['name']:<17} {r['total'] / 1e6:>8.2f}M {r['trainable'] / 1e6:>9.2f}M {r['backbone'] / 1e6:>8.2f}M "
              f"{r['adapters'] / 1e6:>6.2f}M {r['head'] / 1e6:>6.2f}M  | {paper[0]:g}M / {paper[1]:g}M")  # fmt: skip
    print(f"(head = pooling + dense layers + ArcFace weights for {args.classes} classes; Dual adds the fusion layer)")


if __name__ == "__main__":
    main()
