"""Toy data shared by the store, detector and ensemble tests: a small synthetic dev set and stores of it."""

from pathlib import Path

import numpy as np

from asdtool.data import dcase, store
from asdtool.data.synth.dev import SynthSizes, synthesize


def synth_dataset(root: Path, machines=("fan", "valve")) -> dcase.Dataset:
    """A small synthetic dev set with realistic names: 6 source + 2 target training clips, 2+2 test clips per domain."""
    synthesize(root, sizes=SynthSizes(0.5, 6, 2, 2), machines=machines)
    return dcase.scan(root)


def toy_embeddings(dataset: dcase.Dataset, dim: int = 16, seed: int = 0, gap: float = 0.0) -> dict:
    """Return {(machine, split): (clips, embeddings)}: normals near one direction per domain, anomalies
    pushed `gap` along a direction of their own (gap 0: anomalies look like normals)."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in dataset.machines:
        centre = rng.normal(size=(2, dim))
        fault = rng.normal(size=dim)
        for split in ("train", "test"):
            clips = dataset.select(m, split)
            x = np.stack([centre[c.domain_id] + 0.3 * rng.normal(size=dim) + gap * (c.label == 1) * fault for c in clips])
            out[(m, split)] = (clips, x.astype(np.float32))
    return out


def write_toy_store(path: Path, dataset: dcase.Dataset, **kw) -> Path:
    meta = store.StoreMeta(model="toy", checkpoint_sha256="c" * 64, clips_sha256=store.clips_sha256(dataset.clips))
    store.write_embeddings(path, meta, toy_embeddings(dataset, **kw))
    return path


def tiny_model(base: Path, seed: int, sizes: SynthSizes, steps: int, warmup: int, machines=("fan", "valve"),
               model: str = "model", store: str = "emb.h5", **finetune_options) -> tuple[Path, Path, Path]:
    """Write a synthetic dev set to base/dev, fine-tune a tiny BEATs on it and embed it; return (data, model, store).

    One thread and seed 0, so that every test that builds one gets the same bytes.
    """
    from asdtool.config.stages import FinetuneConfig
    from asdtool.detect.embed import embed_to_store
    from asdtool.train.finetune import finetune

    data = base / "dev"
    synthesize(data, seed=seed, sizes=sizes, machines=list(machines))
    finetune(FinetuneConfig(data_root=data, out=base / model, steps=steps, batch_size=8, seconds=0.5, warmup=warmup, seed=0,
                            threads=1, **finetune_options))  # fmt: skip
    embed_to_store(base / model, data, base / store, batch_size=16)
    return data, base / model, base / store
