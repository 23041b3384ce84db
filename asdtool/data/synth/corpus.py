"""An unlabeled pre-training corpus of generic machine-like sound, beyond the seven dev machine types.

The corpus is to the synthetic dev set (`asdtool.data.synth.dev`) what AudioSet is to DCASE: sound of
machines in general, for self-supervised pre-training, and never a clip of the dev set.
`write_corpus` writes one flat folder:

    <out>/corpus_00000.wav ...   16 kHz mono PCM_16
    <out>/corpus.csv             file, family, kind, layers, background, event, rms_dbfs, params

Every clip has a main sound family (`FAMILIES`) whose parameters are drawn from wide continuous
ranges; some clips mix in one or two other families at lower levels, some carry a fault-like event
(a knock, a rubbing burst, a squeal), some sit in a reverberant room; all have a factory background,
speed wander where something turns, a random microphone colouring and a random level.

The dev machines' signal models are never called. The generic families that share a structure with
a dev model redraw any parameter set that would land on that model's fixed signature: blade-pass
tones with a dev fan's blade count near its rotation rate, gear meshes with the dev gearbox's tooth
count, actuator strokes whose motor turns as often per stroke as the dev slider's.

Every clip draws from its own numpy Generator, seeded by (seed, index): the same seed gives
byte-identical files, and a clip does not depend on how many clips are asked for.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from asdtool.core.atomic import atomic_dir
from asdtool.data.audio import SAMPLE_RATE
from asdtool.data.synth.dev import FAN_MODELS, GEARBOX_TEETH
from asdtool.data.synth.dsp import (
    NYQUIST_GUARD,
    TWO_PI,
    apply_filter,
    band,
    bump,
    bursts,
    freqs,
    gate,
    gate_edges,
    harmonics,
    impulses,
    phase,
    pulse_times,
    ring,
    shaped_noise,
    speed,
    tilt,
)
from asdtool.core.errors import AsdError, few

FAMILIES = ("rotating", "gear", "impact", "flow", "electrical", "cycle", "rolling", "ambient")
EVENTS = ("knock", "rub", "squeal")  # fault-like events
AMBIENT_KINDS = ("pink", "brown", "distant", "rumble")  # the ambient family's kinds, and every clip's background
CSV_NAME = "corpus.csv"
CSV_COLUMNS = ("file", "family", "kind", "layers", "background", "event", "rms_dbfs", "params")
MAX_CLIPS = 99_999  # five-digit clip numbers

_CLIP_NAME = re.compile(r"corpus_\d{5}\.wav")
_STREAM = 0x636F7270  # "corp": keeps the corpus generators apart from any other use of the seed
_SLIDER_TURNS_PER_STROKE = 240.0  # dev._slider: motor 0.4 vel Hz times stroke period 600 / vel s

# how a clip is put together
_EXTRA_LAYERS = (0.55, 0.30, 0.15)  # probability of 0, 1, 2 further families
_EVENT_PROBABILITY = 0.15
_ROOM_PROBABILITY = 0.35


@dataclass(frozen=True)
class CorpusSummary:
    """What `write_corpus` wrote: clip counts per main family, per mixed-in family, with events."""

    out: Path
    seed: int
    clips: int
    seconds: float
    families: dict[str, int]  # main family -> clips
    mixed_in: dict[str, int]  # family -> clips where it is a further layer
    mixed: int  # clips with more than one family
    events: int  # clips with a fault-like event


Params = dict[str, "float | int | str"]
Layer = tuple[np.ndarray, str, Params]  # (unscaled sound, kind, main parameters)


# --------------------------------------------------------------------------------------------------
# Small helpers (on top of synth's signal primitives)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Return `x` scaled to unit RMS (silence stays silence)."""
    rms = _rms(x)
    return x / rms if rms > 0 else x


def _wobble(rng: np.random.Generator, n: int, rate: float, depth: float) -> np.ndarray:
    """A slow random level envelope around 1 (`rate` knots per second, relative `depth`)."""
    knots = max(int(rate * n / SAMPLE_RATE) + 2, 3)
    values = rng.standard_normal(knots) * depth
    return np.maximum(1.0 + np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values), 0.05)


def _decays(n: int, times: np.ndarray, amps: np.ndarray | float, tau: float) -> np.ndarray:
    """Exponential decay envelopes (time constant `tau` s) starting at `times`: the contact noise of impacts."""
    return lfilter([1.0], [1.0, -np.exp(-1.0 / (tau * SAMPLE_RATE))], impulses(n, times, amps))


