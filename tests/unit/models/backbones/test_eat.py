"""Tests for asdtool/models/backbones/eat.py against reference vectors from the official EAT code."""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asdtool.data.audio import SAMPLE_RATE
from asdtool.core.errors import AsdError
from asdtool.models.backbones import eat
from asdtool.models.backbones.foreign import read_checkpoint
from asdtool.models.backbones.registry import load_backbone

from tests.conftest import reference_errors_on_reproducible_fft
from tests import paths

FIXTURES = paths.FIXTURES
CKPT = FIXTURES / "eat_tiny.pt"
# eat_tiny.pt's weights as fairseq saves them: cfg pickled as an OmegaConf DictConfig, plus trainer state
# (made by fixtures/make_eat_fairseq_omegaconf.py)
OMEGACONF_CKPT = FIXTURES / "eat_tiny_fairseq_omegaconf.pt"


@pytest.fixture(scope="module")
def io():
    return torch.load(FIXTURES / "eat_tiny_io.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def official():
    with pytest.warns(UserWarning):
        return eat.load(CKPT)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return eat.load(size="tiny")


def _wave(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=g)


# --- the official reference vectors -----------------------------------------------------------


def test_fixture_config_comes_from_checkpoint(official):
    c = official.cfg
    assert (c.embed_dim, c.depth, c.num_heads, c.max_length, c.mlp_ratio) == (64, 2, 4, 64, 4.0)
    assert official.embed_dim == 64
    assert official.pos_embed.shape == (1, 64 * 8, 64)


def test_fbank_matches_official(official, io):
    fbank = official.preprocess(io["wave"])
    assert fbank.shape == io["fbank"].shape == (2, 304, 128)  # 298 frames zero-padded to 19 x 16
    err = (fbank - io["fbank"]).abs()
    # The log of tiny mel energies amplifies float32 FFT rounding, so a few low bins differ by ~5e-5 on
    # MKL's default code path; the reproducible-FFT test below checks 1e-5.
    assert err.max().item() < 1e-4
    assert (err > 1e-5).float().mean().item() < 1e-3
    # Padding comes before normalisation: padded frames hold the normalised zero.
    assert torch.allclose(fbank[:, 298:], torch.full_like(fbank[:, 298:], 4.268 / (2 * 4.569)))


@pytest.mark.parametrize("sdpa", [True, False])
def test_features_match_official(official, io, sdpa):
    official.set_sdpa(sdpa)
    try:
        with torch.no_grad():
            encoded = official.encode(io["fbank"])
            forward = official(io["wave"])
    finally:
        official.set_sdpa(True)
    assert encoded.shape == io["features"].shape == (2, 1 + 19 * 8, 64)
    assert (encoded - io["features"]).abs().max().item() < 1e-5
    assert (forward - io["features"]).abs().max().item() < 1e-4  # includes the fbank rounding above


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="reference fbank was made with MKL's FFT")
def test_wave_to_features_match_official_on_reproducible_fft():
    # on the FFT path the reference vectors were made on, the whole chain matches to 1e-5
    errors = reference_errors_on_reproducible_fft("eat", CKPT, FIXTURES / "eat_tiny_io.pt")
    assert set(errors) == {"fbank", "features_sdpa_True", "features_sdpa_False"}
    assert all(e < 1e-5 for e in errors.values()), errors


def test_sincos_table_matches_mae_formula():
    # MAE's get_2d_sincos_pos_embed_flexible, in numpy: meshgrid(w, h) puts the column first.
    dim, rows, cols = 32, 5, 8
    grid = np.stack(np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64)))

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    expected = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    table = eat.sincos_position_table(dim, rows, cols)
    assert table.shape == (1, rows * cols, dim)
    np.testing.assert_allclose(table[0].numpy(), expected, atol=1e-6)


# --- model behaviour ----------------------------------------------------------------------------


def test_eval_mode_is_deterministic(tiny):
    wave = _wave(2.0)
    with torch.no_grad():
        assert torch.equal(tiny(wave), tiny(wave))


def test_sdpa_and_math_paths_agree(tiny):
    wave = _wave(3.0)
    with torch.no_grad():
        fused = tiny(wave)
        tiny.set_sdpa(False)
        try:
            assert not any(b.attn.use_sdpa for b in tiny.blocks)
            math = tiny(wave)
        finally:
            tiny.set_sdpa(True)
    assert (fused - math).abs().max().item() < 1e-5


