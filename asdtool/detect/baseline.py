"""The reference detectors: log-mel 1-NN cosine distance, and the DCASE organisers' autoencoder.

`method` picks one:

- `logmel-mean`: cosine distance of a clip's time-averaged 128-bin kaldi log-mel spectrum to the
  nearest training clip's. No training, no network: a sanity floor every learned model must beat,
  and the detector the synthetic dataset is calibrated against (it must land well above chance and
  well below perfect there).
- `logmel-meanstd`: the same 1-NN cosine distance on the time mean and the time standard
  deviation (population, ddof 0) of the log-mel frames, concatenated (256 numbers).
- `autoencoder`: the organisers' dense autoencoder (`asdtool.models.autoencoder`), one per machine type.

Training clips get scores too, for the decision thresholds: the 1-NN methods score each training
clip leave-one-out (its nearest *other* training clip); the autoencoder scores the training clips
with the model trained on them, so their errors are in-sample and a little lower than those of
normal test clips.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from asdtool.evaluate import metrics
from asdtool.data import dcase
from asdtool.data.audio import SAMPLE_RATE, read_clip
from asdtool.core.errors import AsdError
from asdtool.models.features import kaldi_fbank
from asdtool.core.vectors import nearest_cosine_distance
from asdtool.config.choices import BaselineMethod

if TYPE_CHECKING:
    from asdtool.models.autoencoder import EpochLog, TrainSettings

Scores = dict[str, dict[str, dict[str, float]]]  # {machine: {"train"|"test": {file_name: score}}}


def logmel_frames(wave: np.ndarray, n_mels: int = 128) -> torch.Tensor:
    """Return a clip's 128-bin kaldi log-mel filterbank [frames, n_mels] (25 ms / 10 ms frames)."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32) * 32768.0)[None]
    return kaldi_fbank(
        x, num_mel_bins=n_mels, sample_frequency=SAMPLE_RATE, frame_length=25, frame_shift=10, dither=0.0
    )


