"""Our own fine-tuning checkpoints: what a model folder holds, how it is written, and how it loads safely.

    checkpoint.pt   format tag and version, the run's config, the classifier's build arguments, the
                    class map, fingerprints of the pre-trained backbone files, weights (all, or LoRA
                    adapters + head on a pre-trained backbone), optimiser/scheduler/RNG state, step

The file holds only tensors and plain Python containers, so it loads with `torch.load(...,
weights_only=True)`: a downloaded checkpoint cannot run code. It is written to a temporary name
and renamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asdtool import __version__
from asdtool.core.atomic import atomic_path, current_umask, staging_dir
from asdtool.config.options import fields
from asdtool.config.stages import FinetuneConfig
from asdtool.core.errors import AsdError

CHECKPOINT = "checkpoint.pt"
FORMAT = "asdtool-finetune"
VERSION = 2  # 2: plain containers only (weights_only loading); 1 pickled numpy state


# ----------------------------------------------------------------------------- fingerprints


def file_sha256(path: str | Path) -> str:
    """Return the sha256 of a file's content (a checkpoint's fingerprint)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise AsdError(f"cannot read file to fingerprint it ({exc.__class__.__name__})", path) from None
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """Return the fingerprint of a file, or of a folder (a Hugging Face model) by its files' names and contents."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode("utf-8"))
    return h.hexdigest()


def pretrained_hashes(cfg: FinetuneConfig) -> dict[str, str]:
    """Return {backbone: fingerprint} of the pre-trained checkpoint(s) a run starts from."""
    ckpts = cfg.checkpoints()
    if ckpts is None:
        return {}
    items = ckpts.items() if isinstance(ckpts, dict) else [(cfg.backbone, ckpts)]
    out = {}
    for name, path in items:
        if not Path(path).exists():
            raise AsdError("pre-trained checkpoint does not exist", path)
        out[name] = path_sha256(path)
    return out


# ----------------------------------------------------------------------------- building the model


def build_model(cfg: FinetuneConfig, n_classes: int) -> nn.Module:
    """Return the classifier of a run at its initialisation (a function of the seed)."""
    from asdtool.models.classifier import build_classifier

    torch.manual_seed(cfg.seed)  # random-init backbones and heads are a function of the seed
    spec = {"max_time_mask": cfg.specaug_mask, "max_freq_mask": cfg.specaug_mask} if cfg.specaug_mask > 0 else False
    head = dict(hidden_dim=cfg.hidden_dim, emb_dim=cfg.emb_dim, arcface_scale=cfg.arcface_scale,
                arcface_margin=cfg.arcface_margin, spec_augment=spec, head_input=cfg.head_input)  # fmt: skip
    if cfg.backbone == "dual":
        head["branch_weights"] = tuple(cfg.branch_weights)
    else:
        head["embedding_layer"] = cfg.embedding_layer
    return build_classifier(cfg.backbone, n_classes, size=cfg.size, checkpoint=cfg.checkpoints(),
                            lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, **head)  # fmt: skip


def _weights(model: nn.Module, cfg: FinetuneConfig) -> tuple[str, dict[str, torch.Tensor]]:
    """Return ("compact", adapters + head) on a pre-trained frozen backbone, else ("full", everything)."""
    if cfg.checkpoint and cfg.lora_rank > 0:
        return "compact", {k: v.detach().cpu() for k, v in model.compact_state_dict().items()}
    return "full", {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_weights(model: nn.Module, saved: dict, path: Path) -> None:
    """Load a checkpoint's weights into a freshly built model, refusing any mismatch."""
    if saved["weights_kind"] == "compact":
        model.load_compact_state_dict(saved["weights"], path)
        return
    missing, unexpected = model.load_state_dict(saved["weights"], strict=False)
    if missing or unexpected:
        keys = (missing or unexpected)[:3]
        raise AsdError(f"checkpoint weights do not fit the model ({len(missing)} missing, {len(unexpected)} unexpected, e.g. {', '.join(keys)})", path)


# ----------------------------------------------------------------------------- RNG state as plain data


def rng_state() -> dict:
    """Return every RNG state as tensors and plain values (no pickled numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},  # fmt: skip
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore every RNG state that `rng_state` returned (CUDA's only when saved and CUDA is available)."""
    n = state["numpy"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the file


def config_dict(cfg: FinetuneConfig) -> dict:
    """Return every field of the config as plain values (paths as strings)."""
    def plain(v):
        """Return v with paths as strings, lists item by item."""
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, list) else v

    return {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg)}