def _impacts(rng: np.random.Generator, n: int, times: np.ndarray, base: float, decay: float, modes: int) -> np.ndarray:
    """Impacts exciting `modes` resonances (the first at `base` Hz, others inharmonic above it), with contact noise."""
    f = freqs(n)
    amps = 10 ** (rng.normal(0.0, 2.5, len(times)) / 20)
    x = ring(n, times, amps, base, decay)
    for _ in range(modes - 1):
        f_mode = min(base * rng.uniform(1.3, 4.5), NYQUIST_GUARD)
        x += rng.uniform(0.2, 0.8) * ring(n, times, amps, f_mode, decay * rng.uniform(0.3, 1.0))
    contact = _decays(n, times, amps, rng.uniform(0.001, 0.004))
    lo = rng.uniform(0.5, 2.0) * base
    x += rng.uniform(0.05, 0.3) * contact * shaped_noise(rng, band(f, lo, min(4 * lo, 7800.0), 1.5), n)
    return x


def _inside(rng: np.random.Generator, times: np.ndarray, seconds: float) -> np.ndarray:
    """The onsets that fall inside the clip; one at a random time when none does (a clip is never empty)."""
    times = times[(times >= 0) & (times < seconds)]
    return times if len(times) else np.array([rng.uniform(0.0, 0.8 * seconds)])


def _reverb(rng: np.random.Generator, x: np.ndarray, rt60: float, wet: float) -> np.ndarray:
    """A room: circular convolution with decaying noise (stationary sounds stay stationary), mixed `wet`."""
    n = len(x)
    m = min(n, max(int(rt60 * SAMPLE_RATE), 16))
    t = np.arange(m) / SAMPLE_RATE
    ir = rng.standard_normal(m) * np.exp(-6.91 * t / rt60)
    damping = band(freqs(n), 20.0, rng.uniform(2500.0, 7000.0), 1.0)  # air and walls absorb the highs
    y = np.fft.irfft(np.fft.rfft(x) * np.fft.rfft(ir, n) * damping, n)
    return (1.0 - wet) * x + wet * _rms(x) * _unit(y)


def _near_dev_fan(blades: int, rotation: float) -> bool:
    """True when a blade-pass tone would sit on a dev fan model (same blade count, rotation within 25%)."""
    return any(blades == b and abs(rotation / r - 1.0) < 0.25 for b, r, _ in FAN_MODELS.values())


# --------------------------------------------------------------------------------------------------
# Sound families. Each returns (sound, kind, main parameters); the level is set by the clip's mix.


