"""Stereo DCASE 2026 data through the whole chain, and the channel and layout options of the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.data.synth.layouts import synthesize_layout
from asdtool.data.store import read_store

from tests.conftest import run_asdtool, write_wave


_asdtool = run_asdtool


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("y2026") / "dev"
    synthesize_layout(root, "2026", seed=3, sizes=SynthSizes(0.5, 4, 2, 2), machines=["fan", "valve"])
    return root


@pytest.mark.parametrize("channel", ["left", "both"])
def test_a_2026_stereo_set_runs_finetune_embed_detect_evaluate_on_the_channel_asked_for(stereo, tmp_path, channel):
    model = tmp_path / "m"
    r = _asdtool("finetune", "--data-root", stereo, "--out", model, "--channel", channel, "--steps", "2",
                 "--batch-size", "4", "--seconds", "0.5", "--warmup", "1", "--checkpoint-every", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = _asdtool("embed", "--model", model, "--data-root", stereo, "--out", tmp_path / "own.h5")
    assert r.returncode == 0, r.stderr
    r = _asdtool("embed", "--model", model, "--data-root", stereo, "--out", tmp_path / "far.h5", "--channel", "right")
    assert r.returncode == 0, r.stderr
    own, far = read_store(tmp_path / "own.h5"), read_store(tmp_path / "far.h5")
    # embed follows the model's training channel unless told otherwise: the microphones differ
    assert own.groups.keys() == far.groups.keys()
    assert not np.allclose(own.get("fan", "test").values, far.get("fan", "test").values)
    r = _asdtool("detect", "--embeddings", tmp_path / "own.h5", "--out", tmp_path / "scores", "--data-root", stereo)
    assert r.returncode == 0, r.stderr
    r = _asdtool("evaluate", "--scores", tmp_path / "scores", "--data-root", stereo, "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["machines"]) == {"fan", "valve"} and 0.0 <= m["official_score"] <= 1.0
    r = _asdtool("baseline", "--data-root", stereo, "--out", tmp_path / "logmel", "--channel", "mean")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "logmel" / "anomaly_score_fan_section_00_test.csv").is_file()


def test_the_right_channel_of_a_mono_set_is_one_line_naming_the_clip(tmp_path):
    root = tmp_path / "mono"
    synthesize(root, seed=1, sizes=SynthSizes(0.5, 3, 1, 1), machines=["fan"])
    r = _asdtool("baseline", "--data-root", root, "--out", tmp_path / "s", "--channel", "right")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "fan/train/section_00_source_train_normal_0000_" in lines[0] and "is mono: --channel right" in lines[0]
    assert not (tmp_path / "s").exists()


def test_a_mixed_root_needs_the_option_and_a_forced_year_reads_with_that_years_reader(tmp_path):
    root = tmp_path / "mixed"
    for rel in ("fan/train/normal_id_00_00000000.wav", "fan/train/normal_id_00_00000001.wav",
                "fan/train/normal_id_00_00000002.wav", "fan/test/normal_id_00_00000003.wav",
                "fan/test/anomaly_id_00_00000000.wav",
                "valve/train/section_00_source_train_normal_0000_v_1.wav",
                "valve/train/section_00_source_train_normal_0001_v_1.wav",
                "valve/train/section_00_target_train_normal_0000_v_2.wav",
                "valve/test/section_00_source_test_normal_0000_v_1.wav",
                "valve/test/section_00_source_test_anomaly_0000_v_1.wav",
                "valve/test/section_00_target_test_normal_0000_v_2.wav",
                "valve/test/section_00_target_test_anomaly_0000_v_2.wav"):  # fmt: skip
        write_wave(root / rel, seconds=0.2, seed=len(rel))
    r = _asdtool("baseline", "--data-root", root, "--out", tmp_path / "a")
    assert r.returncode == 1 and "different DCASE layouts in one root" in r.stderr and "--mixed-layouts" in r.stderr
    r = _asdtool("baseline", "--data-root", root, "--out", tmp_path / "b", "--mixed-layouts")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "b").glob("*_test.csv")) == [
        "anomaly_score_fan_section_00_test.csv", "anomaly_score_valve_section_00_test.csv"]
    r = _asdtool("baseline", "--data-root", root, "--out", tmp_path / "c", "--layout", "2020")
    assert r.returncode == 1 and "valve/train/section_00_source_train_normal_0000_v_1.wav" in r.stderr
    assert "does not parse" in r.stderr
    r = _asdtool("baseline", "--data-root", root, "--out", tmp_path / "d", "--layout", "2019")
    assert r.returncode != 0 and "2019" in r.stderr


def test_both_makes_two_training_views_of_a_stereo_clip_and_averages_their_embeddings(stereo, tmp_path):
    import torch

    from asdtool.data import dcase
    from asdtool.detect.embed import embed_clips
    from asdtool.models.frozen import load_frozen
    from asdtool.train.trainset import ClipDataset, training_set

    mono = tmp_path / "mono"
    synthesize(mono, seed=1, sizes=SynthSizes(0.5, 2, 1, 1), machines=["fan"])
    for root, per_clip in ((stereo, 2), (mono, 1)):
        tset = training_set(dcase.scan(root))
        views = ClipDataset(tset.clips, tset.targets, 0.5, "both")
        assert len(views) == per_clip * len(tset.clips)
        assert [t for _, _, t in views.items] == [int(t) for t in tset.targets for _ in range(per_clip)]
    tset = training_set(dcase.scan(stereo))
    left, right = ClipDataset(tset.clips, tset.targets, 0.5, "left"), ClipDataset(tset.clips, tset.targets, 0.5, "right")
    both = ClipDataset(tset.clips, tset.targets, 0.5, "both")
    assert torch.equal(both[0][0], left[0][0]) and torch.equal(both[1][0], right[0][0])

    model, _ = load_frozen("beats", None, layer=1)
    clips = dcase.scan(stereo).select("fan", "test")[:3] + dcase.scan(mono).select("fan", "test")[:1]
    e = {ch: embed_clips(model, clips[:3], 0.5, batch_size=2, channel=ch) for ch in ("left", "right")}
    both = embed_clips(model, clips, 0.5, batch_size=2, channel="both")
    assert np.allclose(both[:3], (e["left"] + e["right"]) / 2, atol=1e-6) and not np.allclose(e["left"], e["right"])
    assert np.array_equal(both[3], embed_clips(model, clips[3:], 0.5, channel="left")[0])  # mono: its own view
