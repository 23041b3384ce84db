import csv
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from asdtool.cli import app
from asdtool.data.synth import corpus, dev as synth
from asdtool.data.synth.corpus import CSV_COLUMNS, EVENTS, FAMILIES, render_corpus_clip, write_corpus
from asdtool.core.errors import AsdError

from tests.conftest import HANG_SECONDS

SECONDS = 0.5
COUNT = 300  # enough for every family, sub-kind and event to show up


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "corpus.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def params(row: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in row["params"].split(";"))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    summary = write_corpus(out, seed=0, clips=COUNT, seconds=SECONDS)
    assert summary.out == out and summary.clips == COUNT and sum(summary.families.values()) == COUNT
    return out


def test_files_and_csv(big):
    names = sorted(p.name for p in big.iterdir())
    assert names == sorted([f"corpus_{i:05d}.wav" for i in range(COUNT)] + ["corpus.csv"])
    for path in sorted(big.glob("*.wav"))[::37]:
        info = sf.info(path)
        fields = (info.format, info.subtype, info.samplerate, info.channels, info.frames)
        assert fields == ("WAV", "PCM_16", 16000, 1, 8000)
    rows = read_rows(big)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["file"] for r in rows] == [f"corpus_{i:05d}.wav" for i in range(COUNT)]
    for row in rows:
        layers = row["layers"].split("+")
        assert layers[0] == row["family"] and len(set(layers)) == len(layers) <= 3
        assert set(layers) <= set(FAMILIES) and "ambient" not in layers[1:]
        assert row["event"] in EVENTS + ("none",) and row["background"] in corpus.AMBIENT_KINDS
        assert params(row)  # every family names its main parameters
    # the csv level is the file's level
    wave, _ = sf.read(big / rows[5]["file"])
    assert abs(20 * np.log10(np.sqrt(np.mean(wave**2))) - float(rows[5]["rms_dbfs"])) < 0.06


def test_clips_are_neither_silent_nor_clipped(big):
    levels = []
    for path in sorted(big.glob("*.wav")):
        wave, _ = sf.read(path, dtype="int16")
        peak, rms = int(np.abs(wave.astype(int)).max()), np.sqrt(np.mean(wave.astype(float) ** 2))
        assert peak <= 0.9 * 32767, path.name  # the level never goes above -1 dBFS
        assert rms > 0.004 * 32767, path.name  # above -48 dBFS
        assert abs(wave.mean()) < 0.05 * rms, path.name  # no DC offset
        levels.append(20 * np.log10(rms / 32768))
    assert np.ptp(levels) > 12  # random recording levels


def test_families_kinds_and_events_all_appear(big):
    rows = read_rows(big)
    families = Counter(r["family"] for r in rows)
    assert set(families) == set(FAMILIES) and min(families.values()) >= COUNT / len(FAMILIES) / 2
    kinds = {(r["family"], r["kind"]) for r in rows}
    assert {k for f, k in kinds if f == "rotating"} == {"motor", "pump", "compressor", "turbine"}
    assert {k for f, k in kinds if f == "impact"} == {"press", "hammer", "conveyor", "clicks"}
    assert {k for f, k in kinds if f == "ambient"} == set(corpus.AMBIENT_KINDS)
    assert len(kinds) == 4 + 1 + 4 + 4 + 4 + 3 + 3 + 4
    events = Counter(r["event"] for r in rows)
    assert set(events) == set(EVENTS) | {"none"} and 0.08 < 1 - events["none"] / COUNT < 0.25
    mixed = sum("+" in r["layers"] for r in rows)
    assert 0.3 < mixed / COUNT < 0.6
    # parameters come from wide continuous ranges
    rates = [float(params(r)["f0_hz"]) for r in rows if r["family"] == "rotating"]
    assert max(rates) / min(rates) > 10 and len(set(rates)) > 0.9 * len(rates)