def _rotating(rng: np.random.Generator, n: int) -> Layer:
    """Motors, pumps, compressors and turbines: harmonic series of a wandering rotation rate."""
    f, seconds = freqs(n), n / SAMPLE_RATE
    kind = _pick(rng, ("motor", "pump", "compressor", "turbine"))
    lo, hi = {"motor": (10.0, 400.0), "pump": (12.0, 60.0), "compressor": (8.0, 60.0), "turbine": (40.0, 400.0)}[kind]
    f0 = _log_uniform(rng, lo, hi)
    vanes = int(rng.integers(3, 9)) if kind == "pump" else 0
    while vanes and _near_dev_fan(vanes, f0):
        f0 = _log_uniform(rng, lo, hi)
    wander, wow = rng.uniform(0.001, 0.03), rng.uniform(0.0, 0.01)
    inst = speed(rng, n, f0, wander, wow)
    sweep = _log_uniform(rng, 0.6, 1.6) if rng.random() < 0.2 else 1.0  # a run-up or run-down
    inst = inst * np.geomspace(1.0, sweep, n)
    ph, top = phase(inst), float(inst.max())  # the top rate keeps every tone below the guard
    params: Params = {"f0_hz": f0, "wander": wander, "sweep": sweep}
    if kind == "motor":
        count, slope = int(rng.integers(3, 17)), rng.uniform(-3.0, -0.5)
        amps = 10 ** ((slope * np.arange(count) + rng.normal(0, 4.0, count)) / 20)
        x = harmonics(rng, ph, top, amps)
        slots = int(rng.integers(17, 61))  # rotor slot-pass tones of an induction motor
        x += harmonics(rng, ph, top, rng.uniform(0.03, 0.3, 2), [slots - 1, slots + 1])
        x += rng.uniform(0.05, 0.3) * shaped_noise(rng, band(f, 200, 6000, 1.0) * tilt(f, -2.0), n)
        params |= {"harmonics": count, "slope_db": slope, "slots": slots}
    elif kind == "pump":
        x = harmonics(rng, ph, top, rng.uniform(0.05, 0.3, 3))
        vane = harmonics(rng, vanes * ph, vanes * top, 10 ** (-rng.uniform(2, 12) * np.arange(4) / 20))
        x += vane * (1.0 + rng.uniform(0.0, 0.5) * np.sin(ph))  # pressure pulsation at the shaft rate
        centre = _log_uniform(rng, 200, 2500)
        x += rng.uniform(0.2, 0.8) * shaped_noise(rng, band(f, 80, 5000, 1.0) * bump(f, centre, 0.8, 8.0), n)
        if rng.random() < 0.3:  # cavitation: a crackle of tiny high-frequency impacts
            crack = _inside(rng, np.sort(rng.uniform(0, seconds, rng.poisson(80 * seconds))), seconds)
            x += 0.5 * ring(n, crack, rng.uniform(0.2, 1.0, len(crack)), rng.uniform(3000, 7000), 0.0005)
        params |= {"vanes": vanes, "flow_centre_hz": centre}
    elif kind == "compressor":
        cylinders, power = int(rng.integers(1, 5)), rng.uniform(0.5, 1.5)
        x = harmonics(rng, ph, top, (1.0 / np.arange(1, 31)) ** power)
        strokes = _inside(rng, pulse_times(rng, cylinders * f0, seconds, 0.01), seconds)
        x += rng.uniform(0.3, 1.5) * ring(n, strokes, 1.0, _log_uniform(rng, 300, 2500), rng.uniform(0.002, 0.01))
        intake = (0.5 + 0.5 * np.sin(cylinders * ph)) ** 2
        x += rng.uniform(0.1, 0.5) * intake * shaped_noise(rng, band(f, 300, 6000, 1.0), n)
        params |= {"cylinders": cylinders, "rolloff": power}
    else:  # turbine: blade-pass tones far above the shaft rate, and the whoosh of the flow
        blades = int(rng.integers(13, max(14, min(61, int(7000 / top) + 1))))
        x = harmonics(rng, ph, top, rng.uniform(0.02, 0.2, 2))
        x += harmonics(rng, blades * ph, blades * top, 10 ** (-rng.uniform(4, 12) * np.arange(3) / 20))
        centre = _log_uniform(rng, 500, 4000)
        x += rng.uniform(0.3, 1.0) * shaped_noise(rng, band(f, 150, 7500, 1.0) * bump(f, centre, 1.0, 6.0), n)
        params |= {"blades": blades, "blade_pass_hz": blades * f0}
    return x, kind, params


def _gear(rng: np.random.Generator, n: int) -> Layer:
    """Gear meshes: mesh harmonics with sidebands at the shaft rate, sometimes a second stage."""
    f = freqs(n)
    teeth = int(rng.integers(9, 81))
    while teeth == GEARBOX_TEETH:
        teeth = int(rng.integers(9, 81))
    mesh = _log_uniform(rng, max(120.0, 3.0 * teeth), min(4000.0, 60.0 * teeth))
    inst = speed(rng, n, mesh / teeth, rng.uniform(0.001, 0.02), rng.uniform(0.0, 0.006))
    ph, top = phase(inst), float(inst.max())
    count = int(rng.integers(2, 6))
    mesh_amps = 10 ** (-rng.uniform(3, 10) * np.arange(count) / 20)
    x = harmonics(rng, teeth * ph, teeth * top, mesh_amps)
    pairs, depth = int(rng.integers(1, 5)), rng.uniform(0.02, 0.3)  # sidebands: shaft-rate modulation of the mesh
    sides = [(h, s) for h in range(1, count + 1) for s in range(-pairs, pairs + 1) if s]
    side_amps = [depth * mesh_amps[h - 1] / abs(s) for h, s in sides]
    x += harmonics(rng, ph, top, side_amps, [teeth * h + s for h, s in sides])
    stages = 1
    if rng.random() < 0.5:  # a second stage: another shaft rate and tooth count
        teeth2 = int(rng.integers(9, 81))
        while teeth2 == GEARBOX_TEETH:
            teeth2 = int(rng.integers(9, 81))
        ratio = rng.uniform(0.2, 0.8)
        x += rng.uniform(0.2, 0.8) * harmonics(rng, teeth2 * ratio * ph, teeth2 * ratio * top, mesh_amps[:3])
        stages = 2
    noise_centre = _log_uniform(rng, 500, 3000)
    x += rng.uniform(0.1, 0.5) * shaped_noise(rng, band(f, 200, 6000, 1.5) * bump(f, noise_centre, 0.7, 5.0), n)
    return x, "mesh", {"teeth": teeth, "shaft_hz": mesh / teeth, "mesh_hz": mesh, "sideband_pairs": pairs,
                       "stages": stages}  # fmt: skip


