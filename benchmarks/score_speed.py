"""Print the throughput of `asdtool score`'s scoring (clips/s, real-time factor): batched, one clip at a time, and int8.

A bundle of one random-init classifier (tiny or base BEATs or EAT; speed does not depend on the
weights) with a memory bank of 1,000 random training embeddings (990 source, 10 target, domain-z)
scores random recordings of `--seconds` through `asdtool.deploy.scoring.score_recordings`: batched across
recordings (`--batch-size`), against a batch of one (the same code path), and batched with the
linear layers quantised to int8 (`export --quantize int8`). Real-time factor = seconds of audio
scored per second of wall time. Prints numbers, asserts nothing.
Usage: python benchmarks/score_speed.py [--backbones beats] [--sizes tiny base] [--clips 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from asdtool.deploy.bundle import Bundle, Member
from asdtool.deploy.inputs import Recording
from asdtool.deploy.load import quantize_int8
from asdtool.deploy.scoring import score_recordings
from asdtool.detect.knn import fit_section
from asdtool.detect.settings import DetectorSettings
from asdtool.models.classifier import build_classifier
from asdtool.data.store import Group


def make_bundle(backbone: str, size: str, seconds: float, device: str, int8: bool = False) -> Bundle:
    """Return a bundle of one random-init classifier and a random 1,000-clip memory bank of machine `fan`."""
    torch.manual_seed(0)
    model = build_classifier(backbone, 10, size=size).to(device).eval()
    if int8:
        model = quantize_int8(model)
    rng = np.random.default_rng(0)
    n = 1000
    values = rng.normal(size=(n, model.embedding_dim)).astype(np.float32)
    domain = np.r_[np.zeros(990), np.ones(10)].astype(np.int8)
    group = Group([f"section_00_{i:04d}.wav" for i in range(n)], domain, np.zeros(n, np.int8), [""] * n, values)
    member = Member("bench", model, seconds, "left", {}, {})
    member.banks[("fan", "00")] = fit_section(group, DetectorSettings(normalise="domain-z"))
    return Bundle(Path("bench.asd"), {"kind": "model"}, [member], None, {("fan", "00"): 0.0}, torch.device(device))


def throughput(bundle: Bundle, clips: int, seconds: float, batch: int, repeats: int) -> float:
    """Return recordings scored per second (best of `repeats`, after one warm-up pass)."""
    rng = np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal((1, int(16000 * seconds)))).astype(np.float32) for _ in range(clips)]
    recs = [(Recording(f"r{i}", Path(f"r{i}"), "fan", "00"), w) for i, w in enumerate(waves)]
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        score_recordings(bundle, recs, batch_size=batch)
        if bundle.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - start)
    return clips / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["beats"])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"device {a.device}, {torch.get_num_threads()} threads, {a.clips} recordings of {a.seconds:g} s")
    print(f"{'backbone':9} {'size':5} {'batched clips/s':>15} {'x real time':>11} {'one by one':>10} {'x real time':>11} "
          f"{'int8 batched':>12} {'x real time':>11}")  # fmt: skip
    for backbone in a.backbones:
        for size in a.sizes:
            bundle = make_bundle(backbone, size, a.seconds, a.device)
            batched = throughput(bundle, a.clips, a.seconds, a.batch_size, a.repeats)
            single = throughput(bundle, a.clips, a.seconds, 1, a.repeats)
            int8 = throughput(make_bundle(backbone, size, a.seconds, a.device, int8=True), a.clips, a.seconds,
                              a.batch_size, a.repeats) if a.device == "cpu" else float("nan")  # fmt: skip
            print(f"{backbone:9} {size:5} {batched:15.2f} {batched * a.seconds:11.1f} {single:10.2f} {single * a.seconds:11.1f} "
                  f"{int8:12.2f} {int8 * a.seconds:11.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
