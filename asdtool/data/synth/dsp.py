"""Signal primitives of the synthetic machine sounds: coloured noise, magnitude responses, running tones, impacts
and envelopes, vectorised over one clip at `SAMPLE_RATE` (`f` is always the clip's rfft frequency grid, `freqs`; a
magnitude response is applied by multiplying the clip's spectrum with it, zero phase). The dev renderers
(`asdtool.data.synth.dev`), the other DCASE layouts and the pre-training corpus are built from these, so a change
here changes the bytes of every synthetic set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.signal import lfilter

from asdtool.data.audio import SAMPLE_RATE

TWO_PI = 2.0 * np.pi
NYQUIST_GUARD = 7_600.0  # no tone above this: keeps every harmonic clear of aliasing at 16 kHz


def freqs(n: int) -> np.ndarray:
    """Return the rfft frequency grid (Hz) of an `n`-sample clip."""
    return np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)


def shaped_noise(rng: np.random.Generator, gain: np.ndarray, n: int) -> np.ndarray:
    """Return unit-RMS noise whose magnitude spectrum follows `gain` (filtered white noise)."""
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    return x / (x.std() + 1e-12)


def band(f: np.ndarray, lo: float, hi: float, order: float = 2.0) -> np.ndarray:
    """Return a band-pass magnitude response (Butterworth-like skirts of the given order)."""
    f = np.maximum(f, 1.0)
    return 1.0 / np.sqrt((1.0 + (lo / f) ** (2 * order)) * (1.0 + (f / hi) ** (2 * order)))


def tilt(f: np.ndarray, db_per_octave: float, ref: float = 1000.0) -> np.ndarray:
    """Return a spectral tilt: `db_per_octave` relative to `ref` Hz (-3 dB/oct is pink, -6 brown)."""
    return (np.maximum(f, 20.0) / ref) ** (db_per_octave / 6.0206)


def bump(f: np.ndarray, centre: float, octaves: float, gain_db: float) -> np.ndarray:
    """Return a smooth resonance: `gain_db` at `centre`, log-Gaussian of width `octaves`."""
    shape = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / octaves) ** 2)
    return 10.0 ** (gain_db * shape / 20.0)


def apply_filter(x: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Return `x` through a zero-phase magnitude response (a microphone's position and colouring)."""
    return np.fft.irfft(np.fft.rfft(x) * gain, len(x))


def speed(rng: np.random.Generator, n: int, f0: float, wander: float = 0.004, wow: float = 0.002) -> np.ndarray:
    """Return an instantaneous rotation frequency: `f0` with a slow random wander and a slight periodic wow."""
    t = np.arange(n) / SAMPLE_RATE
    knots = rng.standard_normal(6) * wander
    drift = np.interp(np.linspace(0.0, 5.0, n), np.arange(6), knots)
    wobble = wow * np.sin(TWO_PI * rng.uniform(0.3, 1.2) * t + rng.uniform(0, TWO_PI))
    return f0 * (1.0 + drift + wobble)


def phase(inst_freq: np.ndarray) -> np.ndarray:
    """Return the running phase (radians) of an instantaneous frequency in Hz."""
    return TWO_PI * np.cumsum(inst_freq) / SAMPLE_RATE