_IMPACT_KINDS = {  # rate per s, first resonance Hz, decay s, modes, period jitter (ranges)
    "press": ((0.3, 2.0), (60.0, 500.0), (0.02, 0.2), (2, 4), (0.005, 0.05)),
    "hammer": ((1.0, 12.0), (300.0, 3000.0), (0.005, 0.05), (1, 4), (0.01, 0.1)),
    "conveyor": ((3.0, 30.0), (500.0, 5000.0), (0.002, 0.02), (1, 3), (0.05, 0.3)),
    "clicks": ((5.0, 60.0), (1500.0, 7000.0), (0.0005, 0.004), (1, 3), (0.01, 0.2)),
}


def _impact(rng: np.random.Generator, n: int) -> Layer:
    """Impact trains: presses, hammers, conveyors, ticking clicks (multi-mode resonances, contact noise)."""
    f, seconds = freqs(n), n / SAMPLE_RATE
    kind = _pick(rng, tuple(_IMPACT_KINDS))
    rates, resonances, decays, modes, jitters = _IMPACT_KINDS[kind]
    rate, base = _log_uniform(rng, *rates), _log_uniform(rng, *resonances)
    decay, count, jitter = _log_uniform(rng, *decays), int(rng.integers(modes[0], modes[1])), rng.uniform(*jitters)
    times = _inside(rng, pulse_times(rng, rate, seconds, jitter), seconds)
    x = _impacts(rng, n, times, base, decay, count)
    if kind == "press":  # a heavy stroke also shakes the floor: a low thump under each hit
        x += rng.uniform(0.3, 1.0) * _decays(n, times, 1.0, 0.05) * shaped_noise(rng, band(f, 20, 150, 2.0), n)
    return x, kind, {"rate_hz": rate, "resonance_hz": base, "decay_ms": 1000 * decay, "modes": count,
                     "jitter": jitter}  # fmt: skip


def _flow(rng: np.random.Generator, n: int) -> Layer:
    """Flow and air noise: fan noise, ducts with standing waves, hiss, bursts of air; turbulent level."""
    f = freqs(n)
    kind = _pick(rng, ("fan_noise", "duct", "hiss", "air_bursts"))
    if kind == "fan_noise":
        centre, slope = _log_uniform(rng, 150, 3000), rng.uniform(-4.0, -1.0)
        gain = band(f, rng.uniform(40, 200), rng.uniform(3000, 7800), 1.0) * tilt(f, slope)
        x = shaped_noise(rng, gain * bump(f, centre, rng.uniform(0.4, 1.5), rng.uniform(3, 12)), n)
        params: Params = {"centre_hz": centre, "tilt_db_oct": slope}
    elif kind == "duct":
        fd, count = _log_uniform(rng, 40, 300), int(rng.integers(2, 8))
        gain = tilt(f, -3.0) * band(f, 30, 7000, 1.0)
        for k in range(1, count + 1):
            gain = gain * bump(f, k * fd, rng.uniform(0.05, 0.15), rng.uniform(4, 12) / k**0.5)
        x = shaped_noise(rng, gain, n)
        params = {"standing_wave_hz": fd, "modes": count}
    elif kind == "hiss":
        lo = _log_uniform(rng, 1500, 5000)
        x = shaped_noise(rng, band(f, lo, rng.uniform(6000, 7800), 2.0), n)
        params = {"low_edge_hz": lo}
    else:
        rate, length = _log_uniform(rng, 0.3, 4.0), _log_uniform(rng, 0.05, 0.6)
        centre = _log_uniform(rng, 800, 5000)
        air = shaped_noise(rng, band(f, 300, 7800, 1.0) * bump(f, centre, 1.0, 8.0), n)
        x = (bursts(rng, n, rate, length) + rng.uniform(0.0, 0.05)) * air
        params = {"burst_rate_hz": rate, "burst_s": length, "centre_hz": centre}
    turbulence = rng.uniform(0.0, 0.4)
    return x * _wobble(rng, n, rng.uniform(0.5, 8.0), turbulence), kind, params | {"turbulence": turbulence}


