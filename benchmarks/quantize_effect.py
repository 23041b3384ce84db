"""Print a bundle's official score and scoring speed in float32 and with int8 linear layers, side by side.

Scores every test clip of a dev data root with the bundle as exported (float32 weights) and with
PyTorch dynamic int8 quantisation of its linear layers (`asdtool export --quantize int8` does this at
load on CPU), then prints clips/s, the official score of each and their difference. Prints numbers,
asserts nothing.
Usage: python benchmarks/quantize_effect.py BUNDLE DATA_ROOT [--threads 2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from asdtool.evaluate import metrics
from asdtool.deploy.inputs import recording_of
from asdtool.deploy.load import load_bundle
from asdtool.deploy.scoring import score_recordings
from asdtool.data import dcase
from asdtool.data.audio import read_channels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("data_root")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dataset = dcase.scan(a.data_root)
    truths = metrics.truth_from_dataset(dataset)
    clips = dataset.select(split="test")
    audio = [read_channels(c.path, seconds=None) for c in clips]
    print(f"{a.bundle} on {len(clips)} test clips of {a.data_root}; {a.threads} threads, batch {a.batch_size}")
    print(f"{'weights':8} {'clips/s':>8} {'official':>9}")
    results = {}
    for mode in ("none", "int8"):
        bundle = load_bundle(a.bundle, quantize=mode)
        recs = [(recording_of(bundle, c.path, str(c.path), c.machine, c.section), x) for c, x in zip(clips, audio)]
        start = time.perf_counter()
        scored = score_recordings(bundle, recs, batch_size=a.batch_size)
        rate = len(clips) / (time.perf_counter() - start)
        by_machine: dict[str, dict[str, float]] = {}
        for c, r in zip(clips, scored):
            by_machine.setdefault(c.machine, {})[c.file_name] = r.score
        official = metrics.summarize(metrics.evaluate_scores(truths, by_machine))["official_score"]
        results[mode] = official
        print(f"{'float32' if mode == 'none' else 'int8':8} {rate:8.1f} {100 * official:9.2f}")
    print(f"int8 - float32: {100 * (results['int8'] - results['none']):+.2f} points")


if __name__ == "__main__":
    main()