def harmonics(
    rng: np.random.Generator, phase: np.ndarray, f0: float, amps: Sequence[float], orders: Sequence[float] | None = None
) -> np.ndarray:
    """Return the sum of sines at the given multiples (default 1, 2, 3, ...) of a running phase, random start phases.

    Components at or above `NYQUIST_GUARD` (order times `f0`) and those of zero amplitude are left out.
    """
    starts = rng.uniform(0, TWO_PI, len(amps))
    if orders is None:
        # integer multiples: Im(sum_k c_k z^k) with z = e^(i phase), by Horner's rule (one exp, no sines)
        coeffs = [
            a * np.exp(1j * p) if a > 0 and k * f0 < NYQUIST_GUARD else 0j
            for k, a, p in zip(range(1, len(amps) + 1), amps, starts)
        ]
        while coeffs and coeffs[-1] == 0:
            coeffs.pop()
        if not coeffs:
            return np.zeros_like(phase)
        z = np.exp(1j * phase)
        acc = np.full(phase.shape, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc *= z
            acc += c
        acc *= z
        return acc.imag
    out = np.zeros_like(phase)
    for k, a, p in zip(orders, amps, starts):
        if a > 0 and k * f0 < NYQUIST_GUARD:
            out += a * np.sin(k * phase + p)
    return out


def vary(rng: np.random.Generator, amps: Sequence[float], db: float) -> np.ndarray:
    """Return `amps`, each with a random level change of `db` dB spread (no two normal clips sound the same)."""
    amps = np.asarray(amps, dtype=float)
    return amps * 10.0 ** (rng.normal(0.0, db, amps.shape) / 20.0)


def pulse_times(rng: np.random.Generator, rate: float, seconds: float, jitter: float = 0.02) -> np.ndarray:
    """Return the onset times of a quasi-periodic impact train at `rate` per second (period jitter as a fraction)."""
    period = 1.0 / rate
    count = int(seconds * rate) + 2
    gaps = period * (1.0 + jitter * rng.standard_normal(count))
    return rng.uniform(0, period) + np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def impulses(n: int, times: np.ndarray, amps: np.ndarray | float) -> np.ndarray:
    """Return `n` zero samples plus `amps` at the samples nearest `times` in seconds (those outside dropped)."""
    x = np.zeros(n)
    idx = np.round(np.asarray(times) * SAMPLE_RATE).astype(int)
    keep = (idx >= 0) & (idx < n)
    np.add.at(x, idx[keep], np.broadcast_to(np.asarray(amps, dtype=float), idx.shape)[keep])
    return x


def ring(n: int, times: np.ndarray, amps: np.ndarray | float, f_res: float, decay: float) -> np.ndarray:
    """Return impacts at `times` exciting a damped resonance at `f_res` Hz (decay time constant in seconds)."""
    x = impulses(n, times, amps)
    r = np.exp(-1.0 / (decay * SAMPLE_RATE))
    theta = TWO_PI * min(f_res, NYQUIST_GUARD) / SAMPLE_RATE
    return lfilter([np.sin(theta)], [1.0, -2.0 * r * np.cos(theta), r * r], x)


def bursts(rng: np.random.Generator, n: int, rate: float, length: float, gate: np.ndarray | None = None) -> np.ndarray:
    """Return an envelope (0 to 1) of randomly timed Hann-shaped bursts (`rate` per second, `length` seconds each)."""
    env = np.zeros(n)
    width = max(int(length * SAMPLE_RATE), 8)
    window = np.hanning(width)
    count = max(1, rng.poisson(rate * n / SAMPLE_RATE))
    for start in rng.integers(-width // 2, n, count):
        lo, hi = max(start, 0), min(start + width, n)
        if hi > lo:
            env[lo:hi] += window[lo - start : hi - start] * rng.uniform(0.6, 1.0)
    env = np.minimum(env, 1.0)
    return env if gate is None else env * gate


def gate(n: int, period: float, duty: float, offset: float, ramp: float) -> np.ndarray:
    """Return an on/off envelope: on for `duty` of each `period`, with linear ramps of `ramp` seconds."""
    t = np.arange(n) / SAMPLE_RATE
    age = (t + offset) % period  # time since this cycle switched on
    on_time = duty * period
    return np.clip(age / ramp, 0, 1) * np.clip((on_time - age) / ramp, 0, 1)


def gate_edges(n: int, period: float, duty: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the switch-on and switch-off times (seconds) of `gate`'s cycles inside the clip."""
    seconds = n / SAMPLE_RATE
    starts = np.arange(-1, int(seconds / period) + 2) * period - offset % period
    ends = starts + duty * period
    return starts[(starts >= 0) & (starts < seconds)], ends[(ends >= 0) & (ends < seconds)]


def random_sign(rng: np.random.Generator) -> float:
    """Return +1.0 or -1.0 with equal odds."""
    return 1.0 if rng.random() < 0.5 else -1.0


def soft_limit(x: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Return `x` through a soft limiter: identity below `knee`, smoothly saturating to full scale above."""
    over = np.abs(x) > knee
    if over.any():
        x = x.copy()
        head = 1.0 - knee
        x[over] = np.sign(x[over]) * (knee + head * np.tanh((np.abs(x[over]) - knee) / head))
    return x


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Return float samples as int16 after the soft limiter (how every clip is written)."""
    return np.round(soft_limit(x) * 32767.0).astype(np.int16)