def _electrical(rng: np.random.Generator, n: int) -> Layer:
    """Electrical hum and whine: mains hum, rectifier buzz, coil whine, inverter carriers."""
    t = np.arange(n) / SAMPLE_RATE
    kind = _pick(rng, ("hum", "buzz", "whine", "inverter"))
    mains = (50.0 if rng.random() < 0.5 else 60.0) * (1 + 0.002 * rng.standard_normal())
    ph = phase(speed(rng, n, mains, 0.0005, 0.0))
    if kind == "hum":  # magnetostriction: twice the mains frequency and its harmonics lead
        count = int(rng.integers(4, 13))
        amps = 10 ** (-rng.uniform(2, 8) * np.arange(count) / 20) * np.where(np.arange(1, count + 1) % 2, 0.2, 1.0)
        x = harmonics(rng, ph, mains, amps * 10 ** (rng.normal(0, 3.0, count) / 20))
        params: Params = {"mains_hz": mains, "harmonics": count}
    elif kind == "buzz":
        power = rng.uniform(0.3, 1.2)
        x = harmonics(rng, 2 * ph, 2 * mains, (1.0 / np.arange(1, 41)) ** power)
        times = pulse_times(rng, 2 * mains, n / SAMPLE_RATE, 0.002)
        x += rng.uniform(0.3, 2.0) * ring(n, times, 1.0, _log_uniform(rng, 500, 4000), 0.001)
        params = {"mains_hz": mains, "rolloff": power}
    elif kind == "whine":
        tone = _log_uniform(rng, 1000, 7000)
        inst = speed(rng, n, tone, rng.uniform(0.002, 0.02), rng.uniform(0.0, 0.003))
        x = harmonics(rng, phase(inst), float(inst.max()), [1.0, rng.uniform(0.0, 0.3)])
        x *= _wobble(rng, n, rng.uniform(0.5, 4.0), rng.uniform(0.0, 0.5))
        params = {"tone_hz": tone}
    else:  # a PWM inverter: a carrier frequency-modulated at the motor's output frequency
        carrier, out_hz, index = _log_uniform(rng, 1500, 7000), rng.uniform(5, 100), rng.uniform(0.5, 3.0)
        x = np.sin(TWO_PI * carrier * t + index * np.sin(TWO_PI * out_hz * t) + rng.uniform(0, TWO_PI))
        x += rng.uniform(0.05, 0.5) * np.sin(TWO_PI * 6 * out_hz * t)  # torque ripple
        params = {"carrier_hz": carrier, "output_hz": out_hz, "fm_index": index}
    return x, kind, params


def _cycle(rng: np.random.Generator, n: int) -> Layer:
    """On/off cycles: solenoid valves, pneumatic valves, motorised actuators (clunks at the switching edges)."""
    f = freqs(n)
    kind = _pick(rng, ("solenoid", "pneumatic", "actuator"))
    period, duty = _log_uniform(rng, 0.25, 4.0), rng.uniform(0.15, 0.85)
    ramp = _log_uniform(rng, *{"solenoid": (0.002, 0.01), "pneumatic": (0.01, 0.08), "actuator": (0.05, 0.4)}[kind])
    ramp = min(ramp, 0.3 * duty * period, 0.3 * (1 - duty) * period)
    offset = rng.uniform(0, period)
    opens, closes = gate_edges(n, period, duty, offset)
    if not len(opens) and not len(closes):  # a slow cycle would leave the clip silent: switch on inside it
        offset = -rng.uniform(0.0, 0.8 * n / SAMPLE_RATE) % period
        opens, closes = gate_edges(n, period, duty, offset)
    on = gate(n, period, duty, offset, ramp)
    clunk, decay = _log_uniform(rng, 300, 6000), _log_uniform(rng, 0.002, 0.03)
    x = _impacts(rng, n, opens, clunk, decay, int(rng.integers(1, 4))) if len(opens) else np.zeros(n)
    if len(closes):
        x += rng.uniform(0.5, 1.5) * _impacts(rng, n, closes, clunk * rng.uniform(0.6, 1.4), decay, 2)
    params: Params = {"period_s": period, "duty": duty, "ramp_s": ramp, "clunk_hz": clunk}
    if kind == "solenoid":  # the coil buzzes while it holds
        mains = 50.0 if rng.random() < 0.5 else 60.0
        x += rng.uniform(0.02, 0.2) * on * harmonics(rng, phase(np.full(n, 2 * mains)), 2 * mains, [1.0, 0.5, 0.3])
    elif kind == "pneumatic":  # air flows while open, and the exhaust blows when it shuts
        air = shaped_noise(rng, band(f, _log_uniform(rng, 800, 3000), 7800, 1.5), n)
        x += rng.uniform(0.1, 0.6) * on * air
        if len(closes):
            x += rng.uniform(0.5, 2.0) * _decays(n, closes, 1.0, rng.uniform(0.03, 0.2)) * air
    else:  # an actuator: a motor whose speed follows the stroke
        f0 = _log_uniform(rng, 60, 600)
        while abs(f0 * period / _SLIDER_TURNS_PER_STROKE - 1.0) < 0.3 and abs(duty - 0.6) < 0.15:
            f0 = _log_uniform(rng, 60, 600)
        inst = speed(rng, n, f0, rng.uniform(0.002, 0.02)) * (0.2 + 0.8 * on)
        count = int(rng.integers(3, 10))
        amps = 10 ** ((-rng.uniform(1, 4) * np.arange(count) + rng.normal(0, 4, count)) / 20)
        x += rng.uniform(0.2, 1.0) * (0.05 + on) * harmonics(rng, phase(inst), float(inst.max()), amps)
        params["motor_hz"] = f0
    return x, kind, params


