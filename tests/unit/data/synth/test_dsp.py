"""asdtool.data.synth.dsp: the signal primitives give the responses, frequencies and envelopes they promise."""

from __future__ import annotations

import numpy as np
import pytest

from asdtool.data.synth import dsp

SR = 16000


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(dsp.freqs(len(x))[np.argmax(spectrum)])


def test_freqs_is_the_rfft_grid():
    f = dsp.freqs(16000)
    assert len(f) == 8001 and f[0] == 0.0 and f[-1] == 8000.0
    assert np.allclose(np.diff(f), 1.0)


def test_band_passes_its_band_and_stops_far_outside():
    f = dsp.freqs(SR)
    gain = dsp.band(f, 100.0, 4000.0)
    assert np.all(gain[(f >= 300) & (f <= 1300)] > 0.99)
    assert gain[100] == pytest.approx(1 / np.sqrt(2), abs=1e-3)  # -3 dB at the edges
    assert gain[4000] == pytest.approx(1 / np.sqrt(2), abs=1e-3)
    assert gain[10] < 0.0101  # a decade outside: 40 dB down at order 2
    narrow = dsp.band(f, 100.0, 700.0)
    assert narrow[7000] < 0.0101
    assert dsp.band(f, 100.0, 700.0, order=4)[7000] < 1.01e-4  # order 4: 80 dB down


def test_tilt_and_bump_levels():
    f = np.array([1000.0, 2000.0, 4000.0])
    pink = 20 * np.log10(dsp.tilt(f, -3.0))
    assert pink == pytest.approx([0.0, -3.0, -6.0], abs=1e-3)
    assert 20 * np.log10(dsp.tilt(np.array([500.0]), -6.0))[0] == pytest.approx(6.0, abs=1e-3)
    bump = dsp.bump(np.array([1000.0, 2000.0, 7000.0]), 1000.0, 0.5, 6.0)
    assert 20 * np.log10(bump[0]) == pytest.approx(6.0)
    assert 20 * np.log10(bump[1]) == pytest.approx(6.0 * np.exp(-2.0))  # two widths away
    assert bump[2] == pytest.approx(1.0, abs=1e-3)


def test_shaped_noise_is_unit_rms_and_follows_its_gain():
    rng = np.random.default_rng(0)
    f = dsp.freqs(SR)
    gain = ((f > 1000) & (f < 2000)).astype(float)
    x = dsp.shaped_noise(rng, gain, SR)
    assert x.std() == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(x)) ** 2
    assert power[gain == 0].sum() < 1e-12 * power.sum()