def logmel_mean(wave: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Return the time mean of a clip's 128-bin kaldi log-mel filterbank (25 ms / 10 ms frames)."""
    return logmel_frames(wave, n_mels).mean(0).numpy()


def logmel_meanstd(wave: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Return [time mean, time standard deviation (ddof 0)] of a clip's kaldi log-mel filterbank (2 n_mels)."""
    fbank = logmel_frames(wave, n_mels)
    return torch.cat([fbank.mean(0), fbank.std(0, correction=0)]).numpy()


_CLIP_FEATURES = {"logmel-mean": (logmel_mean, 128), "logmel-meanstd": (logmel_meanstd, 256)}


def _check_method(method: str) -> None:
    if method not in BaselineMethod.values():
        raise AsdError(f"unknown baseline method {method!r}: use one of {BaselineMethod.listed()}")


def score_dataset(
    dataset: dcase.Dataset,
    seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
    method: str = "logmel-mean",
    settings: TrainSettings | None = None,
    on_epoch: Callable[[str, EpochLog], None] | None = None,
    channel: str = "left",
) -> Scores:
    """Return {machine: {"train"|"test": {file_name: score}}} of one method (see the module docstring).

    The 1-NN methods score each section against its own training clips. `progress(1)` is called per
    clip read; `settings` (the organisers' by default) and `on_epoch(machine, log)` concern the
    autoencoder only; `channel` is the channel of stereo clips.
    """
    _check_method(method)
    if method == "autoencoder":
        return _score_autoencoder(dataset, seconds, progress, settings, on_epoch, channel)
    features, dim = _CLIP_FEATURES[method]
    out: Scores = {}
    for machine in dataset.machines:
        out[machine] = {"train": {}, "test": {}}
        for section in sorted({c.section for c in dataset.select(machine)}):
            feats = {}
            for split in dcase.SPLITS:
                clips = [c for c in dataset.select(machine, split) if c.section == section]
                rows = []
                for clip in clips:
                    rows.append(features(read_clip(clip.path, seconds, channel=channel)))
                    if progress:
                        progress(1)
                feats[split] = (clips, np.stack(rows) if rows else np.zeros((0, dim), np.float32))
            train_clips, train = feats["train"]
            test_clips, test = feats["test"]
            leave_one_out = [[i] for i in range(len(train))]
            train_scores = nearest_cosine_distance(train, train, excluded=leave_one_out, dtype=np.float32)
            test_scores = nearest_cosine_distance(train, test, dtype=np.float32) if len(test_clips) else []
            out[machine]["train"].update(zip((c.file_name for c in train_clips), np.asarray(train_scores).tolist()))
            out[machine]["test"].update(zip((c.file_name for c in test_clips), np.asarray(test_scores).tolist()))
    return out


def _score_autoencoder(dataset, seconds, progress, settings, on_epoch, channel="left") -> Scores:
    """Train one autoencoder per machine type on its normal training clips; score every clip with it."""
    from asdtool.models import autoencoder

    settings = settings or autoencoder.TrainSettings()
    out: Scores = {}
    for machine in dataset.machines:
        vectors: dict[str, list] = {}
        for split in dcase.SPLITS:
            vectors[split] = []
            for clip in dataset.select(machine, split):
                wave = read_clip(clip.path, seconds, channel=channel)
                vectors[split].append((clip, autoencoder.clip_vectors(wave, SAMPLE_RATE, clip.path)))
                if progress:
                    progress(1)
        normal = [v for clip, v in vectors["train"] if clip.label != 1]
        if not normal:
            raise AsdError(f"{machine}: no normal training clips to train the autoencoder on")
        report = (lambda log: on_epoch(machine, log)) if on_epoch else None
        model, _ = autoencoder.train_autoencoder(np.concatenate(normal), settings, on_epoch=report)
        out[machine] = {}
        for split, pairs in vectors.items():
            errors = autoencoder.reconstruction_errors(model, [v for _, v in pairs])
            out[machine][split] = dict(zip((clip.file_name for clip, _ in pairs), errors.tolist()))
    return out


def evaluate_baseline(root, machines=None, seconds: float | None = None, method: str = "logmel-mean",
                      reading: dcase.Reading = dcase.Reading(), channel: str = "left") -> dict:  # fmt: skip
    """Return the official metrics (metrics.json shape) of a reference detector on a labelled dev layout."""
    dataset = dcase.scan(root, machines, reading)
    scores = score_dataset(dataset, seconds, method=method, channel=channel)
    test_scores = {m: s["test"] for m, s in scores.items()}
    return metrics.summarize(metrics.evaluate_scores(metrics.truth_from_dataset(dataset), test_scores))


def baseline_to_folder(
    data_root,
    out,
    seconds: float | None = None,
    machines=None,
    progress: Callable[[int, int], None] | None = None,
    method: str = "logmel-mean",
    settings: TrainSettings | None = None,
    on_epoch: Callable[[str, EpochLog], None] | None = None,
    reading: dcase.Reading = dcase.Reading(),
    channel: str = "left",
) -> Scores:
    """Score every clip of a data root with one reference detector and write the score folder `out`.

    `progress(advance, total)` is called per clip read; `on_epoch(machine, log)` after every
    autoencoder epoch. Returns the scores of `score_dataset`.
    """
    from asdtool.evaluate.scorefolder import check_score_folder, write_score_folder

    _check_method(method)
    check_score_folder(out, inputs=[data_root])
    dataset = dcase.scan(data_root, machines or None, reading)
    total = len(dataset.clips)
    scores = score_dataset(dataset, seconds, progress=(lambda n: progress(n, total)) if progress else None,
                           method=method, settings=settings, on_epoch=on_epoch, channel=channel)  # fmt: skip
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for machine, by_split in scores.items():
        for split, by_clip in by_split.items():
            for clip in dataset.select(machine, split):
                rows.setdefault((machine, clip.section, split), {})[clip.file_name] = by_clip[clip.file_name]
    write_score_folder(out, rows)
    return scores