def _rolling(rng: np.random.Generator, n: int) -> Layer:
    """Rolling and friction: wheels and rollers, belts, sliding contact with stick-slip."""
    f, t, seconds = freqs(n), np.arange(n) / SAMPLE_RATE, n / SAMPLE_RATE
    kind = _pick(rng, ("wheels", "belt", "sliding"))
    if kind == "wheels":
        lo, hi, wheel = rng.uniform(40, 200), _log_uniform(rng, 800, 3000), _log_uniform(rng, 0.5, 25)
        depth = rng.uniform(0.0, 0.6)
        roughness = bump(f, _log_uniform(rng, 150, 1500), rng.uniform(0.3, 1.0), rng.uniform(0, 10))
        x = shaped_noise(rng, band(f, lo, hi, 1.5) * roughness, n)
        x *= 1.0 + depth * np.sin(TWO_PI * wheel * t + rng.uniform(0, TWO_PI))
        params: Params = {"wheel_hz": wheel, "band_hz": f"{lo:.0f}-{hi:.0f}", "modulation": depth}
    elif kind == "belt":
        belt = _log_uniform(rng, 0.5, 8.0)
        slaps = _inside(rng, pulse_times(rng, belt, seconds, 0.02), seconds)
        x = _impacts(rng, n, slaps, _log_uniform(rng, 100, 600), rng.uniform(0.01, 0.05), 2)
        flap = shaped_noise(rng, band(f, 100, 2500, 1.5), n)
        x += rng.uniform(0.3, 1.5) * (1.0 + 0.5 * np.sin(TWO_PI * belt * 2 * t)) * flap
        params = {"belt_pass_hz": belt}
    else:  # stick-slip: a rough stream of tiny releases over the sliding noise
        lo, slip = _log_uniform(rng, 800, 3000), _log_uniform(rng, 20, 200)
        x = shaped_noise(rng, band(f, lo, rng.uniform(4000, 7800), 1.5), n)
        x *= _wobble(rng, n, rng.uniform(2, 20), rng.uniform(0.1, 0.6))
        releases = _inside(rng, pulse_times(rng, slip, seconds, rng.uniform(0.2, 0.5)), seconds)
        strengths, f_slip = rng.uniform(0.3, 1.0, len(releases)), _log_uniform(rng, 1000, 4000)
        x += rng.uniform(0.2, 1.0) * ring(n, releases, strengths, f_slip, 0.001)
        params = {"low_edge_hz": lo, "slip_rate_hz": slip}
    return x, kind, params


def _ambient(rng: np.random.Generator, n: int, kind: str | None = None) -> Layer:
    """Factory and ambient backgrounds: pink or brown noise, distant machinery, reverberant rumble."""
    f, seconds = freqs(n), n / SAMPLE_RATE
    kind = kind or _pick(rng, AMBIENT_KINDS)
    if kind in ("pink", "brown"):
        slope = (-3.0 if kind == "pink" else -6.0) + rng.uniform(-1.0, 1.0)
        return shaped_noise(rng, tilt(f, slope) * band(f, 20, 7800, 1.0), n), kind, {"tilt_db_oct": slope}
    if kind == "distant":  # machinery heard through walls: low tones and dull thuds in a hall
        f0 = _log_uniform(rng, 20, 150)
        x = harmonics(rng, phase(speed(rng, n, f0, 0.005)), f0, rng.uniform(0.1, 1.0, int(rng.integers(3, 9))))
        if rng.random() < 0.5:
            thuds = _inside(rng, pulse_times(rng, _log_uniform(rng, 0.2, 3.0), seconds, 0.1), seconds)
            x += rng.uniform(0.5, 2.0) * ring(n, thuds, 1.0, _log_uniform(rng, 60, 300), 0.05)
        x = apply_filter(x, band(f, 20, _log_uniform(rng, 300, 1500), 2.0))
        x = _unit(x) + rng.uniform(0.1, 0.5) * shaped_noise(rng, tilt(f, -3.0), n)
        return _reverb(rng, x, rng.uniform(0.5, 2.0), rng.uniform(0.5, 0.9)), kind, {"f0_hz": f0}
    centre = _log_uniform(rng, 30, 200)
    gain = tilt(f, -6.0) * band(f, 15, 800, 1.5) * bump(f, centre, rng.uniform(0.6, 1.5), rng.uniform(6, 15))
    x = shaped_noise(rng, gain, n) * _wobble(rng, n, rng.uniform(0.3, 3.0), rng.uniform(0.1, 0.4))
    return _reverb(rng, x, rng.uniform(0.8, 2.5), rng.uniform(0.4, 0.8)), kind, {"centre_hz": centre}