def test_apply_filter_scales_a_tone_by_its_gain_without_moving_it():
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 1000 * t)
    gain = np.where(dsp.freqs(SR) > 1500, 1.0, 0.25)
    assert np.allclose(dsp.apply_filter(tone, gain), 0.25 * tone)
    assert np.allclose(dsp.apply_filter(tone, np.ones(SR // 2 + 1)), tone)


def test_speed_wanders_around_f0_and_phase_integrates_it():
    inst = dsp.speed(np.random.default_rng(1), SR, 50.0)
    assert inst.mean() == pytest.approx(50.0, rel=0.02)
    assert np.all(np.abs(inst / 50.0 - 1) < 0.05)
    ph = dsp.phase(np.full(SR, 50.0))
    assert np.allclose(np.diff(ph), 2 * np.pi * 50.0 / SR)
    assert ph[-1] == pytest.approx(2 * np.pi * 50.0)  # 50 turns in one second


def test_harmonics_peak_at_the_fundamental_asked_for():
    f0 = 220.0
    ph = dsp.phase(np.full(2 * SR, f0))
    x = dsp.harmonics(np.random.default_rng(2), ph, f0, [1.0, 0.5, 0.25])
    assert peak_hz(x) == pytest.approx(f0, abs=1.0)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = dsp.freqs(len(x))
    assert spectrum[np.argmin(np.abs(f - 2 * f0))] == pytest.approx(0.5 * spectrum.max(), rel=0.02)
    assert spectrum[np.argmin(np.abs(f - 4 * f0))] < 1e-6 * spectrum.max()  # no fourth harmonic asked for


def test_harmonics_integer_path_equals_the_sum_of_sines():
    ph = dsp.phase(dsp.speed(np.random.default_rng(3), SR // 4, 97.0))
    amps = [0.7, 0.0, 0.3, 0.2]
    fast = dsp.harmonics(np.random.default_rng(4), ph, 97.0, amps)
    plain = dsp.harmonics(np.random.default_rng(4), ph, 97.0, amps, orders=[1, 2, 3, 4])
    assert np.allclose(fast, plain, atol=1e-9)


def test_harmonics_leave_out_what_lies_above_the_nyquist_guard():
    f0 = 0.6 * dsp.NYQUIST_GUARD  # the second harmonic would lie above the guard
    ph = dsp.phase(np.full(SR, f0))
    assert np.all(dsp.harmonics(np.random.default_rng(5), ph, f0, [0.0, 1.0]) == 0.0)
    assert np.all(dsp.harmonics(np.random.default_rng(5), ph, f0, [1.0], orders=[2.0]) == 0.0)
    assert peak_hz(dsp.harmonics(np.random.default_rng(5), ph, f0, [1.0, 1.0])) == pytest.approx(f0, abs=1.0)


def test_vary_spreads_levels_by_the_db_asked_for():
    amps = np.ones(20000)
    assert np.array_equal(dsp.vary(np.random.default_rng(6), amps, 0.0), amps)
    varied = dsp.vary(np.random.default_rng(6), amps, 2.0)
    assert (20 * np.log10(varied)).std() == pytest.approx(2.0, rel=0.03)


def test_pulse_times_keep_the_rate_and_cover_the_clip():
    times = dsp.pulse_times(np.random.default_rng(7), 10.0, 3.0, jitter=0.02)
    assert len(times) == 32 and 0.0 <= times[0] < 0.1 and times[-1] > 3.0
    assert np.diff(times).mean() == pytest.approx(0.1, rel=0.01)


def test_impulses_land_on_the_nearest_samples_and_add_up():
    x = dsp.impulses(100, np.array([0.0, 10.2 / SR, 10.4 / SR, -1.0, 100 / SR]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x[0] == 1.0 and x[10] == 5.0  # two impacts on one sample add
    assert x.sum() == 6.0  # the two outside the clip are dropped
    assert np.array_equal(dsp.impulses(4, np.array([0.0, 2 / SR]), 0.5), [0.5, 0.0, 0.5, 0.0])


def test_ring_resonates_at_its_frequency_and_decays():
    x = dsp.ring(SR, np.array([0.1]), 1.0, 1500.0, 0.01)
    onset = int(0.1 * SR)
    assert np.all(x[:onset] == 0.0) and x[onset] != 0.0
    assert peak_hz(x) == pytest.approx(1500.0, abs=15.0)
    env = lambda a, b: np.abs(x[onset + int(a * SR) : onset + int(b * SR)]).max()  # noqa: E731
    assert env(0.01, 0.02) / env(0.0, 0.01) == pytest.approx(np.exp(-1.0), rel=0.1)  # one decay time later
    assert peak_hz(dsp.ring(SR, np.array([0.1]), 1.0, 9000.0, 0.01)) == pytest.approx(dsp.NYQUIST_GUARD, abs=15.0)
    assert np.all(dsp.ring(SR, np.array([-1.0, 2.0]), 1.0, 1500.0, 0.01) == 0.0)  # impacts outside the clip


def test_bursts_stay_within_zero_and_one_and_respect_the_gate():
    env = dsp.bursts(np.random.default_rng(8), SR, 6.0, 0.1)
    assert env.min() >= 0.0 and env.max() <= 1.0 and env.max() > 0.5
    closed = dsp.bursts(np.random.default_rng(8), SR, 6.0, 0.1, gate=np.zeros(SR))
    assert np.all(closed == 0.0)


@pytest.mark.parametrize("duty", [0.2, 0.5, 0.8])
def test_gate_is_on_for_the_duty_fraction_asked_for(duty):
    g = dsp.gate(10 * SR, 0.5, duty, 0.13, 1e-4)
    assert g.min() == 0.0 and g.max() == 1.0
    assert g.mean() == pytest.approx(duty, abs=0.005)


def test_gate_edges_are_where_the_gate_switches():
    period, duty, offset = 0.4, 0.3, 0.05
    g = dsp.gate(2 * SR, period, duty, offset, 1e-4)
    starts, ends = dsp.gate_edges(2 * SR, period, duty, offset)
    assert np.allclose(np.diff(starts), period) and np.allclose(np.diff(ends), period)
    assert len(starts) == len(ends) == 5
    for t in starts:
        assert g[int(t * SR) - 2] == 0.0 and g[int(t * SR) + 4] == 1.0
    for t in ends:
        assert g[int(t * SR) - 4] == 1.0 and g[int(t * SR) + 2] == 0.0


def test_random_sign_is_plus_or_minus_one_at_even_odds():
    rng = np.random.default_rng(9)
    signs = np.array([dsp.random_sign(rng) for _ in range(4000)])
    assert set(signs) == {-1.0, 1.0}
    assert signs.mean() == pytest.approx(0.0, abs=0.05)


def test_soft_limit_is_identity_below_the_knee_and_never_reaches_full_scale():
    quiet = np.linspace(-0.8, 0.8, 1001)
    assert np.array_equal(dsp.soft_limit(quiet), quiet)
    loud = np.linspace(-50.0, 50.0, 10001)
    limited = dsp.soft_limit(loud)
    assert np.abs(limited).max() <= 1.0 and np.all(np.diff(limited) >= 0)  # bounded, still monotone
    assert dsp.soft_limit(np.array([0.9]))[0] == pytest.approx(0.8 + 0.2 * np.tanh(0.5))
    assert np.abs(dsp.soft_limit(np.array([0.5]), knee=0.4)[0]) < 0.5
    assert loud[-1] == 50.0  # the input is left as it was


def test_to_pcm16_scales_and_clips():
    pcm = dsp.to_pcm16(np.array([0.0, 0.25, -0.5, 0.8, 5.0, -5.0, 1e6]))
    assert pcm.dtype == np.int16
    assert list(pcm[:4]) == [0, 8192, -16384, 26214]  # identity below the knee: x * 32767, rounded
    assert 26214 < pcm[4] <= 32767 and -32767 <= pcm[5] < -26214 and pcm[6] == 32767