def test_same_seed_is_byte_identical_whatever_the_count(big, tmp_path):
    small = tmp_path / "small"
    write_corpus(small, seed=0, clips=7, seconds=SECONDS)
    reference = digests(big)
    assert all(reference[k] == v for k, v in digests(small).items() if k.endswith(".wav"))
    assert read_rows(small) == read_rows(big)[:7]
    again = tmp_path / "again"
    write_corpus(again, seed=0, clips=7, seconds=SECONDS)
    assert digests(again) == digests(small)
    wave, row = render_corpus_clip(0, 250, SECONDS)  # one clip alone, out of order
    assert wave.tobytes() == sf.read(big / "corpus_00250.wav", dtype="int16")[0].tobytes()
    assert {"file": "corpus_00250.wav", **row} == read_rows(big)[250]
    other = tmp_path / "other"
    write_corpus(other, seed=1, clips=7, seconds=SECONDS)
    assert all(a != b for (k, a), b in zip(digests(small).items(), digests(other).values()) if k.endswith(".wav"))


def test_plan_does_not_depend_on_clip_length():
    for index in range(20):
        short, long = render_corpus_clip(3, index, 0.25)[1], render_corpus_clip(3, index, 1.0)[1]
        assert [short[k] for k in ("family", "kind", "layers", "background", "event")] == [
            long[k] for k in ("family", "kind", "layers", "background", "event")
        ]


