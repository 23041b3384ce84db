"""Tests for asdtool/detect/embed.py: embedding clips in batches (batching changes nothing) and the embedding store it writes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from asdtool.config.stages import FinetuneConfig
from asdtool.core.errors import AsdError
from asdtool.data import dcase, store
from asdtool.data.audio import read_clips
from asdtool.detect.embed import embed_clips, embed_to_store
from asdtool.models.checkpoint import CHECKPOINT, file_sha256, load_finetuned
from asdtool.train.finetune import finetune
from tests.conftest import make_machine, write_wave

SECONDS = 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """fan (two attribute sets) and gearbox: 7 + 4 training and 8 + 8 test clips of 0.25 s."""
    root = tmp_path_factory.mktemp("embed") / "dev"
    make_machine(root, "fan", [{"m-n": "W"}, {"m-n": "X"}])
    make_machine(root, "gearbox")
    return root


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory) -> Path:
    """A tiny BEATs model fine-tuned for one step on `data`."""
    out = tmp_path_factory.mktemp("model") / "tiny-beats"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finetune(FinetuneConfig(data_root=data, out=out, steps=1, batch_size=4, seconds=SECONDS, warmup=0, seed=0,
                                threads=1, specaug_mask=0))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def model(model_dir) -> nn.Module:
    return load_finetuned(model_dir).model


@pytest.fixture(scope="module")
def clips(data) -> list[dcase.Clip]:
    return dcase.scan(data).clips


class _Stats(nn.Module):
    """A stand-in embedder: [mean, std, max |x|, first sample] of each wave, scaled by a parameter."""

    def __init__(self, nan_rows: int = 0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.nan_rows = nan_rows

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        out = self.scale * torch.stack([wave.mean(1), wave.std(1), wave.abs().max(1).values, wave[:, 0]], dim=1)
        out[: self.nan_rows] = float("nan")
        return out


def _clip(path: Path) -> dcase.Clip:
    return dcase.Clip(path, "fan", "00", "test", "source", 0, "", {})


# ----------------------------------------------------------------------------- embed_clips


def test_batch_size_does_not_change_the_embeddings(model, clips):
    ref = embed_clips(model, clips, SECONDS, batch_size=len(clips))
    assert ref.dtype == np.float32 and ref.shape == (len(clips), model.embedding_dim) == (27, 128)
    assert np.all(np.isfinite(ref)) and np.ptp(ref, axis=0).max() > 1e-2  # clips get embeddings of their own
    for batch in (1, 4, 7):
        np.testing.assert_allclose(embed_clips(model, clips, SECONDS, batch_size=batch), ref, rtol=0, atol=1e-5)


def test_embeddings_keep_the_clip_order_and_are_the_models_own(model, clips):
    few = clips[:5]
    got = embed_clips(model, few, SECONDS, batch_size=2)
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(read_clips([c.path for c in few], SECONDS))).numpy()
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed_clips(model, few[::-1], SECONDS, batch_size=2), got[::-1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed_clips(model, few[3:4], SECONDS)[0], got[3], rtol=0, atol=1e-5)


def test_the_model_embeds_in_eval_mode(model, clips):
    ref = embed_clips(model, clips[:3], SECONDS)
    model.train()
    try:
        again = embed_clips(model, clips[:3], SECONDS)
        assert not model.training
    finally:
        model.eval()
    np.testing.assert_allclose(again, ref, rtol=0, atol=1e-6)


def test_amp_changes_nothing_on_the_cpu(model, clips):
    np.testing.assert_array_equal(embed_clips(model, clips[:4], SECONDS, amp=True), embed_clips(model, clips[:4], SECONDS, amp=False))


def test_progress_is_told_each_batch(clips):
    seen = []
    embed_clips(_Stats(), clips[:11], SECONDS, batch_size=3, progress=seen.append)
    assert seen == [3, 3, 3, 2]


def test_a_batch_size_below_one_is_refused_and_no_clips_give_an_empty_array(clips):
    with pytest.raises(AsdError, match=r"^batch size must be at least 1, got 0$"):
        embed_clips(_Stats(), clips, SECONDS, batch_size=0)
    empty = embed_clips(_Stats(), [], SECONDS)
    assert empty.shape == (0, 0) and empty.dtype == np.float32


def test_non_finite_embeddings_are_refused(clips):
    with pytest.raises(AsdError) as error:
        embed_clips(_Stats(nan_rows=2), clips[:5], SECONDS, batch_size=5)
    assert str(error.value) == f"the model produced non-finite embeddings for 2 clip(s), e.g. {clips[0].path.parent}"


def _expected_stats(wave: np.ndarray) -> np.ndarray:
    w = torch.from_numpy(wave)
    return 2 * np.array([float(w.mean()), float(w.std()), float(w.abs().max()), float(w[0])])


def test_clips_are_padded_or_cut_to_the_given_length(tmp_path):
    long = write_wave(tmp_path / "a.wav", seconds=1.0, seed=1)
    (got,) = embed_clips(_Stats(), [_clip(long)], 0.5)
    np.testing.assert_allclose(got, _expected_stats(sf.read(long, dtype="float32")[0][:8000]), rtol=1e-5)  # its start
    short = write_wave(tmp_path / "s.wav", seconds=0.25, seed=2)
    (got,) = embed_clips(_Stats(), [_clip(short)], 0.5)
    np.testing.assert_allclose(got, _expected_stats(np.pad(sf.read(short, dtype="float32")[0], (0, 4000))), rtol=1e-5)  # silence after


def test_channels_of_a_stereo_clip(tmp_path):
    stereo = _clip(write_wave(tmp_path / "s.wav", seconds=0.5, channels=2, seed=3))
    mono = _clip(write_wave(tmp_path / "m.wav", seconds=0.5, seed=4))
    m = _Stats()
    left, right, mean = (embed_clips(m, [stereo], 0.5, channel=ch)[0] for ch in ("left", "right", "mean"))
    assert not np.allclose(left, right)
    both = embed_clips(m, [stereo, mono], 0.5, batch_size=2, channel="both")
    np.testing.assert_allclose(both[0], (left + right) / 2, rtol=1e-6)  # two views: the mean of their embeddings
    np.testing.assert_array_equal(both[1], embed_clips(m, [mono], 0.5)[0])  # a mono clip: its own
    data = sf.read(stereo.path, dtype="float32")[0]
    np.testing.assert_allclose(mean[0], 2 * data.mean(axis=1).mean(), rtol=1e-5)


# ----------------------------------------------------------------------------- embed_to_store


def test_a_fine_tuned_models_store(data, model_dir, model, tmp_path):
    out = tmp_path / "emb.h5"
    ticks = []
    dataset, groups, device = embed_to_store(model_dir, data, out, batch_size=5, progress=lambda n, total: ticks.append((n, total)))
    assert device == "cpu"
    assert sum(n for n, _ in ticks) == len(dataset.clips) == 27 and {t for _, t in ticks} == {27}
    s = store.read_store(out, store.EMBEDDINGS)
    assert list(s.groups) == [("fan", "train"), ("fan", "test"), ("gearbox", "train"), ("gearbox", "test")]
    assert s.meta.model == "tiny-beats" and s.meta.embedder == ""
    assert s.meta.checkpoint_sha256 == file_sha256(model_dir / CHECKPOINT)
    assert s.meta.clips_sha256 == store.clips_sha256(dataset.clips) == s.content_sha256()
    for (machine, split), g in s.groups.items():
        clips = dataset.select(machine, split)
        assert g.file_names == [c.file_name for c in clips]
        assert g.domain.tolist() == [c.domain_id for c in clips] and g.label.tolist() == [c.label for c in clips]
        assert g.attributes == [c.attribute_string for c in clips]
        np.testing.assert_allclose(g.values, embed_clips(model, clips, SECONDS, batch_size=16), rtol=0, atol=1e-5)
        assert groups[(machine, split)][0] == clips
        np.testing.assert_array_equal(groups[(machine, split)][1], g.values)


def test_a_name_and_a_length_of_ones_own(data, model_dir, model, tmp_path):
    out = tmp_path / "emb.h5"
    dataset, _, _ = embed_to_store(model_dir, data, out, name="mine", seconds=0.25)
    s = store.read_store(out)
    assert s.meta.model == "mine"
    clips = dataset.select("gearbox", "test")
    np.testing.assert_allclose(s.get("gearbox", "test").values, embed_clips(model, clips, 0.25), rtol=0, atol=1e-5)
    assert not np.allclose(s.get("gearbox", "test").values, embed_clips(model, clips, SECONDS), atol=1e-3)


def test_a_frozen_backbones_store_records_how_it_embedded(data, tmp_path):
    frozen = {"backbone": "eat", "pretrained": None, "size": "tiny", "layer": 2, "pooling": "mean", "seed": 0}
    out = tmp_path / "frozen.h5"
    dataset, groups, _ = embed_to_store(None, data, out, batch_size=8, frozen=frozen)
    s = store.read_store(out)
    assert s.meta.model == "frozen-eat" and s.meta.checkpoint_sha256 == "random:eat-tiny:seed0"
    assert json.loads(s.meta.embedder) == {**frozen, "seconds": 0.25, "channel": "left"}  # the first training clip's length
    assert s.get("fan", "train").values.shape == (7, 192)  # mean pooling: the backbone's width
    from asdtool.models.frozen import load_frozen

    embedder, _ = load_frozen(**frozen)
    clips = dataset.select("fan", "test")
    np.testing.assert_allclose(s.get("fan", "test").values, embed_clips(embedder, clips, 0.25), rtol=0, atol=1e-5)


def test_an_output_that_is_not_ours_is_refused_before_any_work(data, model_dir, tmp_path):
    user = tmp_path / "notes.h5"
    user.write_bytes(b"mine")
    with pytest.raises(AsdError, match=r"notes\.h5: exists and is not an embedding store written by asdtool"):
        embed_to_store(model_dir, data, user)
    assert user.read_bytes() == b"mine"
    ckpt = model_dir / CHECKPOINT
    kept = ckpt.read_bytes()
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        embed_to_store(model_dir, data, ckpt, force=True)
    assert ckpt.read_bytes() == kept
    with pytest.raises(AsdError, match="no fine-tuned checkpoint here"):
        embed_to_store(tmp_path / "no-model", data, tmp_path / "e.h5")
    assert not (tmp_path / "e.h5").exists()