_RENDER: dict[str, Callable[[np.random.Generator, int], Layer]] = {
    "rotating": _rotating,
    "gear": _gear,
    "impact": _impact,
    "flow": _flow,
    "electrical": _electrical,
    "cycle": _cycle,
    "rolling": _rolling,
    "ambient": _ambient,
}


def _event(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """A fault-like event: random knocks, rubbing bursts or a tonal squeal."""
    f, seconds = freqs(n), n / SAMPLE_RATE
    if kind == "knock":
        count = rng.poisson(_log_uniform(rng, 0.5, 6.0) * seconds)
        times = _inside(rng, np.sort(rng.uniform(0, seconds, count)), seconds)
        x = _impacts(rng, n, times, _log_uniform(rng, 300, 5000), _log_uniform(rng, 0.003, 0.03), 2)
    elif kind == "rub":
        env = bursts(rng, n, _log_uniform(rng, 1.0, 8.0), _log_uniform(rng, 0.05, 0.4))
        x = env * shaped_noise(rng, band(f, _log_uniform(rng, 1500, 4000), 7800, 2.0), n)
    else:
        env = bursts(rng, n, _log_uniform(rng, 0.5, 4.0), _log_uniform(rng, 0.1, 0.5))
        inst = speed(rng, n, _log_uniform(rng, 1000, 6000), rng.uniform(0.01, 0.05))
        x = env * harmonics(rng, phase(inst), float(inst.max()), [1.0, rng.uniform(0.0, 0.3)])
    return x


# --------------------------------------------------------------------------------------------------
# One clip


def _clip_rngs(seed: int, index: int) -> list[np.random.Generator]:
    """The clip's generators: one for its plan, one per layer and stage (a layer's draws never shift another's)."""
    children = np.random.SeedSequence([seed, _STREAM, index]).spawn(7)
    return [np.random.default_rng(child) for child in children]


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if len(x) else 0.0


def render_corpus_clip(seed: int, index: int, seconds: float) -> tuple[np.ndarray, dict[str, str]]:
    """Return one corpus clip as int16 samples and its csv row (deterministic in seed and index).

    The plan (families, event, room, levels) is drawn first from its own generator, so it does not
    depend on the clip length either.
    """
    plan, main_rng, extra_rng, event_rng, room_rng, background_rng, mic_rng = _clip_rngs(seed, index)
    n = int(round(seconds * SAMPLE_RATE))
    family = _pick(plan, FAMILIES)
    others = [fam for fam in FAMILIES if fam not in (family, "ambient")]  # every clip has a background anyway
    extra = int(plan.choice(len(_EXTRA_LAYERS), p=_EXTRA_LAYERS))
    layers = [family] + [others[j] for j in plan.permutation(len(others))[:extra]]
    layer_db = plan.uniform(-15.0, -3.0, len(layers) - 1)
    event = _pick(plan, EVENTS) if plan.random() < _EVENT_PROBABILITY else "none"
    event_db = plan.uniform(-14.0, 0.0)
    room = plan.random() < _ROOM_PROBABILITY
    background_kind = _pick(plan, AMBIENT_KINDS)
    snr_db, level_dbfs = plan.uniform(8.0, 35.0), plan.uniform(-36.0, -18.0)

    x, kind, params = _RENDER[family](main_rng, n)
    x = _unit(x)
    for other, db in zip(layers[1:], layer_db):
        x += 10 ** (db / 20) * _unit(_RENDER[other](extra_rng, n)[0])
    if event != "none":  # sized by its peak: a sparse event at unit RMS would be deafening
        burst = _event(event_rng, n, event)
        x += 10 ** (event_db / 20) * _peak(x) / max(_peak(burst), 1e-12) * burst
    if room:
        x = _reverb(room_rng, x, room_rng.uniform(0.15, 1.2), room_rng.uniform(0.1, 0.5))
    background = _ambient(background_rng, n, background_kind)[0]
    x += 10 ** (-snr_db / 20) * (_rms(x) or 1.0) * _unit(background)
    f = freqs(n)  # the microphone: a tilt, a few resonances, its low and high roll-offs
    mic = tilt(f, mic_rng.uniform(-2.0, 1.5)) * band(f, mic_rng.uniform(20, 150), mic_rng.uniform(5000, 8000), 1.0)
    for _ in range(int(mic_rng.integers(0, 4))):
        mic = mic * bump(f, _log_uniform(mic_rng, 150, 6000), mic_rng.uniform(0.2, 1.2), mic_rng.uniform(-10, 10))
    x = apply_filter(x, mic)
    # a random recording level, but never above -1 dBFS: no clip is clipped or limited
    x *= min(10 ** (level_dbfs / 20) / max(_rms(x), 1e-12), 0.89 / max(_peak(x), 1e-12))
    wave = np.round(x * 32767.0).astype(np.int16)
    row = {
        "family": family,
        "kind": kind,
        "layers": "+".join(layers),
        "background": background_kind,
        "event": event,
        "rms_dbfs": f"{20 * np.log10(max(_rms(wave / 32768.0), 1e-10)):.1f}",
        "params": ";".join(f"{k}={_text(v)}" for k, v in params.items()),
    }
    return wave, row


def _text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------------
# Writing


def clip_name(index: int) -> str:
    """Return the file name of corpus clip `index`: corpus_<five digits>.wav."""
    return f"corpus_{index:05d}.wav"


def is_corpus_entry(name: str) -> bool:
    """True for the names `write_corpus` writes into its folder."""
    return name == CSV_NAME or _CLIP_NAME.fullmatch(name) is not None


def _listed_clips(out: Path) -> set[str]:
    """Return the clips the corpus.csv of a folder lists (empty when it is no corpus.csv of ours)."""
    import csv

    from asdtool.core.outputs import first_line

    path = out / CSV_NAME
    try:
        if not path.is_file() or first_line(path) != ",".join(CSV_COLUMNS) or path.stat().st_size > 100_000_000:
            return set()
        with open(path, newline="", encoding="utf-8") as f:
            return {row["file"] for row in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, KeyError, csv.Error):
        return set()


def check_corpus_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is not a folder, or holds anything but a corpus of ours (corpus.csv and the clips it lists)."""
    from asdtool.core.outputs import TMP_PREFIX

    if out.exists() and not out.is_dir():
        raise AsdError("exists and is not a folder; refusing to replace it (choose another output)", out)
    if not out.exists():
        return
    entries = [p.name for p in out.iterdir() if p.name != ".gitignore" and not p.name.startswith(TMP_PREFIX)]
    clips = _listed_clips(out)
    listed = clips | {CSV_NAME} if clips else set()
    strangers = [name for name in entries if name not in listed or not is_corpus_entry(name)]
    if strangers:
        raise AsdError(f"is not a corpus folder (holds {few(strangers, 1)}); refusing to replace it", out)
    if entries and not overwrite:
        raise AsdError("already holds a corpus; refusing to overwrite without --overwrite", out)


def write_corpus(
    out: Path,
    seed: int,
    clips: int,
    seconds: float,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> CorpusSummary:
    """Write `clips` corpus clips and corpus.csv under `out` and return what was written.

    Everything is written into a temporary folder beside `out` and renamed onto it when complete.
    An existing corpus is replaced only with `overwrite=True`; a folder holding anything else is
    refused. `progress(done, total)` is called before the first clip and after every clip.
    """
    out = Path(out)
    if seed < 0:
        raise AsdError(f"seed must be 0 or more, got {seed}", out)
    if not 1 <= clips <= MAX_CLIPS:
        raise AsdError(f"clip count must lie between 1 and {MAX_CLIPS}, got {clips}", out)
    if not 0.1 <= seconds <= 600:
        raise AsdError(f"clip length must lie between 0.1 and 600 seconds, got {seconds}", out)
    check_corpus_out(out, overwrite)

    if progress:
        progress(0, clips)
    rows = []
    with atomic_dir(out) as staging:
        for index in range(clips):
            wave, row = render_corpus_clip(seed, index, seconds)
            name = clip_name(index)
            sf.write(staging / name, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            rows.append({"file": name, **row})
            if progress:
                progress(index + 1, clips)
        with open(staging / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if (out / ".gitignore").is_file():  # DVC's, if any: it belongs to the folder, not to the corpus
            shutil.copy2(out / ".gitignore", staging / ".gitignore")

    main = Counter(r["family"] for r in rows)
    further = Counter(fam for r in rows for fam in r["layers"].split("+")[1:])
    return CorpusSummary(
        out=out,
        seed=seed,
        clips=clips,
        seconds=seconds,
        families={fam: main[fam] for fam in FAMILIES},
        mixed_in={fam: further[fam] for fam in FAMILIES},
        mixed=sum("+" in r["layers"] for r in rows),
        events=sum(r["event"] != "none" for r in rows),
    )