def test_overwrite_and_refusals(tmp_path):
    out = tmp_path / "corpus"
    write_corpus(out, seed=0, clips=4, seconds=0.25)
    before, listing = digests(out), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(AsdError, match="--overwrite") as info:
        write_corpus(out, seed=1, clips=4, seconds=0.25)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert digests(out) == before and sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing left behind
    write_corpus(out, seed=1, clips=2, seconds=0.25, overwrite=True)
    after = digests(out)
    assert sorted(after) == ["corpus.csv", "corpus_00000.wav", "corpus_00001.wav"]  # the old clips 2 and 3 are gone
    assert after["corpus_00000.wav"] != before["corpus_00000.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == listing

    other = tmp_path / "music"
    other.mkdir()
    (other / "song.wav").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(AsdError, match="not a corpus folder.*song.wav") as info:
            write_corpus(other, seed=0, clips=2, seconds=0.25, overwrite=overwrite)
        assert str(other) in str(info.value)
    assert [p.name for p in other.iterdir()] == ["song.wav"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(AsdError, match="not a folder"):
        write_corpus(afile, seed=0, clips=2, seconds=0.25)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_corpus(empty, seed=0, clips=1, seconds=0.25)  # an empty folder holds nothing to protect
    assert len(list(empty.iterdir())) == 2


def test_bad_arguments_and_failure_leave_nothing(tmp_path, monkeypatch):
    for kwargs, message in (
        ({"clips": 0}, "clip count"),
        ({"clips": 100_000}, "clip count"),
        ({"seconds": 0.05}, "clip length"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(AsdError, match=message):
            write_corpus(tmp_path / "c", **{"seed": 0, "clips": 2, "seconds": 0.25, **kwargs})
    calls = []

    def broken(seed, index, seconds):
        calls.append(index)
        if index == 3:
            raise RuntimeError("boom")
        return np.zeros(int(seconds * 16000), np.int16), {}

    monkeypatch.setattr(corpus, "render_corpus_clip", broken)
    with pytest.raises(RuntimeError):
        write_corpus(tmp_path / "c", seed=0, clips=6, seconds=0.25)
    assert calls == [0, 1, 2, 3] and list(tmp_path.iterdir()) == []


def test_progress(tmp_path):
    seen = []
    write_corpus(tmp_path / "c", seed=0, clips=3, seconds=0.25, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


# --------------------------------------------------------------------------------------------------
# The corpus holds no dev clip


def test_dev_renderers_are_never_called(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dev machine renderer was called")

    for name in ("_bearing", "_fan", "_gearbox", "_slider", "_toycar", "_toytrain", "_valve", "render_clip"):
        monkeypatch.setattr(synth, name, refuse)
    for machine, spec in synth.MACHINES.items():
        monkeypatch.setitem(synth.MACHINES, machine, synth.MachineSpec(**{**spec.__dict__, "render": refuse}))
    for index in range(60):
        render_corpus_clip(5, index, 0.25)


def test_generic_families_stay_off_the_dev_signatures(big):
    rows = read_rows(big)
    gears = [params(r) for r in rows if r["family"] == "gear"]
    assert gears and all(int(p["teeth"]) != synth.GEARBOX_TEETH for p in gears)
    pumps = [params(r) for r in rows if r["kind"] == "pump"]
    assert pumps and not any(corpus._near_dev_fan(int(p["vanes"]), float(p["f0_hz"])) for p in pumps)
    # the guards bite: a pump on a dev fan's blade count and rotation is recognised
    assert all(corpus._near_dev_fan(blades, rotation) for blades, rotation, _ in synth.FAN_MODELS.values())


def logmel_means(waves: list[np.ndarray], n_mels: int = 64) -> np.ndarray:
    """Time means of 64-band log-mel spectra (25 ms Hann frames, 10 ms hop), as rows."""
    f = np.fft.rfftfreq(512, 1 / 16000)
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(20), mel(7800), n_mels + 2) / 2595) - 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.clip(np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)), 0, None)
    rows = []
    for wave in waves:
        frames = np.lib.stride_tricks.sliding_window_view(wave.astype(float) / 32768, 400)[::160] * np.hanning(400)
        rows.append(np.log(np.abs(np.fft.rfft(frames, 512)) ** 2 @ bank.T + 1e-10).mean(0))
    return np.array(rows)


def shapes(features: np.ndarray) -> np.ndarray:
    """Level-free unit vectors: a clip's gain is not a different sound, so each clip's mean log level is removed."""
    x = features - features.mean(1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_no_corpus_clip_is_a_near_duplicate_of_a_dev_clip(big):
    """Corpus clips lie farther from the dev machines than dev clips lie from their own nearest neighbours.

    The dev set holds three normal clips of every machine type and attribute combination, so a dev
    clip's nearest neighbour is nearly always a sibling recording of the same machine in the same
    state: the median of those similarities is what a near-duplicate looks like. The dev machines are
    compared without their factory hall: its ventilation, 50 Hz neighbours and clatter are generic
    factory sound, which corpus backgrounds may resemble by design (a mains-hum corpus clip is as close
    to a quiet slider in that hall as the slider's siblings are). A positive control shows the criterion
    sees leaks: clips of the dev models rendered with another seed reach it about half the time, so a
    corpus holding even a few dev-model clips would fail this test.
    """
    dev, leaks = [], []
    for machine, spec in synth.MACHINES.items():
        sizes = synth.SynthSizes(SECONDS, 3 * len(spec.source), 3 * len(spec.target), 0)
        for clip in synth.plan_clips(machine, sizes):
            dev.append(synth.render_clip(clip, 0, SECONDS, hall=False))
            if clip.index < len(spec.source if clip.domain == "source" else spec.target):  # one per combination
                leaks.append(synth.render_clip(clip, 1, SECONDS, hall=False))
    ours = [sf.read(p, dtype="int16")[0] for p in sorted(big.glob("*.wav"))]
    d, leak, c = (shapes(logmel_means(w)) for w in (dev, leaks, ours))

    among = d @ d.T
    np.fill_diagonal(among, -np.inf)
    near_duplicate = np.median(among.max(1))
    assert near_duplicate > 0.95
    assert np.mean((leak @ d.T).max(1) >= near_duplicate) > 0.3  # the positive control
    nearest = (c @ d.T).max(1)
    assert nearest.max() < near_duplicate, (np.argmax(nearest), nearest.max(), near_duplicate)


# --------------------------------------------------------------------------------------------------
# Command line


def test_command(tmp_path):
    out = tmp_path / "c"
    args = ["corpus", "--out", str(out), "--clips", "5", "--seconds", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 clips written" in result.output and all(family in result.output for family in FAMILIES)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.csv"] + [f"corpus_{i:05d}.wav" for i in range(5)]
    assert sf.info(out / "corpus_00004.wav").frames == 8000
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output and "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, args + ["--overwrite", "--seed", "3"]).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, args + ["--overwrite"])
    assert result.exit_code == 1 and "notes.txt" in result.output and len(result.output.strip().splitlines()) == 1


def test_command_imports_no_torch(tmp_path):
    probe = (
        "import json, sys\nfrom asdtool.cli import main\n"
        f"code = main(['corpus', '--out', {str(tmp_path / 'c')!r}, '--clips', '2', '--seconds', '0.25'])\n"
        "print('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchaudio'})))\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "MODULES []"
    assert len(list((tmp_path / "c").glob("*.wav"))) == 2
