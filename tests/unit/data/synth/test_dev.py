import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from asdtool.cli import app
from asdtool.data.synth import dev as synth
from asdtool.data.dcase import DEV_MACHINES, NO_ATTRIBUTE, read_attribute_csv, scan
from asdtool.detect.baseline import evaluate_baseline
from asdtool.data.synth.dev import SynthSizes, paper_sizes, synthesize
from asdtool.core.errors import AsdError

SMALL = SynthSizes(seconds=1.0, source_train=6, target_train=2, test_per_domain=2)
ATTRIBUTED = ("bearing", "fan", "ToyCar", "valve")
HIDDEN = ("gearbox", "slider", "ToyTrain")


def digests(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "dev"
    summary = synthesize(out, seed=0, sizes=SMALL)
    assert summary.out == out and summary.total == 7 * (6 + 2 + 2 * 2 * 2)
    return out


def test_layout_and_names_parse(small):
    data = scan(small)
    assert sorted(data.machines) == sorted(DEV_MACHINES)
    for machine in DEV_MACHINES:
        clips = data.select(machine)
        groups = Counter((c.split, c.domain, c.label) for c in clips)
        assert groups == {
            ("train", "source", 0): 6,
            ("train", "target", 0): 2,
            ("test", "source", 0): 2,
            ("test", "source", 1): 2,
            ("test", "target", 0): 2,
            ("test", "target", 1): 2,
        }
        for key in groups:  # numbered from 0000 within each group
            indices = sorted(int(c.file_name.split("_")[5]) for c in clips if (c.split, c.domain, c.label) == key)
            assert indices == list(range(groups[key]))
        if machine in HIDDEN:
            assert {c.attribute_string for c in clips} == {NO_ATTRIBUTE}
        else:
            assert all(c.attributes for c in clips)
            assert len({frozenset(c.attributes) for c in clips}) == 1  # same keys everywhere
            source = [c.attributes for c in clips if c.domain == "source"]
            for target in (c.attributes for c in clips if c.domain == "target"):
                unseen = [k for k, v in target.items() if all(s[k] != v for s in source)]
                assert unseen, f"{machine} target {target} only reuses source values"
            assert len({c.attribute_string for c in clips if c.domain == "source"}) >= 2


def test_attribute_examples_look_like_dcase(small):
    names = {m: next((small / m / "train").glob("*source*0000_*.wav")).name for m in ATTRIBUTED}
    assert names["bearing"] == "section_00_source_train_normal_0000_vel_6_loc_A.wav"
    assert names["fan"] == "section_00_source_train_normal_0000_m-n_W.wav"
    assert names["ToyCar"] == "section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav"
    assert names["valve"] == "section_00_source_train_normal_0000_v1pat_00_v2pat_01.wav"


def test_attribute_csv_lists_train_and_test(small):
    for machine in DEV_MACHINES:
        listed = read_attribute_csv(small / machine / "attributes_00.csv")
        on_disk = {f"{machine}/{p.parent.name}/{p.name}" for p in (small / machine).rglob("*.wav")}
        assert set(listed) == on_disk
        if machine in HIDDEN:
            assert all(a == {} for a in listed.values())
            assert f",{NO_ATTRIBUTE}," in (small / machine / "attributes_00.csv").read_text()


def test_hidden_attributes_cover_the_no_attribute_types(small):
    with open(small / "hidden_attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["machine", "file_name", "hidden_attributes"]
    assert {r["machine"] for r in rows} == set(HIDDEN)
    for machine in HIDDEN:
        mine = [r for r in rows if r["machine"] == machine]
        on_disk = {f"{machine}/{p.parent.name}/{p.name}" for p in (small / machine).rglob("*.wav")}
        assert {r["file_name"] for r in mine} == on_disk
        values = {r["hidden_attributes"] for r in mine}
        assert 2 <= len(values) <= 4
        assert all(len(v.split("_")) % 2 == 0 for v in values)
        source = {r["hidden_attributes"] for r in mine if "_source_" in r["file_name"]}
        target = {r["hidden_attributes"] for r in mine if "_target_" in r["file_name"]}
        assert len(source) >= 2 and target and not source & target


def test_wav_format(small):
    wavs = sorted(small.rglob("*.wav"))
    assert len(wavs) == 7 * 16
    for path in wavs:
        info = sf.info(path)
        fields = (info.format, info.subtype, info.samplerate, info.channels, info.frames)
        assert fields == ("WAV", "PCM_16", 16000, 1, 16000)
    wave, _ = sf.read(wavs[0])
    assert 0.005 < np.sqrt(np.mean(wave**2)) < 0.5


def test_toycar_speed_sets_motor_whine():
    """The strongest tone of a normal ToyCar clip is the motor whine at 8 Hz per volt."""
    clip = synth.PlannedClip("ToyCar", "train", "source", 0, 0, ("A1", "28V", "1"), None)
    wave = synth.render_clip(clip, seed=0, seconds=2.0).astype(float)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak = np.fft.rfftfreq(len(wave), 1 / 16000)[np.argmax(spectrum)]
    assert abs(peak - 8 * 28) < 0.04 * 8 * 28


def test_same_seed_is_byte_identical_in_any_order(small, tmp_path):
    again = tmp_path / "again"
    synthesize(again, seed=0, sizes=SMALL, machines=list(reversed(DEV_MACHINES)))
    assert digests(again) == digests(small)
    some = tmp_path / "some"
    synthesize(some, seed=0, sizes=SMALL, machines=["valve", "fan"])
    reference = digests(small)
    assert all(reference[k] == v for k, v in digests(some).items() if k.endswith(".wav"))


def test_other_seed_differs(small, tmp_path):
    other = tmp_path / "other"
    synthesize(other, seed=1, sizes=SMALL)
    a, b = digests(small), digests(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".wav"))


def test_refuses_to_overwrite_without_flag(tmp_path):
    out = tmp_path / "dev"
    synthesize(out, seed=0, sizes=SMALL, machines=["fan", "slider"])
    before, listing = digests(out), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(AsdError, match="fan"):
        synthesize(out, seed=1, sizes=SMALL, machines=["fan"])
    assert digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temporary folder left behind
    synthesize(out, seed=1, sizes=SMALL, machines=["fan"], overwrite=True)
    after = digests(out)
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in after if k.startswith("fan/") and k.endswith(".wav"))
    assert all(after[k] == before[k] for k in after if k.startswith("slider/"))
    assert "slider" in (out / "hidden_attributes.csv").read_text()  # other machines' hidden rows kept
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_unknown_machine_and_bad_sizes(tmp_path):
    with pytest.raises(AsdError, match="unknown machine type pump"):
        synthesize(tmp_path / "dev", machines=["fan", "pump"])
    with pytest.raises(AsdError, match="clip length"):
        synthesize(tmp_path / "dev", sizes=SynthSizes(seconds=0.0))
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def broken(clip, seed, seconds):
        calls.append(clip)
        if len(calls) > 20:
            raise RuntimeError("boom")
        return np.zeros(int(seconds * 16000), np.int16)

    monkeypatch.setattr(synth, "render_clip", broken)
    with pytest.raises(RuntimeError):
        synthesize(tmp_path / "dev", sizes=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_progress_and_sizes(tmp_path):
    seen = []
    sizes = SynthSizes(0.5, 2, 1, 1)
    synthesize(tmp_path / "dev", sizes=sizes, machines=["gearbox"], progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)
    assert paper_sizes() == SynthSizes(seconds=10.0, source_train=990, target_train=10, test_per_domain=50)
    assert SynthSizes() == SynthSizes(seconds=2.0, source_train=60, target_train=6, test_per_domain=20)


def test_command(tmp_path):
    out = tmp_path / "dev"
    args = ["synth", "--out", str(out), "--seconds", "0.5", "--source-train", "3", "--target-train", "1",
            "--test-per-domain", "1", "--machine", "fan", "--machine", "ToyTrain"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ToyTrain" in result.output and "16 clips" in result.output
    assert set(scan(out).machines) == {"fan", "ToyTrain"}
    assert sf.info(next((out / "fan" / "train").glob("*.wav"))).frames == 8000
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output and "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, args + ["--overwrite", "--seed", "3"]).exit_code == 0


def test_logmel_knn_baseline_is_neither_trivial_nor_hopeless(tmp_path):
    out = tmp_path / "dev"
    synthesize(out, seed=0)
    metrics = evaluate_baseline(out)
    assert 0.58 <= metrics["official_score"] <= 0.80
    assert set(metrics["machines"]) == set(DEV_MACHINES)
    for machine, m in metrics["machines"].items():
        assert 0.52 <= m["hmean"] <= 0.92, (machine, m)
