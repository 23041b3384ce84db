"""Shared by the bundle tests (export, load, scoring, inputs, scorelog): one small dev set, its models, stores and detect's scores.

`fitted` is built once per test process (session scope): fine-tuning its three models is the slow
part of these tests. test_schema.py and test_serve.py build their own, smaller ones.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from asdtool.config.stages import FinetuneConfig
from asdtool.data.audio import read_channels
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.deploy.inputs import Recording, recording_of
from asdtool.detect.embed import embed_to_store
from asdtool.detect.knn import detect_to_folder
from asdtool.evaluate import metrics
from asdtool.train.finetune import finetune
from asdtool.detect.settings import DetectorSettings

from tests.conftest import run_asdtool

MACHINES = ["fan", "valve"]


_asdtool = partial(run_asdtool, text=False)  # bytes: one test pipes a WAV file to stdin


@pytest.fixture(scope="session")
def fitted(tmp_path_factory) -> dict:
    """A small dev set, a full and a LoRA model on it, their stores and detect's domain-z and raw scores."""
    base = tmp_path_factory.mktemp("bundle")
    data = base / "dev"
    synthesize(data, seed=5, sizes=SynthSizes(0.5, 10, 3, 4), machines=MACHINES)
    out = {"base": base, "data": data}
    for name, rank, seed in (("full", 0, 0), ("full2", 0, 1), ("lora", 4, 0)):
        model = base / name
        finetune(FinetuneConfig(data_root=data, out=model, steps=6, batch_size=8, seconds=0.5, warmup=2, lora_rank=rank,
                                seed=seed, threads=1, max_lr=1e-3))  # fmt: skip
        embed_to_store(model, data, base / f"{name}.h5", batch_size=16)
        out[name] = model
    frozen = {"backbone": "eat", "pretrained": None, "size": "tiny", "layer": 1, "pooling": "meanstd", "seed": 0}
    embed_to_store(None, data, base / "frozen.h5", batch_size=16, frozen=frozen)
    for name in ("full", "full2", "lora", "frozen"):
        detect_to_folder(base / f"{name}.h5", base / f"scores-{name}-z", settings=DetectorSettings(normalise="domain-z"))
        detect_to_folder(base / f"{name}.h5", base / f"scores-{name}", settings=DetectorSettings(normalise="none"))
    return out


def _test_recordings(bundle, data: Path, machine: str) -> list[tuple[Recording, np.ndarray]]:
    paths = sorted((data / machine / "test").glob("*.wav"))
    return [(recording_of(bundle, p, str(p), None, None), read_channels(p, seconds=None)) for p in paths]


def _detect_scores(folder: Path, machine: str) -> dict[str, float]:
    return metrics.read_score_csv(folder / metrics.score_file_name(machine, "00"))
