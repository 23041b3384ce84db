"""Tests for asdtool/pretrain/audio.py: the pre-training corpus (never a test or anomalous clip), its crops and batches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asdtool.core.errors import AsdError
from asdtool.pretrain.audio import Corpus, CropBatches, CropDataset, find_audio, held_out, is_test_folder
from asdtool.train.trainset import StepBatches
from tests.conftest import make_machine, write_wave


# ----------------------------------------------------------------------------- what counts as held out


@pytest.mark.parametrize("name, test", [("test", True), ("source_test", True), ("target_test", True), ("my_test", True),
                                        ("Test", False), ("testing", False), ("test_data", False), ("train", False),
                                        ("contest", False)])  # fmt: skip
def test_test_folders(name, test):
    assert is_test_folder(name) is test


@pytest.mark.parametrize("rel, out", [
    ("a/test/b/clip.wav", True),  # anywhere above the file
    ("deep/x/source_test/0001.wav", True),
    ("section_00_target_test_normal_0001_.wav", True),
    ("x/anomaly_0001.wav", True),
    ("x/recording_test.wav", True),
    ("test.wav", True),  # the stem alone
    ("test/", True),
    ("x/section_00_source_train_normal_0001_a_1.wav", False),
    ("x/latest.wav", False),
    ("x/anomalyish.wav", False),
    ("x/protest_01.wav", False),
    ("test.d/clip.wav", False),  # a folder must be named test or *_test
])  # fmt: skip
def test_held_out_names_and_folders(rel, out):
    assert held_out(Path(rel)) is out


# ----------------------------------------------------------------------------- find_audio


def test_a_dcase_root_contributes_exactly_its_training_clips(tmp_path):
    root = tmp_path / "dev"
    paths = make_machine(root, "fan", [{"a": "1"}, {"a": "2"}])
    corpus = find_audio([root])
    train = sorted(p for p in paths if p.parent.name == "train")
    assert corpus.files == train and len(train) == 7
    assert corpus.skipped == len(paths) - len(train) == 8


def test_files_are_sorted_deduplicated_and_any_suffix_case(tmp_path):
    c = tmp_path / "corpus"
    b = write_wave(c / "b" / "z.wav")
    a = write_wave(c / "a.WAV")
    flac = c / "m" / "x.flac"
    flac.parent.mkdir()
    sf.write(flac, np.zeros(800, np.float32), 16000, format="FLAC")
    (c / "notes.txt").write_text("x")
    write_wave(c / ".hidden.wav")
    write_wave(c / ".cache" / "k.wav")  # hidden folders are not walked
    write_wave(c / "b" / "section_00_source_train_anomaly_0001_.wav")
    corpus = find_audio([c, b, c / "b"])  # a file and a folder inside a folder already given
    assert corpus.files == sorted([a, b, flac])
    assert find_audio([c, b]).skipped == 1  # the anomalous clip


def test_a_held_out_clip_reached_twice_is_counted_once(tmp_path):
    write_wave(tmp_path / "c" / "b" / "keep.wav")
    write_wave(tmp_path / "c" / "b" / "section_00_source_train_anomaly_0001_.wav")
    corpus = find_audio([tmp_path / "c", tmp_path / "c" / "b"])
    assert len(corpus.files) == 1
    assert corpus.skipped == 1


def test_an_explicit_file_is_read_even_outside_a_tree(tmp_path):
    f = write_wave(tmp_path / "loose" / "pump.wav")
    assert find_audio([f]) == Corpus([f], 0)


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "not an audio file (expected .wav, .flac)"),
    ("test/clip.wav", "is a test or anomalous clip; pre-training never reads those"),
    ("source_test/clip.wav", "is a test or anomalous clip; pre-training never reads those"),
    ("x/section_00_source_train_anomaly_0001_.wav", "is a test or anomalous clip; pre-training never reads those"),
])  # fmt: skip
def test_a_given_file_is_refused(tmp_path, name, message):
    path = tmp_path / name
    write_wave(path) if path.suffix == ".wav" else (path.parent.mkdir(parents=True, exist_ok=True), path.write_text("x"))
    with pytest.raises(AsdError) as error:
        find_audio([path])
    assert str(error.value) == f"{path}: {message}"


def test_a_given_folder_is_refused(tmp_path):
    with pytest.raises(AsdError) as error:
        find_audio([tmp_path / "missing"])
    assert str(error.value) == f"{tmp_path / 'missing'}: audio folder or file does not exist"
    write_wave(tmp_path / "fan" / "target_test" / "a.wav")
    with pytest.raises(AsdError) as error:
        find_audio([tmp_path / "fan" / "target_test"])
    assert str(error.value) == f"{tmp_path / 'fan' / 'target_test'}: is a test folder; pre-training never reads test clips"
    with pytest.raises(AsdError) as error:  # only held-out clips below it
        find_audio([tmp_path / "fan"])
    assert str(error.value) == f"{tmp_path / 'fan'}: holds no audio files (.wav, .flac) outside test folders"


def test_each_given_folder_must_hold_audio(tmp_path):
    write_wave(tmp_path / "good" / "a.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsdError, match=r"empty: holds no audio files"):
        find_audio([tmp_path / "good", tmp_path / "empty"])


def test_the_fingerprint_covers_paths_and_sizes(tmp_path):
    a = write_wave(tmp_path / "a.wav", seconds=0.25)
    b = write_wave(tmp_path / "b.wav", seconds=0.25)
    corpus = find_audio([tmp_path])
    expected = hashlib.sha256(b"".join(f"{f}\0{f.stat().st_size}\n".encode() for f in (a, b))).hexdigest()
    assert corpus.fingerprint() == expected
    assert Corpus([a], 0).fingerprint() != corpus.fingerprint()
    write_wave(b, seconds=0.5)  # the same name, another length
    assert find_audio([tmp_path]).fingerprint() != expected
    assert Corpus([a, b], 5).fingerprint() == Corpus([a, b], 0).fingerprint()  # what was skipped is not the corpus


# ----------------------------------------------------------------------------- crops


def test_a_long_clip_is_cropped_where_seed_and_key_say(tmp_path):
    path = write_wave(tmp_path / "long.wav", seconds=1.0, seed=4)
    full = sf.read(path, dtype="float32")[0]
    data = CropDataset([path], seconds=0.25, seed=11)
    assert len(data) == 1
    for key in (0, 1, 99):
        crop = data[(0, key)]
        start = int(np.random.default_rng([11, key]).integers(0, 16000 - 4000 + 1))
        assert isinstance(crop, torch.Tensor) and crop.shape == (4000,) and crop.dtype == torch.float32
        np.testing.assert_array_equal(crop.numpy(), full[start : start + 4000])
        assert torch.equal(crop, CropDataset([path], 0.25, seed=11)[(0, key)])  # a pure function of (seed, key)
    starts = {int(np.random.default_rng([11, k]).integers(0, 12001)) for k in range(20)}
    assert len(starts) > 10  # keys do move the crop
    other = CropDataset([path], 0.25, seed=12)[(0, 0)]
    assert not torch.equal(other, data[(0, 0)])


def test_a_short_clip_is_padded_and_an_exact_one_kept(tmp_path):
    short = write_wave(tmp_path / "short.wav", seconds=0.25, seed=1)
    exact = write_wave(tmp_path / "exact.wav", seconds=0.5, seed=2)
    data = CropDataset([short, exact], seconds=0.5, seed=0)
    padded = data[(0, 3)]
    assert padded.shape == (8000,)
    np.testing.assert_array_equal(padded[:4000].numpy(), sf.read(short, dtype="float32")[0])
    assert torch.all(padded[4000:] == 0)
    np.testing.assert_array_equal(data[(1, 3)].numpy(), sf.read(exact, dtype="float32")[0])


def test_a_crop_reads_the_asked_channel(tmp_path):
    stereo = write_wave(tmp_path / "s.wav", seconds=0.5, channels=2, seed=3)
    channels = sf.read(stereo, dtype="float32")[0]
    np.testing.assert_array_equal(CropDataset([stereo], 0.5, 0, channel="right")[(0, 0)].numpy(), channels[:, 1])
    np.testing.assert_array_equal(CropDataset([stereo], 0.5, 0)[(0, 0)].numpy(), channels[:, 0])


def test_crop_batches_are_step_batches_carrying_their_position():
    crop = CropBatches(7, 3, grad_accum=2, steps=4, seed=5)
    plain = StepBatches(7, 3, grad_accum=2, steps=4, seed=5)
    got, ref = list(crop), list(plain)
    assert len(got) == len(crop) == 8
    for g, (items, idx) in enumerate(zip(got, ref)):
        assert [i for i, _ in items] == idx
        assert [p for _, p in items] == [g * 3, g * 3 + 1, g * 3 + 2]  # global positions: unique crop keys
    keys = [p for items in got for _, p in items]
    assert len(set(keys)) == len(keys) == 24


def test_crop_batches_resume_and_split_like_step_batches():
    full = list(CropBatches(9, 4, 1, 6, seed=1))
    assert list(CropBatches(9, 4, 1, 6, seed=1, start=2)) == full[2:]
    shares = [list(CropBatches(9, 4, 1, 6, seed=1, rank=r, world=2)) for r in range(2)]
    for g in range(6):
        assert shares[0][g] == full[g][0::2] and shares[1][g] == full[g][1::2]