def save_checkpoint(out: Path, model, cfg: FinetuneConfig, class_map: dict[str, int], optimizer, scheduler, step: int,
                    complete: bool, pretrained: dict[str, str]) -> None:  # fmt: skip
    """Write `out/checkpoint.pt` atomically."""
    kind, weights = _weights(model, cfg)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "asdtool_version": __version__,
        "config": config_dict(cfg),
        "build_args": model.build_args,
        "class_map": class_map,
        "pretrained_sha256": pretrained,
        "weights_kind": kind,
        "weights": weights,
        "step": step,
        "complete": complete,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }
    save_torch(payload, out / CHECKPOINT)


def save_torch(payload: object, path: str | Path) -> None:
    """torch.save `payload` to `path` atomically, with the same bytes for the same payload.

    torch names the archive's root folder after the file it writes, so the file is written under
    its own name inside a temporary folder beside `path` (a temporary file name would make every
    write differ), then renamed onto `path`.
    """
    path = Path(path)
    folder = None
    try:
        folder = staging_dir(path)
        torch.save(payload, folder / path.name)
        os.chmod(folder / path.name, 0o666 & ~current_umask())
        os.replace(folder / path.name, path)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def write_train_log(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    """Write a train_log.csv (one row per logged step) atomically."""
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def read_train_log(path: Path, upto: int) -> list[dict]:
    """Return the rows of a train_log.csv up to step `upto` (a resumed run continues them)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def load_safely(path: Path, kind: str) -> object:
    """Return what torch.load reads from one of our own archives, tensors and plain containers only.

    `kind` names the file in the one-line AsdError for anything else: "checkpoint", "resume state".
    """
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        raise AsdError(f"not a {kind} (not a PyTorch zip archive; damaged, truncated or another kind of file)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AsdError(f"refused: the {kind} holds Python objects beyond tensors and plain containers "
                       "(not written by this asdtool version, or tampered with)", path) from None  # fmt: skip
    except Exception as exc:  # torch raises many types for a damaged archive
        raise AsdError(f"not a {kind}: cannot read it ({exc.__class__.__name__})", path) from None


def read_checkpoint(path: str | Path) -> dict:
    """Return the payload of an asdtool fine-tuning checkpoint (safe loading only); AsdError for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise AsdError("no fine-tuned checkpoint here (run asdtool finetune first)", path)
    payload = load_safely(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AsdError("is not an asdtool fine-tuning checkpoint (an official backbone file goes to --checkpoint)", path)
    if payload.get("version") != VERSION:
        raise AsdError(f"was written by another asdtool checkpoint version ({payload.get('version')}, this one reads {VERSION}); re-run asdtool finetune", path)
    return payload


def saved_config(saved: dict) -> FinetuneConfig:
    """Return the FinetuneConfig a checkpoint was trained with."""
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    values = {k: v for k, v in saved["config"].items() if k in known}
    cfg = FinetuneConfig(**values)
    cfg.out = Path(cfg.out)  # data_root: a list of paths (one string in checkpoints before several roots)
    return cfg


# ----------------------------------------------------------------------------- loading for inference


@dataclass
class Finetuned:
    """A trained model ready to embed clips."""

    model: nn.Module
    config: FinetuneConfig
    class_map: dict[str, int]
    checkpoint_sha256: str
    path: Path


def load_finetuned(folder: str | Path, device: str = "cpu") -> Finetuned:
    """Return the trained model of a `finetune` output folder in eval mode; refuse unfinished runs."""
    from asdtool.models.device import resolve_device
    from asdtool.models.classifier import build_classifier

    folder = Path(folder)
    path = folder / CHECKPOINT if folder.is_dir() else folder
    saved = read_checkpoint(path)
    if not saved["complete"]:
        raise AsdError(f"training did not finish (step {saved['step']} of {saved['config']['steps']}); run finetune --resume", path)
    cfg = saved_config(saved)
    if saved["weights_kind"] == "compact":
        if pretrained_hashes(cfg) != saved["pretrained_sha256"]:
            raise AsdError("the pre-trained backbone file it was trained on is missing or changed", cfg.checkpoint)
        model = build_model(cfg, len(saved["class_map"]))
    else:
        torch.manual_seed(cfg.seed)
        model = build_classifier(**saved["build_args"])
    load_weights(model, saved, path)
    model.to(resolve_device(device)).eval()
    return Finetuned(model, cfg, saved["class_map"], file_sha256(path), path)
