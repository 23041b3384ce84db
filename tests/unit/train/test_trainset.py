"""Tests for asdtool/train/trainset.py: training classes, pseudo-label files, the clip dataset and the per-step batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.data import dcase
from asdtool.data.dcase import format_name
from asdtool.train.trainset import ClipDataset, StepBatches, read_pseudo_labels, training_set
from tests.conftest import make_machine, write_wave


def _pseudo(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["file_name,machine,pseudo_label", *rows]) + "\n")
    return path


# ----------------------------------------------------------------------------- classes


def test_classes_are_machine_and_attribute_combinations_numbered_in_sorted_order(tiny_root):
    ds = dcase.scan(tiny_root)
    tset = training_set(ds)
    assert tset.class_map == {"fan/m-n_W": 0, "fan/m-n_X": 1, "gearbox/noAttribute": 2}
    assert tset.clips == ds.select(split="train") and len(tset.clips) == 7 + 4  # test clips never train
    assert tset.targets.dtype == np.int64 and tset.targets.shape == (11,)
    assert [tset.class_map[c.class_key] for c in tset.clips] == tset.targets.tolist()
    # make_machine: 3 source clips per attribute set, then 1 target clip with the first set
    assert tset.targets.tolist() == [0, 0, 0, 1, 1, 1, 0, 2, 2, 2, 2]


def test_a_section_other_than_00_is_a_class_of_its_own(tmp_path):
    root = tmp_path / "dev"
    make_machine(root, "valve", [{"v": "1"}], csv=False)
    write_wave(root / "valve" / "train" / format_name("source", "train", 0, 0, {"v": "1"}, section=1))
    tset = training_set(dcase.scan(root))
    assert tset.class_map == {"valve/section_01/v_1": 0, "valve/v_1": 1}
    assert sorted(tset.targets.tolist()) == [0, 1, 1, 1, 1]


def test_no_training_clips_is_refused(tiny_root):
    ds = dcase.scan(tiny_root)
    only_tests = dcase.Dataset(root=tiny_root, clips=ds.select(split="test"), roots=[tiny_root])
    with pytest.raises(AsdError) as error:
        training_set(only_tests)
    assert str(error.value) == f"{tiny_root}: no training clips found"


def test_pseudo_labels_replace_the_classes_of_the_machine_types_they_cover(tiny_root, tmp_path):
    ds = dcase.scan(tiny_root)
    gear = ds.select("gearbox", "train")
    path = _pseudo(tmp_path / "p.csv", [f"{c.file_name},gearbox,{'b' if i % 2 else 'a'}" for i, c in enumerate(gear)])
    tset = training_set(ds, path)
    assert tset.class_map == {"fan/m-n_W": 0, "fan/m-n_X": 1, "gearbox/pseudo_a": 2, "gearbox/pseudo_b": 3}
    assert tset.targets.tolist() == [0, 0, 0, 1, 1, 1, 0, 2, 3, 2, 3]  # fan keeps its attribute classes


def test_pseudo_labels_must_name_training_clips_and_all_of_a_machine_types(tiny_root, tmp_path):
    ds = dcase.scan(tiny_root)
    gear = ds.select("gearbox", "train")
    rows = [f"{c.file_name},gearbox,0" for c in gear]
    test_clip = ds.select("gearbox", "test")[0].file_name
    bad = _pseudo(tmp_path / "extra.csv", rows + [f"{test_clip},gearbox,1"])
    with pytest.raises(AsdError) as error:
        training_set(ds, bad)
    assert str(error.value) == (f"{bad}: names 1 clip(s) that are not training clips of {dcase.root_label(tiny_root)}, "
                                f"e.g. gearbox/{test_clip}")  # fmt: skip
    short = _pseudo(tmp_path / "short.csv", rows[1:])
    with pytest.raises(AsdError) as error:
        training_set(ds, short)
    assert str(error.value) == f"{short}: misses 1 training clip(s) of gearbox, e.g. {gear[0].file_name}"


# ----------------------------------------------------------------------------- pseudo-label files


def test_read_pseudo_labels_keys_by_machine_and_name(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("file_name,machine,pseudo_label\na.wav,fan, 3 \n\nb.wav,valve,x\n")
    assert read_pseudo_labels(path) == {("fan", "a.wav"): "3", ("valve", "b.wav"): "x"}  # blank lines skipped, labels stripped


def test_read_pseudo_labels_refusals(tmp_path):
    with pytest.raises(AsdError, match=r"absent\.csv: pseudo-label file does not exist$"):
        read_pseudo_labels(tmp_path / "absent.csv")
    for name, text, message in [
        ("empty.csv", "", "pseudo-label file has no 'file_name,machine,pseudo_label' header"),
        ("header.csv", "name,machine,label\na.wav,fan,1\n", "pseudo-label file has no 'file_name,machine,pseudo_label' header"),
        ("short.csv", "file_name,machine,pseudo_label\na.wav,fan\n", "line 2 is not file_name,machine,pseudo_label"),
        ("long.csv", "file_name,machine,pseudo_label\na.wav,fan,1\nb.wav,fan,1,2\n", "line 3 is not file_name,machine,pseudo_label"),
        ("blank.csv", "file_name,machine,pseudo_label\na.wav,fan,  \n", "line 2 is not file_name,machine,pseudo_label"),
    ]:  # fmt: skip
        (tmp_path / name).write_text(text)
        with pytest.raises(AsdError) as error:
            read_pseudo_labels(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name}: {message}"


# ----------------------------------------------------------------------------- the clip dataset


def test_clip_dataset_gives_waves_of_the_asked_length_and_their_classes(tmp_path):
    short = write_wave(tmp_path / "short.wav", seconds=0.25, seed=1)
    long = write_wave(tmp_path / "long.wav", seconds=1.0, seed=2)
    clips = [dcase.Clip(p, "fan", "00", "train", "source", 0, "", {}) for p in (short, long)]
    data = ClipDataset(clips, np.array([4, 7]), seconds=0.5)
    assert len(data) == 2
    wave, target = data[0]
    assert isinstance(wave, torch.Tensor) and wave.dtype == torch.float32 and wave.shape == (8000,) and target == 4
    assert torch.all(wave[4000:] == 0) and wave[:4000].abs().sum() > 0  # padded with silence
    wave, target = data[1]
    assert wave.shape == (8000,) and target == 7
    import soundfile as sf

    np.testing.assert_allclose(wave.numpy(), sf.read(long, dtype="float32")[0][:8000], atol=1e-7)  # cut to its start


def test_both_channels_make_two_examples_of_a_stereo_clip(tmp_path):
    stereo = write_wave(tmp_path / "s.wav", seconds=0.5, channels=2)
    mono = write_wave(tmp_path / "m.wav", seconds=0.5)
    clips = [dcase.Clip(p, "fan", "00", "train", "source", 0, "", {}) for p in (stereo, mono)]
    both = ClipDataset(clips, np.array([1, 2]), seconds=0.5, channel="both")
    assert [(item[1], item[2]) for item in both.items] == [("left", 1), ("right", 1), ("left", 2)]
    import soundfile as sf

    data = sf.read(stereo, dtype="float32")[0]
    np.testing.assert_allclose(both[0][0].numpy(), data[:, 0], atol=1e-7)
    np.testing.assert_allclose(both[1][0].numpy(), data[:, 1], atol=1e-7)
    assert len(ClipDataset(clips, np.array([1, 2]), seconds=0.5)) == 2  # left only: one example each


# ----------------------------------------------------------------------------- the per-step batches


def _all(sampler: StepBatches) -> list[list[int]]:
    return list(iter(sampler))


def test_batches_follow_the_documented_epoch_permutations():
    n, batch, seed = 10, 4, 3
    got = _all(StepBatches(n, batch, grad_accum=1, steps=6, seed=seed))
    stream = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(3)])
    assert got == [stream[g * batch : (g + 1) * batch].tolist() for g in range(6)]
    flat = sum(got, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # every epoch: each clip once


def test_batches_are_a_function_of_the_seed():
    a = _all(StepBatches(17, 5, 2, 8, seed=0))
    assert a == _all(StepBatches(17, 5, 2, 8, seed=0))
    assert a != _all(StepBatches(17, 5, 2, 8, seed=1))
    assert len(a) == 16 and all(len(b) == 5 for b in a)


@pytest.mark.parametrize("start", [0, 1, 3, 7])
def test_a_resumed_run_gets_the_rest_of_the_same_batches(start):
    full = _all(StepBatches(13, 4, grad_accum=3, steps=8, seed=5))
    resumed = StepBatches(13, 4, grad_accum=3, steps=8, seed=5, start=start)
    assert len(resumed) == (8 - start) * 3
    assert _all(resumed) == full[start * 3 :]


def test_ranks_split_each_micro_batch_between_them():
    n, batch, world = 11, 6, 3
    whole = StepBatches(n, batch, 2, 5, seed=9)
    shares = [StepBatches(n, batch, 2, 5, seed=9, rank=r, world=world) for r in range(world)]
    for g, full in enumerate(_all(whole)):
        parts = [s.micro_batch(g) for s in shares]
        assert [len(p) for p in parts] == [2, 2, 2]
        assert [full[r::world] for r in range(world)] == parts
        assert sorted(sum(parts, [])) == sorted(full)
    assert [len(s) for s in shares] == [10, 10, 10]


def test_an_uneven_split_gives_the_first_ranks_one_more():
    shares = [StepBatches(20, 5, 1, 1, seed=0, rank=r, world=2).micro_batch(0) for r in range(2)]
    assert [len(s) for s in shares] == [3, 2]


def test_a_batch_larger_than_the_set_spans_epochs():
    (b,) = _all(StepBatches(3, 7, 1, 1, seed=2))
    stream = np.concatenate([np.random.default_rng([2, e]).permutation(3) for e in range(3)])
    assert b == stream[:7].tolist()


def test_nothing_is_left_after_the_last_step():
    s = StepBatches(5, 2, 1, 4, seed=0, start=4)
    assert len(s) == 0 and _all(s) == []
