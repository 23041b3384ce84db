"""The DCASE organisers' autoencoder baseline: a dense autoencoder on 5 stacked log-mel frames.

A clip becomes overlapping vectors of 5 consecutive log-mel frames (640 numbers each); one
autoencoder per machine type learns to reconstruct the vectors of that type's normal training
clips, and a clip's anomaly score is the mean squared reconstruction error over its vectors (the
organisers' "MSE" score).

Settings carried over from the organisers' repositories, nttcslab/dcase2023_task2_baseline_ae
(baseline.yaml, datasets/loader_common.py, networks/dcase2023t2_ae/) and Hitachi's
dcase2020_task2_baseline (keras_model.py), which has the same network:

- features: librosa-style power mel spectrogram (n_fft 1024, hop 512, periodic Hann window of
  n_fft, frames centred on zero-padded edges, 128 Slaney mel bands with Slaney area
  normalisation from 0 Hz to Nyquist, power 2.0), then 20 / power * log10(max(mel, float eps))
  = 10 log10; 5 frames stacked with a hop of 1 frame, frame t of the window at [128 t, 128 t + 128);
  no normalisation of the vectors;
- network: 640 -> 128 -> 128 -> 128 -> 128 -> 8 -> 128 -> 128 -> 128 -> 128 -> 640, every hidden
  Dense followed by BatchNorm (momentum 0.01 in PyTorch's convention, eps 1e-3: Keras' defaults)
  and ReLU, the bottleneck included; the output layer is linear;
- training: MSE loss, Adam at lr 0.001 (PyTorch's defaults otherwise), 100 epochs, batches of
  256 shuffled vectors, 10 % of the vectors held out at random for a validation loss that is only
  logged (the model of the last epoch is kept); a training batch of one vector is skipped, as
  BatchNorm cannot train on it; PyTorch's default initialisation;
- one model per machine type on all its training clips (source and target, normal only).

The mel spectrogram is computed here with numpy (float64) rather than by librosa, which asdtool
does not depend on; librosa >= 0.10 pads the centred frames with zeros as done here.

Determinism: the initialisation, the validation split and the batch order are drawn from `seed`
alone (the global RNG is restored afterwards) and training runs on the CPU, on one thread, with
PyTorch's deterministic algorithms, so the same seed on the same machine gives the same bits.

Training length on small data. The organisers' 100 epochs assume the DCASE development set:
about 1,000 clips of 10 s, 309 vectors each, so about 1,200 Adam steps per epoch. The embedded
synthetic default (asdtool synth) has 66 training clips of 2 s per machine type, 59 vectors
each: 3,894 vectors, 3,504 after the validation split, 14 steps per epoch, 1,400 steps in all,
about 80 times fewer. Measured on data/synth, seed 0, validation loss only (no test labels):
at 100 epochs it is still falling for slider (12.7, then 9.0 at 200 epochs), valve (11.0 -> 9.3)
and ToyTrain (9.2 -> 8.3); at 300 epochs every machine type is within 0.11 of its value at 400
(7.7-9.1). On that data `epochs` should be about 300 (4,200 steps); the default stays the
organisers' 100. The other settings need no change there: batches of 256 and BatchNorm's slow
running averages (momentum 0.01) still see hundreds of steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.errors import AsdError

N_MELS = 128
N_FRAMES = 5
N_FFT = 1024
HOP_LENGTH = 512
POWER = 2.0
HIDDEN = 128
BOTTLENECK = 8
HIDDEN_LAYERS = 4  # Dense(128) layers on each side of the bottleneck



# ----------------------------------------------------------------------------- features


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Return the Slaney-normalised triangular mel filters [n_mels, 1 + n_fft // 2] from 0 Hz to Nyquist."""
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # each filter of unit area
    weights.flags.writeable = False
    return weights


