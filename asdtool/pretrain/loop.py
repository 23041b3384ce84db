"""The pre-training loop shared by BEATs and EAT (`asdtool pretrain`).

A run writes a folder:

    backbone.pt     the pre-trained backbone in its official checkpoint format (BEATs: cfg + model;
                    EAT: the fairseq layout), what `asdtool finetune --checkpoint` reads; written last
    train_log.csv   step, loss, lr, clips_per_s and the objective's own figures (DVC plots it)
    summary.json    corpus size, steps, final loss, parameters, wall time
    resume.pt       while unfinished: objective, optimiser, schedule and RNG states (removed at the end)

The clips and crops of optimiser step s are a pure function of (seed, s), the masks come from a
generator whose state is checkpointed, and the global RNG state is saved too, so a resumed run
(`--resume`) ends with the same weights as an uninterrupted one. `--max-minutes` stops a run
cleanly at a step boundary with a resumable checkpoint. Under `torchrun --nproc-per-node N` each
process takes its share of every micro-batch (DistributedDataParallel); rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from asdtool import __version__
from asdtool.core import outputs
from asdtool.core.atomic import write_json
from asdtool.models.checkpoint import (
    config_dict, path_sha256, read_train_log, rng_state, save_torch, set_rng_state, write_train_log,
)
from asdtool.config.options import fields
from asdtool.config.stages import PretrainConfig
from asdtool.models.device import init_distributed, resolve_device
from asdtool.core.errors import AsdError
from asdtool.models.backbones.registry import count_parameters, load_backbone
from asdtool.pretrain import OBJECTIVES
from asdtool.pretrain.audio import CropBatches, CropDataset, find_audio

BACKBONE = "backbone.pt"
TRAIN_LOG = "train_log.csv"
SUMMARY = "summary.json"
RESUME = "resume.pt"
OUT_FILES = (BACKBONE, TRAIN_LOG, SUMMARY, RESUME)
RESUME_FORMAT, RESUME_VERSION = "asdtool-pretrain-state", 1


@dataclass
class PretrainResult:
    """What `pretrain` returns: the run's folder, steps done and total, last loss, clips used and skipped, parameter counts, wall time."""
    out: Path
    steps: int  # steps done so far
    total_steps: int
    loss: float
    clips: int
    skipped: int
    total_params: int
    trainable_params: int
    wall_seconds: float

    @property
    def complete(self) -> bool:
        """Whether every step is done (False after a --max-minutes stop)."""
        return self.steps >= self.total_steps


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to `max_lr` over `warmup` steps, then a cosine to `min_lr` at the last step (both papers' shape)."""
    if step < cfg.warmup:
        return cfg.max_lr * (step + 1) / cfg.warmup
    t = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup - 1, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.max_lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def _log_fields(rows: list[dict]) -> list[str]:
    """The columns of train_log.csv: step, loss, the objective's own figures, lr."""
    return list(dict.fromkeys(k for r in rows for k in r)) or ["step", "loss", "lr"]


def read_state(path: Path) -> dict:
    """Return a resume state written by this loop (safe loading only)."""
    from asdtool.models.checkpoint import load_safely

    if not path.is_file():
        raise AsdError("no unfinished pre-training run here to resume", path.parent)
    state = load_safely(path, "resume state")
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise AsdError("is not an asdtool pre-training resume state", path)
    if state.get("version") != RESUME_VERSION:
        raise AsdError(f"resume state version {state.get('version')} (this asdtool reads {RESUME_VERSION})", path)
    return state


def _check_resumable(state: dict, cfg: PretrainConfig, corpus_sha: str, init_sha: str | None, path: Path) -> None:
    old, new = state["config"], config_dict(cfg)
    changed = [f.name for f in fields(cfg) if f.metadata.get("recipe", True) and old.get(f.name) != new[f.name]]
    if changed:
        k = changed[0]
        raise AsdError(f"cannot resume: {k} was {old.get(k)!r}, now {new[k]!r}", path)
    if state["corpus_sha256"] != corpus_sha:
        raise AsdError("cannot resume: the audio files differ from the run's (other folders, or files added/removed)", path)
    if state["init_sha256"] != init_sha:
        raise AsdError("cannot resume: the --checkpoint file changed", path)


def build(cfg: PretrainConfig) -> tuple[nn.Module, object]:
    """Return (objective, its module) around a fresh student (seeded by cfg.seed) or the --checkpoint weights."""
    module = importlib.import_module(OBJECTIVES[cfg.backbone])
    torch.manual_seed(cfg.seed)
    student = load_backbone(cfg.backbone, cfg.checkpoint, size=cfg.size)
    objective = module.build_objective(student.train(), cfg)
    return objective, module


def pretrain(cfg: PretrainConfig, on_step: Callable[[dict], None] | None = None) -> PretrainResult:
    """Pre-train `cfg.backbone` on the audio under `cfg.audio` into `cfg.out`; return its figures.

    `on_step(row)` is called on the main process after every optimiser step with the log row plus
    {"steps", "saved", "clips_per_s"}. A run stopped by `max_minutes` returns with
    `result.complete == False` and a resume state on disk.
    """
    cfg.validate()
    out = Path(cfg.out)
    # --resume reads the folder's files next and refuses one that is not a state of its own, in its own words
    entry = outputs.Kind("a pre-training file", lambda p: True) if cfg.resume else outputs.MODEL_FOLDER_ENTRY
    outputs.check_folder(out, outputs.named(lambda name: name in OUT_FILES, entry), inputs=[*cfg.audio, cfg.checkpoint])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device, d)
    corpus = find_audio(cfg.audio)
    corpus_sha = corpus.fingerprint()
    init_sha = path_sha256(cfg.checkpoint) if cfg.checkpoint else None

    start, log_rows, state = 0, [], None
    if cfg.resume:
        state = read_state(out / RESUME)
        _check_resumable(state, cfg, corpus_sha, init_sha, out / RESUME)
        start = int(state["step"])
        log_rows = read_train_log(out / TRAIN_LOG, start)
    elif (out / BACKBONE).exists() or (out / RESUME).exists():
        raise AsdError("already holds a pre-training run; pass --resume to continue it or choose another --out", out)

    objective, module = build(cfg)
    if state is not None:
        objective.load_state_dict(state["objective"])
    objective.to(device)
    total, _ = count_parameters(objective.student)
    params = [p for p in objective.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in objective.student.parameters() if p.requires_grad)
    # no weight decay on biases, norms and single tokens (both papers follow this BERT/MAE convention)
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.max_lr, betas=getattr(module, "ADAM_BETAS", (0.9, 0.98)), eps=1e-6,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.max_lr)
    clip_norm = getattr(module, "CLIP_NORM", None)  # the objective's recipe may clip gradients
    masks = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + d.rank)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        masks.set_state(state["mask_generators"][d.rank])
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed + 1)  # training randomness (dropout) after the build
    train_objective: nn.Module = objective
    if d.world > 1:
        train_objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    def gathered_generators() -> list[torch.Tensor]:
        """Return every process's mask generator state, by rank (gathered from all under torchrun)."""
        mine = masks.get_state()
        if d.world == 1:
            return [mine]
        every = [torch.empty_like(mine) for _ in range(d.world)]
        dist.all_gather_object(every, mine)
        return every

    def save(step: int) -> None:
        """Write the resume state at `step` and the train log so far (on rank 0); every process joins the gather."""
        generators = gathered_generators()
        if not d.main:
            return
        payload = {
            "format": RESUME_FORMAT, "version": RESUME_VERSION, "asdtool_version": __version__,
            "config": config_dict(cfg), "corpus_sha256": corpus_sha, "init_sha256": init_sha, "step": step,
            "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "mask_generators": generators, "rng": rng_state(),
        }  # fmt: skip
        write_train_log(out / TRAIN_LOG, log_rows, _log_fields(log_rows))  # first: a resume takes its rows up to `step`
        save_torch(payload, out / RESUME)

    sampler = CropBatches(len(corpus.files), cfg.batch_size, cfg.grad_accum, cfg.steps, cfg.seed, start, d.rank, d.world)
    loader = torch.utils.data.DataLoader(
        CropDataset(corpus.files, cfg.seconds, cfg.seed, cfg.channel), batch_sampler=sampler, num_workers=0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by the loader
    )
    autocast = device.type == "cuda" and cfg.amp
    objective.train()
    t0 = time.perf_counter()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    batches = iter(loader)
    loss_v, last_saved, step = math.nan, start, start
    for step in range(start, cfg.steps):
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            wave = next(batches).to(device, non_blocking=True)
            fbank = objective.student.preprocess(wave)
            sync = d.world == 1 or micro == cfg.grad_accum - 1  # DDP averages gradients on the last micro-batch only
            with train_objective.no_sync() if not sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, stats = train_objective(fbank, masks)
                (loss / cfg.grad_accum).backward()
            for name, value in {"loss": loss, **stats}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / cfg.grad_accum
        names = list(sums)
        figures = torch.stack([sums[n] for n in names])
        if d.world > 1:
            dist.all_reduce(figures)
            figures /= d.world
        values = dict(zip(names, figures.tolist()))
        loss_v = values["loss"]
        if not math.isfinite(loss_v):
            raise AsdError(f"pre-training diverged at step {step + 1} (loss {loss_v}); lower --max-lr", out)
        lr = optimizer.param_groups[0]["lr"]
        if clip_norm:
            nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        scheduler.step()
        objective.after_step(step + 1, cfg.steps)
        rate = cfg.batch_size * cfg.grad_accum / max(time.perf_counter() - t_step, 1e-9)
        row = {"step": step + 1, **{k: round(v, 6) for k, v in values.items()}, "lr": lr}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log_rows.append(row)
        out_of_time = time.perf_counter() >= deadline and step + 1 < cfg.steps
        if ((step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps) or out_of_time:
            save(step + 1)
            last_saved = step + 1
        if on_step and d.main:
            on_step({**row, "steps": cfg.steps, "saved": last_saved, "clips_per_s": rate})
        if out_of_time:
            step += 1
            break
    else:
        step = cfg.steps

    wall = time.perf_counter() - t0
    result = PretrainResult(out, step, cfg.steps, loss_v, len(corpus.files), corpus.skipped, total, trainable, wall)
    if d.main and result.complete:
        save_torch(module.export(objective), out / BACKBONE)
        write_train_log(out / TRAIN_LOG, log_rows, _log_fields(log_rows))
        write_json(out / SUMMARY, {
            "backbone": cfg.backbone, "size": cfg.size, "init": cfg.checkpoint or "random",
            "clips": len(corpus.files), "skipped_test_or_anomalous": corpus.skipped, "steps": cfg.steps,
            "total_params": total, "final_loss": loss_v, "wall_seconds": round(wall, 3),
            "processes": d.world, "device": str(device),
        })  # fmt: skip
        (out / RESUME).unlink(missing_ok=True)
    d.close()
    return result
