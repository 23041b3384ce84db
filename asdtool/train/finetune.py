"""Fine-tuning by machine-attribute classification: the training loop of every recipe of the paper.

One loop serves BEATs, EAT and the Dual model, full fine-tuning and LoRA, real and pseudo labels.
A run writes a model folder:

    checkpoint.pt   see asdtool.models.checkpoint (weights, config, class map, optimiser/RNG state)
    train_log.csv   step, loss, accuracy, lr (DVC plots it)
    summary.json    total_params, trainable_params, final loss and accuracy, wall time; written last,
                    so a folder without it is an unfinished run

The batches of optimiser step s are a pure function of (seed, s) and the RNG states are
checkpointed, so a resumed run reaches the same weights as an uninterrupted one. Under
`torchrun --nproc-per-node N` the same code trains with DistributedDataParallel: each process
takes its share of every micro-batch and rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from asdtool.core import outputs
from asdtool.core.atomic import write_json
from asdtool.models.checkpoint import (
    CHECKPOINT, build_model, config_dict, load_weights, pretrained_hashes, read_checkpoint, read_train_log,
    save_checkpoint, set_rng_state, write_train_log,
)  # fmt: skip
from asdtool.config.options import fields
from asdtool.config.stages import FinetuneConfig
from asdtool.data import dcase
from asdtool.models.device import init_distributed, resolve_device
from asdtool.core.errors import AsdError
from asdtool.models.backbones.registry import count_parameters
from asdtool.train.schedule import lr_at
from asdtool.train.trainset import ClipDataset, StepBatches, TrainingSet, training_set

TRAIN_LOG = "train_log.csv"
SUMMARY = "summary.json"
MODEL_FILES = (CHECKPOINT, TRAIN_LOG, SUMMARY)


@dataclass
class TrainResult:
    """What `finetune` gives back: the model folder, the last step's loss and accuracy, and this run's figures."""

    out: Path
    steps: int
    loss: float
    accuracy: float
    total_params: int
    trainable_params: int
    wall_seconds: float
    classes: int
    clips: dict[str, int] = field(default_factory=dict)  # training clips per data root


def clips_per_root(dataset: dcase.Dataset, tset: TrainingSet) -> dict[str, int]:
    """Return {data root: its training clips} in the order the roots were given."""
    labels = [dcase.root_label(r) for r in dataset.roots or [dataset.root]]
    if len(labels) == 1:
        return {labels[0]: len(tset.clips)}
    machines = [c.machine.rpartition(dcase.ROOT_SEPARATOR)[0] for c in tset.clips]
    return {label: machines.count(label) for label in labels}


def _checkpoint_paths(cfg: FinetuneConfig) -> list[str]:
    """Return the pre-trained files a run reads (inputs its --out must not replace)."""
    ckpt = cfg.checkpoints()
    return [] if ckpt is None else list(ckpt.values()) if isinstance(ckpt, dict) else [ckpt]


def _check_resumable(saved: dict, cfg: FinetuneConfig, tset: TrainingSet, pretrained: dict, out: Path) -> None:
    old, new = saved["config"], config_dict(cfg)
    changed = [f.name for f in fields(cfg) if f.metadata.get("recipe", True) and old.get(f.name) != new[f.name]]
    if changed:
        k = changed[0]
        raise AsdError(f"cannot resume: {k} was {old.get(k)!r}, now {new[k]!r}", out / CHECKPOINT)
    if saved["class_map"] != tset.class_map:
        raise AsdError("cannot resume: the training classes differ from the checkpoint's", out / CHECKPOINT)
    if saved["pretrained_sha256"] != pretrained:
        raise AsdError("cannot resume: the pre-trained checkpoint file changed", out / CHECKPOINT)
    if saved["complete"]:
        raise AsdError(f"training already finished ({saved['step']} steps); nothing to resume", out / CHECKPOINT)


def finetune(cfg: FinetuneConfig, on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train an attribute classifier on the training clips of the `cfg.data_root` roots into `cfg.out`; return its figures.

    `on_step(row)` is called on the main process after every logged optimiser step with
    {"step", "loss", "accuracy", "lr", "steps", "saved"} (after any checkpoint of that step is
    written; "saved" is the step of the last checkpoint on disk, 0 for none).
    """
    cfg.validate()
    out = Path(cfg.out)
    # --resume reads the folder's files next and refuses one that is not a checkpoint of its own, in its own words
    entry = outputs.Kind("a model file", lambda p: True) if cfg.resume else outputs.MODEL_FOLDER_ENTRY
    outputs.check_folder(out, outputs.named(lambda name: name in MODEL_FILES, entry),
                         inputs=[*cfg.data_root, *_checkpoint_paths(cfg), cfg.pseudo_labels])  # fmt: skip
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device, d)
    dataset = dcase.scan_roots(cfg.data_root, reading=cfg.reading)
    tset = training_set(dataset, cfg.pseudo_labels if cfg.labels == "pseudo" else None)
    pretrained = pretrained_hashes(cfg)

    start, log_rows, saved = 0, [], None
    if cfg.resume:
        saved = read_checkpoint(out)
        _check_resumable(saved, cfg, tset, pretrained, out)
        start = int(saved["step"])
        log_rows = read_train_log(out / TRAIN_LOG, start)
    elif (out / CHECKPOINT).exists():
        raise AsdError("already holds a checkpoint; pass --resume to continue it or choose another --out", out)

    model = build_model(cfg, len(tset.class_map))
    if saved is not None:
        load_weights(model, saved, out)
    model.to(device)
    total, trainable = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.max_lr, weight_decay=cfg.weight_decay if cfg.optimizer == "adamw" else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.max_lr)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
    else:
        torch.manual_seed(cfg.seed + 1)  # training randomness (masks, dropout) after the build
        random.seed(cfg.seed + 1)  # the global RNGs nothing here draws from but every checkpoint records:
        np.random.seed(cfg.seed + 1)  # seeded, so that the same run writes the same bytes
    train_model: nn.Module = model
    if d.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    def save(step: int, complete: bool) -> None:
        """Write the training log, then the checkpoint of `step` (`complete`: training has finished) into `out`."""
        # the log first: a run stopped between the two keeps a log reaching past its checkpoint, and a
        # resume takes the log's rows up to the checkpoint's step (the other order would lose rows)
        write_train_log(out / TRAIN_LOG, log_rows, ["step", "loss", "accuracy", "lr"])
        save_checkpoint(out, model, cfg, tset.class_map, optimizer, scheduler, step, complete, pretrained)

    examples = ClipDataset(tset.clips, tset.targets, cfg.seconds, cfg.channel)
    sampler = StepBatches(len(examples), cfg.batch_size, cfg.grad_accum, cfg.steps, cfg.seed, start, d.rank, d.world)
    loader = torch.utils.data.DataLoader(
        examples, batch_sampler=sampler, num_workers=cfg.workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by workers
    )
    autocast = device.type == "cuda" and cfg.amp
    model.train()
    t0 = time.perf_counter()  # a resumed run counts its own time: checkpoints hold no clock, to stay byte-stable
    batches = iter(loader)
    loss_v, acc_v, last_saved = math.nan, math.nan, start
    for step in range(start, cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(2, device=device)  # summed loss and correct count over the step
        count = 0
        for micro in range(cfg.grad_accum):
            wave, labels = next(batches)
            wave, labels = wave.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            # DDP averages gradients only on the last micro-batch of a step
            sync = d.world == 1 or micro == cfg.grad_accum - 1
            with train_model.no_sync() if not sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, logits = train_model(wave, labels)
                (loss / cfg.grad_accum).backward()
            loss_sum += torch.stack([loss.detach().float() * len(labels), (logits.argmax(1) == labels).sum().float()])
            count += len(labels)
        stats = torch.cat([loss_sum, torch.tensor([float(count)], device=device)])
        if d.world > 1:
            dist.all_reduce(stats)
        loss_v, acc_v = (stats[0] / stats[2]).item(), (stats[1] / stats[2]).item()
        if not math.isfinite(loss_v):
            raise AsdError(f"training diverged at step {step + 1} (loss {loss_v}); lower --max-lr", out)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        row = {"step": step + 1, "loss": round(loss_v, 6), "accuracy": round(acc_v, 6), "lr": lr}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log_rows.append(row)
        if d.main and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save(step + 1, False)
            last_saved = step + 1
        if on_step and d.main:
            on_step({**row, "steps": cfg.steps, "saved": last_saved})

    wall = time.perf_counter() - t0
    result = TrainResult(out, cfg.steps, loss_v, acc_v, total, trainable, wall, len(tset.class_map), clips_per_root(dataset, tset))
    if d.main:
        save(cfg.steps, True)
        write_json(out / SUMMARY, {
            "backbone": cfg.backbone, "lora_rank": cfg.lora_rank, "labels": cfg.labels,
            "classes": len(tset.class_map), "clips": len(tset.clips), "clips_per_root": result.clips, "steps": cfg.steps,
            "total_params": total, "trainable_params": trainable,
            "final_loss": loss_v, "final_accuracy": acc_v, "wall_seconds": round(wall, 3),
            "processes": d.world, "device": str(device),
        })  # fmt: skip
    d.close()
    return result
