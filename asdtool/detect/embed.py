"""Embedding clips with a fine-tuned model: batched, inference mode, optional bf16 autocast on CUDA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from asdtool.data import dcase
from asdtool.data.audio import read_clips, views
from asdtool.core.errors import AsdError


def embed_clips(
    model: nn.Module,
    clips: Sequence[dcase.Clip],
    seconds: float,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    amp: bool = True,
    progress: Callable[[int], None] | None = None,
    channel: str = "left",
) -> np.ndarray:
    """Return float32 embeddings [N, E] of `clips` (padded or cut to `seconds`) in their order.

    `channel` of stereo clips: left, right or mean, or `both`, the mean of the left and the right
    channel's embeddings (two views of one clip; a mono clip has only its own).
    """
    if batch_size < 1:
        raise AsdError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    model.eval()
    rows: list[np.ndarray] = []
    autocast = device.type == "cuda" and amp
    with torch.inference_mode():
        for i in range(0, len(clips), batch_size):
            chunk = clips[i : i + batch_size]
            if channel == "both":  # two views of a stereo clip: the mean of their embeddings (a mono clip: its own)
                paths = [c.path for c in chunk]
                emb = _embed_batch(model, read_clips(paths, seconds, channel="left"), device, autocast)
                stereo = [j for j, p in enumerate(paths) if len(views(p, "both")) == 2]
                if stereo:
                    far = _embed_batch(model, read_clips([paths[j] for j in stereo], seconds, channel="right"), device, autocast)
                    emb[stereo] = (emb[stereo] + far) / 2
            else:
                emb = _embed_batch(model, read_clips([c.path for c in chunk], seconds, channel=channel), device, autocast)
            rows.append(emb)
            if progress:
                progress(len(chunk))
    if not rows:
        return np.zeros((0, 0), np.float32)
    out = np.concatenate(rows).astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise AsdError(f"the model produced non-finite embeddings for {bad} clip(s), e.g. {clips[0].path.parent}")
    return out


def _embed_batch(model: nn.Module, waves: np.ndarray, device: torch.device, autocast: bool) -> np.ndarray:
    wave = torch.from_numpy(waves).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        return model.embed(wave).float().cpu().numpy()


def embed_to_store(
    model: Path | None, data_root: Path, out: Path, batch_size: int = 16, device: str = "cpu", amp: bool = True,
    seconds: float | None = None, name: str | None = None, progress: Callable[[int, int], None] | None = None,
    frozen: dict | None = None, reading: dcase.Reading = dcase.Reading(), channel: str | None = None, force: bool = False,
) -> tuple[dcase.Dataset, dict, str]:  # fmt: skip
    """Embed every train and test clip of every machine type into the HDF5 store `out`.

    The embedder is a fine-tuned model folder (`model`) or, with `frozen` (the keyword arguments
    of `asdtool.models.frozen.load_frozen`), a frozen pre-trained backbone; a frozen model's clips keep
    the length of the first training clip unless `seconds` is given.
    `channel` of stereo clips: the model's training channel unless given (left for a frozen model).
    Returns (dataset, {(machine, split): (clips, embeddings)}, device). `progress(advance, total)` per batch.
    """
    from asdtool.core import outputs
    from asdtool.data import store

    inputs = [data_root, *(outputs.files_of(model) if model is not None else []), (frozen or {}).get("pretrained")]
    outputs.check_file(out, outputs.EMBEDDING_STORE, inputs=inputs, force=force)
    dataset = dcase.scan(data_root, reading=reading)
    if frozen is not None:
        from asdtool.data.audio import check_audio
        from asdtool.models.frozen import load_frozen

        embedder, fingerprint = load_frozen(device=device, **frozen)
        if seconds is None:
            first = (dataset.select(split="train") or dataset.clips)[0].path
            info = check_audio(first)
            seconds = info.frames / info.samplerate
        default_name = f"frozen-{frozen['backbone']}"
        channel = channel or "left"
    else:
        from asdtool.models.checkpoint import load_finetuned

        trained = load_finetuned(model, device)
        embedder, fingerprint = trained.model, trained.checkpoint_sha256
        seconds = seconds if seconds is not None else trained.config.seconds
        channel = channel or trained.config.channel
        default_name = Path(model).name
    dev = next(embedder.parameters()).device
    total = len(dataset.clips)
    groups = {}
    for machine in dataset.machines:
        for split in dcase.SPLITS:
            clips = dataset.select(machine, split)
            if clips:
                emb = embed_clips(embedder, clips, seconds, batch_size, dev, amp,
                                  (lambda n: progress(n, total)) if progress else None, channel)  # fmt: skip
                groups[(machine, split)] = (clips, emb)
    meta = store.StoreMeta(
        model=name or default_name,
        checkpoint_sha256=fingerprint,
        clips_sha256=store.clips_sha256(dataset.clips),
        embedder=json.dumps({**frozen, "pretrained": None if frozen.get("pretrained") is None else str(frozen["pretrained"]),
                             "seconds": seconds, "channel": channel}, sort_keys=True) if frozen is not None else "",
    )  # fmt: skip
    store.write_embeddings(out, meta, groups)
    return dataset, groups, str(dev)