def test_load_backbone_tiny_shapes():
    model = load_backbone("eat", size="tiny")
    assert model.embed_dim == 192
    with torch.no_grad():
        tokens = model(_wave(2.0, batch=3))
    # 2 s -> 198 frames -> padded to 208 = 13 time patches x 8 frequency patches, plus the CLS
    assert tokens.shape == (3, 1 + 13 * 8, 192)
    assert model.preprocess(_wave(2.0, batch=1)).shape == (1, 208, 128)


def test_base_parameter_count():
    with torch.device("meta"):
        model = eat.EAT(eat.SIZES["base"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 85_254_144
    assert model.pos_embed.shape == (1, 6144, 768)
    assert not any(name == "pos_embed" for name, _ in model.named_parameters())  # fixed, not trained


def test_base_full_size_shapes():
    with torch.device("meta"):
        model = eat.EAT(eat.SIZES["base"])
    c = model.cfg
    assert (c.embed_dim, c.num_heads, c.depth, c.max_length) == (768, 12, 12, 768)
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 768, 768)
    assert model.blocks[0].mlp.fc1.weight.shape == (4 * 768, 768)
    assert model.patch_embed.weight.shape == (768, 1, 16, 16)
    # 10.24 s (the official 1024-frame target) -> 64 x 8 patches + CLS
    assert model.encode(torch.empty(2, 1024, 128, device="meta")).shape == (2, 513, 768)
    model.set_sdpa(False)
    assert model.encode(torch.empty(1, 6144 // 8 * 16, 128, device="meta")).shape == (1, 6145, 768)


def test_too_long_and_misshapen_inputs_raise(tiny):
    with pytest.raises(AsdError, match="position table"):
        tiny.encode(torch.zeros(1, (tiny.cfg.max_length + 1) * 16, 128))
    with pytest.raises(AsdError, match="multiple of 16"):
        tiny.encode(torch.zeros(1, 100, 128))
    with pytest.raises(AsdError, match=r"\[B, T\]"):
        tiny.preprocess(torch.zeros(16000))


# --- checkpoints --------------------------------------------------------------------------------


def test_decoder_keys_dropped_with_warning():
    with pytest.warns(UserWarning, match=r"dropped 14 pre-training-only .*decoder"):
        eat.load(CKPT)


def test_fairseq_round_trip(tiny, tmp_path):
    ckpt = eat.to_fairseq(tiny)
    assert "modality_encoders.IMAGE.local_encoder.proj.weight" in ckpt["model"]
    assert ckpt["model"]["modality_encoders.IMAGE.fixed_positional_encoder.positions"].shape == (1, 6144, 192)
    torch.save(ckpt, tmp_path / "eat.pt")
    loaded = eat.load(tmp_path / "eat.pt")
    assert loaded.cfg == tiny.cfg
    wave = _wave(2.5)
    with torch.no_grad():
        assert torch.equal(loaded(wave), tiny(wave))


def test_hf_round_trip(tiny, tmp_path):
    folder = eat.to_hf(tiny, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["embed_dim"] == 192 and config["depth"] == 4 and config["max_length"] == 768
    from safetensors.torch import load_file

    keys = set(load_file(folder / "model.safetensors"))
    assert {"model.extra_tokens", "model.pre_norm.weight", "model.blocks.3.attn.qkv.weight"} <= keys
    assert "model.fixed_positional_encoder.positions" in keys
    wave = _wave(2.5)
    with torch.no_grad():
        expected = tiny(wave)
        for where in (folder, folder / "model.safetensors", folder / "config.json"):
            assert torch.equal(eat.load(where)(wave), expected)


def test_hf_finetune_head_dropped_with_warning(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = eat.to_hf(tiny, tmp_path / "hf")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.head.weight"] = torch.zeros(527, 192)
    save_file(tensors, folder / "model.safetensors")
    with pytest.warns(UserWarning, match="model.head.weight"):
        eat.load(folder)


def test_unexpected_key_is_named(tiny, tmp_path):
    ckpt = eat.to_fairseq(tiny)
    ckpt["model"]["blocks.0.attn.rel_bias"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(AsdError, match=r"unexpected keys blocks\.0\.attn\.rel_bias") as e:
        eat.load(tmp_path / "extra.pt")
    assert str(tmp_path / "extra.pt") in str(e.value)


def test_missing_key_is_named(tiny, tmp_path):
    ckpt = eat.to_fairseq(tiny)
    del ckpt["model"]["blocks.3.mlp.fc2.bias"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(AsdError, match=r"lacks keys blocks\.3\.mlp\.fc2\.bias") as e:
        eat.load(tmp_path / "missing.pt")
    assert "missing.pt" in str(e.value)


def test_many_missing_keys_are_counted(tiny, tmp_path):
    ckpt = eat.to_fairseq(tiny)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("blocks.3.")}
    torch.save(ckpt, tmp_path / "short.pt")
    with pytest.raises(AsdError, match=r"lacks keys .* and 7 more"):  # 12 missing, 5 shown
        eat.load(tmp_path / "short.pt")


def test_shape_mismatch_is_named(tiny, tmp_path):
    ckpt = eat.to_fairseq(tiny)
    ckpt["model"]["blocks.1.norm2.weight"] = torch.ones(7)
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(AsdError, match=r"blocks\.1\.norm2\.weight has shape \(7,\)"):
        eat.load(tmp_path / "shape.pt")


def test_garbage_file_raises_with_path(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    with pytest.raises(AsdError) as e:
        eat.load(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_beats_checkpoint_raises_with_path():
    with pytest.raises(AsdError, match="BEATs") as e:
        eat.load(FIXTURES / "beats_tiny.pt")
    assert "beats_tiny.pt" in str(e.value)


def test_other_layouts_raise(tmp_path):
    torch.save({"model": {"encoder.layers.0.weight": torch.zeros(2)}, "cfg": {"model": {}}}, tmp_path / "x.pt")
    with pytest.raises(AsdError, match="no modality_encoders.IMAGE"):
        eat.load(tmp_path / "x.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(AsdError, match="not an EAT checkpoint"):
        eat.load(tmp_path / "list.pt")
    with pytest.raises(AsdError, match="not found"):
        eat.load(tmp_path / "absent.pt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(AsdError, match="lacks model.safetensors"):
        eat.load(tmp_path / "hf")


def test_overrides(tiny, tmp_path):
    assert eat.load(size="tiny", depth=2).cfg.depth == 2
    assert eat.load(size="tiny", sdpa=False).blocks[0].attn.use_sdpa is False
    with pytest.raises(AsdError, match="unknown EAT option"):
        eat.load(size="tiny", layers=3)
    torch.save(eat.to_fairseq(tiny), tmp_path / "eat.pt")
    with pytest.raises(AsdError, match="conflicts"):
        eat.load(tmp_path / "eat.pt", depth=12)
    assert eat.load(tmp_path / "eat.pt", sdpa=False).blocks[0].attn.use_sdpa is False


# --- fairseq checkpoints: OmegaConf config, trainer state, restricted unpickling ------------------


@pytest.fixture
def no_omegaconf(monkeypatch):
    """Make omegaconf and fairseq unimportable (dvc installs omegaconf; loading must not need it)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("omegaconf", "fairseq")] + ["omegaconf", "fairseq"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_dictconfig_checkpoint_gives_the_same_model(official, no_omegaconf):
    with pytest.warns(UserWarning, match=r"dropped 14 pre-training-only .*decoder"):
        model = eat.load(OMEGACONF_CKPT)
    assert model.cfg == official.cfg
    assert model.state_dict().keys() == official.state_dict().keys()
    assert all(torch.equal(v, official.state_dict()[k]) for k, v in model.state_dict().items())
    wave = _wave(2.0)
    with torch.no_grad():
        assert torch.equal(model(wave), official(wave))


def test_dictconfig_becomes_plain_data(no_omegaconf):
    plain = torch.load(CKPT, map_location="cpu", weights_only=True)
    ckpt = read_checkpoint(OMEGACONF_CKPT)
    assert set(ckpt) == {"args", "cfg", "model"}  # optimizer, meters and task state are left out
    assert ckpt["args"] is None
    cfg = ckpt["cfg"]
    assert type(cfg) is dict and type(cfg["model"]) is dict and type(cfg["optimization"]["lr"]) is list
    # every value node gives its plain value; interpolations stay the strings they are in the file
    assert cfg["model"] == {"_name": "data2vec_multi", **plain["cfg"]["model"]}
    assert cfg["model"]["modalities"]["image"]["model_depth"] == "${model.depth}"
    assert cfg["task"]["input_size"] == [1024, 128] and cfg["scoring"] is None
    assert cfg["optimizer"]["groups"]["default"]["optimizer"]["adam_betas"] == [0.9, 0.95]
    # the typed section (dataclass schema and enum of classes absent here) gives plain values too
    assert cfg["common"] == {
        "_name": None, "no_progress_bar": False, "log_interval": 200, "log_format": "simple", "seed": 1,
        "fp16": True, "fp16_init_scale": 128, "min_loss_scale": 0.0001, "user_dir": "EAT",
    }  # fmt: skip
    assert ckpt["model"].keys() == plain["model"].keys()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in plain["model"].items())
    assert "omegaconf" not in repr(ckpt["cfg"])


class _Payload:
    """Unpickles as os.system creating `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_code_in_a_checkpoint_is_refused_and_never_run(tiny, tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))  # plain pickle does run it
    assert control.exists()

    marker = tmp_path / "marker"
    ckpt = eat.to_fairseq(tiny)
    ckpt["extra_state"] = {"metrics": {"train": _Payload(marker)}, "previous_best": 0.5}
    path = tmp_path / "hostile.pt"
    torch.save(ckpt, path)
    with pytest.raises(AsdError) as e:
        eat.load(path)
    system = f"{os.system.__module__}.system"  # posix.system
    assert str(e.value) == f"{path}: refuses to load class {system!r} from the checkpoint (not a tensor or config)"
    assert not marker.exists()


class _Meter:
    def __init__(self):
        self.val = 1.0


class _Tracks(list):
    pass


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize(
    "payload, refused",
    [
        (_Meter(), _qualname(_Meter)),  # an instance (NEWOBJ + BUILD)
        (_Tracks([1, 2]), _qualname(_Tracks)),  # a list subclass: pickle fails on the stand-in
        ({"factory": _Meter}, _qualname(_Meter)),  # a class named but never called
        (collections.defaultdict(_Meter), _qualname(_Meter)),
        (Path("x").touch, "builtins.getattr"),  # a bound method, pickled through getattr
    ],
    ids=["instance", "list-subclass", "class", "defaultdict-factory", "method"],
)
def test_any_other_class_is_refused(tiny, tmp_path, payload, refused):
    ckpt = eat.to_fairseq(tiny)
    ckpt["extra_state"] = {"metrics": payload}
    path = tmp_path / "foreign.pt"
    torch.save(ckpt, path)
    with pytest.raises(AsdError) as e:
        eat.load(path)
    assert str(e.value) == f"{path}: refuses to load class {refused!r} from the checkpoint (not a tensor or config)"


def test_trainer_state_of_allowed_types_is_read_and_left_out(tiny, tmp_path):
    import argparse

    ckpt = eat.to_fairseq(tiny)
    ckpt["args"] = argparse.Namespace(arch="data2vec_multi", lr=[0.0005], seed=np.int64(1))
    ckpt["extra_state"] = {"best": np.float64(0.5), "curve": np.arange(3.0), "counts": collections.Counter(a=2)}
    ckpt["last_optimizer_state"] = {"state": {0: {"exp_avg": torch.ones(3)}}}
    torch.save(ckpt, tmp_path / "state.pt")
    loaded = read_checkpoint(tmp_path / "state.pt")
    assert set(loaded) == {"cfg", "model", "args"}
    assert loaded["args"] == {"arch": "data2vec_multi", "lr": [0.0005], "seed": None}  # numpy values -> None
    with torch.no_grad():
        assert torch.equal(eat.load(tmp_path / "state.pt")(_wave(1.0)), tiny(_wave(1.0)))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_loaded_weights_do_not_depend_on_the_file(tiny, tmp_path, legacy):
    path = tmp_path / "eat.pt"
    torch.save(eat.to_fairseq(tiny), path, _use_new_zipfile_serialization=not legacy)
    model = eat.load(path)
    path.write_bytes(bytes(path.stat().st_size))  # zip files are memory-mapped while read
    wave = _wave(1.0)
    with torch.no_grad():
        assert torch.equal(model(wave), tiny(wave))


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(AsdError) as e:
        eat.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: not a checkpoint") and "\n" not in message
    assert "weights_only" not in message.lower().replace(" ", "_")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, used here only to make one
def test_torchscript_archive_is_refused_unrun(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(AsdError, match="not a checkpoint: a TorchScript archive"):
        eat.load(path)


def test_sample_rate_is_the_audio_modules():
    import asdtool.data.audio

    assert eat.SAMPLE_RATE is asdtool.data.audio.SAMPLE_RATE == 16000