def power_spectrogram(wave: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Return |STFT|^2 [1 + n_fft // 2, frames] of centred frames (edges zero-padded by n_fft // 2)."""
    x = np.pad(np.asarray(wave, dtype=np.float64), n_fft // 2)
    frames = 1 + (len(x) - n_fft) // hop_length
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    idx = np.arange(n_fft)[None, :] + hop_length * np.arange(frames)[:, None]  # (frames, n_fft)
    spectrum = np.fft.rfft(x[idx] * window, axis=1)  # (frames, bins)
    return (spectrum.real**2 + spectrum.imag**2).T


def log_mel_spectrogram(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Return the organisers' log-mel energies [frames, n_mels]: 10 log10 of the power mel spectrogram."""
    mel = mel_filterbank(sample_rate) @ power_spectrogram(wave) ** (POWER / 2.0)  # (n_mels, frames)
    return (20.0 / POWER * np.log10(np.maximum(mel, sys.float_info.epsilon))).T


def stack_frames(log_mel: np.ndarray, n_frames: int = N_FRAMES) -> np.ndarray:
    """Return the vectors [frames - n_frames + 1, n_frames * n_mels] of n_frames consecutive frames, hop 1."""
    n_vectors = log_mel.shape[0] - n_frames + 1
    if n_vectors < 1:
        return np.zeros((0, n_frames * log_mel.shape[1]), dtype=log_mel.dtype)
    return np.concatenate([log_mel[t : t + n_vectors] for t in range(n_frames)], axis=1)


def clip_vectors(wave: np.ndarray, sample_rate: int, path: str | Path | None = None) -> np.ndarray:
    """Return a clip's autoencoder input vectors as float32 [vectors, 640]; AsdError for a clip too short."""
    vectors = stack_frames(log_mel_spectrogram(wave, sample_rate)).astype(np.float32)
    if len(vectors) == 0:
        least = (N_FRAMES - 1) * HOP_LENGTH
        raise AsdError(f"too short for the autoencoder: {len(wave)} samples, it needs at least {least}", path)
    return vectors


# ----------------------------------------------------------------------------- network


def _dense(n_in: int, n_out: int) -> list[nn.Module]:
    # Keras' BatchNormalization defaults (momentum 0.99 of the old value, eps 1e-3), as the organisers kept them
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3), nn.ReLU()]


class DenseAutoencoder(nn.Module):
    """The organisers' dense autoencoder: 640 -> 128 x4 -> 8 -> 128 x4 -> 640, BatchNorm + ReLU after each hidden Dense."""

    def __init__(self, input_dim: int = N_MELS * N_FRAMES, hidden: int = HIDDEN, bottleneck: int = BOTTLENECK,
                 hidden_layers: int = HIDDEN_LAYERS):  # fmt: skip
        super().__init__()
        self.input_dim = input_dim
        widths = [input_dim] + [hidden] * hidden_layers
        self.encoder = nn.Sequential(
            *(m for a, b in zip(widths, widths[1:]) for m in _dense(a, b)), *_dense(hidden, bottleneck)
        )
        self.decoder = nn.Sequential(
            *_dense(bottleneck, hidden),
            *(m for _ in range(hidden_layers - 1) for m in _dense(hidden, hidden)),
            nn.Linear(hidden, input_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 640) -> (B, 640)
        """Return the reconstruction of `x` (B, input_dim) through the bottleneck."""
        return self.decoder(self.encoder(x))  # bottleneck (B, 8)

    def dense_shapes(self) -> list[tuple[int, int]]:
        """Return (in, out) of every Dense layer in forward order."""
        return [(m.in_features, m.out_features) for m in self.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- training and scoring


@dataclass(frozen=True)
class TrainSettings:
    """The organisers' training settings (baseline.yaml of dcase2023_task2_baseline_ae); seed is ours."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class EpochLog:
    """Mean batch losses of one finished epoch; val_loss is NaN without validation vectors."""

    epoch: int  # 1-based
    epochs: int
    loss: float
    val_loss: float


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one compute thread, then restore the thread count.

    The bits of a float32 matrix product depend on how many threads share it, and this small
    network runs faster on one thread than on two contended ones (measured on a loaded 2-core
    machine: 2 s against 40 s for 10 epochs of one synthetic machine type).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed the global RNG for the initialisation and yield a generator for the data order; restore both after."""
    before = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.use_deterministic_algorithms(before)


def split_validation(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (training, validation) indices of n vectors: ceil(fraction * n) drawn at random for validation."""
    order = torch.randperm(n, generator=generator)
    n_val = min(math.ceil(fraction * n), n - 2) if fraction > 0 else 0
    return order[n_val:].sort().values, order[:n_val].sort().values


def train_autoencoder(
    vectors: np.ndarray, settings: TrainSettings = TrainSettings(), on_epoch: Callable[[EpochLog], None] | None = None
) -> tuple[DenseAutoencoder, list[EpochLog]]:
    """Return the autoencoder trained on `vectors` [N, 640] (in eval mode) and the loss of every epoch."""
    data = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    if data.ndim != 2 or len(data) < 2:
        raise AsdError(f"the autoencoder needs at least 2 training vectors, got {len(data)}")
    history: list[EpochLog] = []
    with _deterministic(settings.seed) as generator:
        model = DenseAutoencoder(input_dim=data.shape[1])
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
        train_idx, val_idx = split_validation(len(data), settings.validation_split, generator)
        for epoch in range(1, settings.epochs + 1):
            model.train()
            losses = []
            order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            for batch in order.split(settings.batch_size):
                if len(batch) < 2:
                    continue  # BatchNorm cannot train on one vector (the organisers skip it too)
                x = data[batch]
                loss = F.mse_loss(model(x), x)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                val = [F.mse_loss(model(data[b]), data[b]).item() for b in val_idx.split(settings.batch_size)]
            log = EpochLog(epoch, settings.epochs, float(np.mean(losses)) if losses else math.nan,
                           float(np.mean(val)) if val else math.nan)  # fmt: skip
            history.append(log)
            if on_epoch:
                on_epoch(log)
    model.eval()
    return model, history


def reconstruction_errors(model: DenseAutoencoder, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Return each clip's anomaly score: the mean squared reconstruction error over its vectors [V, 640]."""
    model.eval()
    out = np.empty(len(clips), dtype=np.float64)
    with torch.no_grad(), _one_thread():
        for i, vectors in enumerate(clips):
            x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
            out[i] = (model(x).double() - x.double()).pow(2).mean().item()
    return out
