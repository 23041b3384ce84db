"""The log-mel reference detector: 1-NN cosine distance on time-averaged log-mel spectra.

No training, no network: a sanity floor every learned model must beat, and the detector the synthetic
dataset is calibrated against (it must land well above chance and well below perfect there).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from asdtool import metrics
from asdtool.data import dcase
from asdtool.data.audio import SAMPLE_RATE, read_clip
from asdtool.features import kaldi_fbank
from asdtool.vectors import nearest_cosine_distance


def logmel_mean(wave: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Return the time mean of a clip's 128-bin kaldi log-mel filterbank (25 ms / 10 ms frames)."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32) * 32768.0)[None]
    fbank = kaldi_fbank(
        x, num_mel_bins=n_mels, sample_frequency=SAMPLE_RATE, frame_length=25, frame_shift=10, dither=0.0
    )
    return fbank.mean(0).numpy()


def score_dataset(
    dataset: dcase.Dataset,
    seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Return {machine: {"train"|"test": {file_name: score}}}; training clips are scored leave-one-out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for machine in dataset.machines:
        feats = {}
        for split in dcase.SPLITS:
            clips = dataset.select(machine, split)
            rows = []
            for clip in clips:
                rows.append(logmel_mean(read_clip(clip.path, seconds)))
                if progress:
                    progress(1)
            feats[split] = (clips, np.stack(rows) if rows else np.zeros((0, 128), np.float32))
        train_clips, train = feats["train"]
        test_clips, test = feats["test"]
        leave_one_out = [[i] for i in range(len(train))]
        train_scores = nearest_cosine_distance(train, train, excluded=leave_one_out, dtype=np.float32)
        test_scores = nearest_cosine_distance(train, test, dtype=np.float32) if len(test_clips) else []
        out[machine] = {
            "train": dict(zip((c.file_name for c in train_clips), np.asarray(train_scores).tolist())),
            "test": dict(zip((c.file_name for c in test_clips), np.asarray(test_scores).tolist())),
        }
    return out


def evaluate_baseline(root, machines=None, seconds: float | None = None) -> dict:
    """Return the official metrics (metrics.json shape) of the log-mel detector on a labelled dev layout."""
    dataset = dcase.scan(root, machines)
    scores = score_dataset(dataset, seconds)
    test_scores = {m: s["test"] for m, s in scores.items()}
    return metrics.summarize(metrics.evaluate_scores(metrics.truth_from_dataset(dataset), test_scores))


def baseline_to_folder(
    data_root, out, seconds: float | None = None, machines=None, progress: Callable[[int, int], None] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Score every clip of a data root with the log-mel detector and write the score folder `out`.

    `progress(advance, total)` is called per clip. Returns the scores of `score_dataset`.
    """
    from asdtool.scorefolder import check_score_folder, write_score_folder

    check_score_folder(out)
    dataset = dcase.scan(data_root, machines or None)
    total = len(dataset.clips)
    scores = score_dataset(dataset, seconds, progress=(lambda n: progress(n, total)) if progress else None)
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for machine, by_split in scores.items():
        for split, by_clip in by_split.items():
            for clip in dataset.select(machine, split):
                rows.setdefault((machine, clip.section, split), {})[clip.file_name] = by_clip[clip.file_name]
    write_score_folder(out, rows)
    return scores
