"""BEATs encoder: official reference vectors, checkpoint import/export, strict key checks."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asdtool.data.audio
from asdtool.core.errors import AsdError
from asdtool.models.backbones import beats
from asdtool.config.choices import Backbone, Size
from asdtool.models.backbones.registry import load_backbone

from tests.conftest import reference_errors_on_reproducible_fft
from tests import paths

FIXTURES = paths.FIXTURES
CKPT = FIXTURES / "beats_tiny.pt"
IO = FIXTURES / "beats_tiny_io.pt"


@pytest.fixture(scope="module")
def official():
    return torch.load(CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def io():
    return torch.load(IO, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return beats.load(CKPT)


def save(tmp_path, ckpt, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def max_err(a, b):
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- reference vectors


@pytest.mark.parametrize("sdpa", [True, False])
def test_encoder_matches_official_features(model, io, sdpa):
    model.set_sdpa(sdpa)
    with torch.no_grad():
        tokens = model.encode(io["fbank"])
    model.set_sdpa(True)
    assert tokens.shape == io["features"].shape == (2, 144, 64)
    assert max_err(tokens, io["features"]) < 1e-5


def test_preprocess_close_to_official_fbank(model, io):
    fbank = model.preprocess(io["wave"])
    assert fbank.shape == io["fbank"].shape == (2, 298, 128)
    # float32 FFTs differ by CPU code path; the few low mel bins with little energy see ~3e-5
    assert max_err(fbank, io["fbank"]) < 1e-4


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="reference fbank was made with MKL's FFT")
def test_wave_to_features_match_official_on_reproducible_fft():
    # MKL's conditional-reproducibility mode picks the FFT path the reference vectors were made on;
    # it must be set before MKL starts, hence a fresh interpreter
    errors = reference_errors_on_reproducible_fft("beats", CKPT, IO)
    assert set(errors) == {"fbank", "features_sdpa_True", "features_sdpa_False"}
    assert all(e < 1e-5 for e in errors.values()), errors


def test_forward_is_encode_of_preprocess(model, io):
    with torch.no_grad():
        assert torch.equal(model(io["wave"]), model.encode(model.preprocess(io["wave"])))


# ----------------------------------------------------------------------------- architecture


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    m = beats.load(size="tiny")
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        assert torch.equal(m(wave), m(wave))


def test_sdpa_and_math_paths_agree_on_tiny_random_model():
    torch.manual_seed(0)
    m = beats.load(size="tiny")
    wave = torch.randn(2, 24000) * 0.1
    with torch.no_grad():
        a = m.set_sdpa(True)(wave)
        b = m.set_sdpa(False)(wave)
    assert max_err(a, b) < 1e-5
    assert all(not layer.self_attn.use_sdpa for layer in m.encoder.layers)


def test_base_is_iter3_with_90_3m_parameters():
    with torch.device("meta"):
        m = beats.BEATs(beats.SIZES["base"])
    n = sum(p.numel() for p in m.parameters())  # the shared position table counts once
    assert n == 90_311_792
    assert round(n / 1e5) / 10 == 90.3
    assert m.embed_dim == 768 and len(m.encoder.layers) == 12
    assert (m.num_layers, m.num_heads) == (12, 12) and m.encoder.layers[0].self_attn.num_heads == 12


def test_sizes_are_configs():
    base, tiny = beats.SIZES["base"], beats.SIZES["tiny"]
    assert isinstance(base, beats.BEATsConfig) and isinstance(tiny, beats.BEATsConfig)
    assert (base.encoder_layers, base.encoder_embed_dim, base.max_distance, base.deep_norm) == (12, 768, 800, True)
    tiny_shape = (tiny.encoder_layers, tiny.encoder_embed_dim, tiny.encoder_attention_heads, tiny.embed_dim)
    assert tiny_shape == (4, 192, 4, 128)
    assert beats.load(size="tiny", dropout=0.3).cfg == beats.BEATsConfig(**{**vars(tiny), "dropout": 0.3})
    assert tiny.dropout == 0.0  # load copies the size's config before overriding


def test_relative_position_buckets():
    buckets = beats.relative_position_buckets(2000, 320, 800)
    row = buckets[1000]  # query at 1000, keys at 0..1999
    assert row[1000] == 0 and row[1001] == 161 and row[999] == 1  # exact near the diagonal
    assert row[1000 + 79] == 160 + 79 and row[1000 + 80] == 160 + 80  # log-spaced from 80 on
    assert row[1999] == 319 and row[0] == 159  # beyond max_distance: the last bucket
    assert torch.equal(buckets.diagonal(), torch.zeros(2000, dtype=torch.long))


def test_position_table_is_shared_by_all_layers(model):
    tables = {id(layer.self_attn.relative_attention_bias) for layer in model.encoder.layers}
    assert len(tables) == 1


def test_training_after_inference_mode_at_the_same_length():
    """The cached position buckets of an inference-mode forward must not break a later training step."""
    torch.manual_seed(0)
    m = beats.load(size="tiny", encoder_layerdrop=0.0)
    wave = torch.randn(2, 8800) * 0.1  # a length no other test uses, so the cache starts empty for it
    with torch.inference_mode():
        m.eval()(wave)
    m.train()(wave).pow(2).mean().backward()
    assert m.encoder.layers[0].self_attn.relative_attention_bias.weight.grad is not None


def test_training_step_backpropagates():
    torch.manual_seed(0)
    m = beats.load(size="tiny", encoder_layerdrop=0.0, dropout=0.1).train()
    m(torch.randn(2, 8000) * 0.1).pow(2).mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- checkpoints


def test_round_trip_through_official_layout(model, official, io, tmp_path):
    exported = beats.to_official(model)
    assert set(exported["model"]) == set(official["model"])  # weight_g / weight_v, every layer's table
    assert exported["cfg"] == official["cfg"]
    for key, value in official["model"].items():
        assert torch.equal(exported["model"][key], value), key
    again = beats.load(save(tmp_path, exported))
    with torch.no_grad():
        assert torch.equal(again(io["wave"]), model(io["wave"]))


def test_round_trip_of_random_tiny_model(tmp_path):
    torch.manual_seed(1)
    m = beats.load(size="tiny")
    again = beats.load(save(tmp_path, beats.to_official(m)))
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        assert torch.equal(again(wave), m(wave))
    assert again.cfg == m.cfg


def test_extra_key_is_rejected(official, tmp_path):
    ckpt = {"cfg": official["cfg"], "model": {**official["model"], "encoder.extra.weight": torch.zeros(1)}}
    path = save(tmp_path, ckpt)
    with pytest.raises(AsdError, match=r"unexpected keys \(encoder\.extra\.weight\)") as error:
        beats.load(path)
    assert str(path) in str(error.value)


def test_missing_key_is_rejected_under_its_official_name(official, tmp_path):
    state = {k: v for k, v in official["model"].items() if k != "encoder.pos_conv.0.weight_g"}
    path = save(tmp_path, {"cfg": official["cfg"], "model": state})
    with pytest.raises(AsdError, match=r"missing keys \(encoder\.pos_conv\.0\.weight_g\)"):
        beats.load(path)


def test_wrong_shape_is_rejected(official, tmp_path):
    state = {**official["model"], "encoder.layers.0.fc1.weight": torch.zeros(3, 3)}
    with pytest.raises(AsdError, match=r"encoder\.layers\.0\.fc1\.weight has shape \(3, 3\)"):
        beats.load(save(tmp_path, {"cfg": official["cfg"], "model": state}))


def test_predictor_of_finetuned_checkpoint_is_dropped_with_warning(official, model, io, tmp_path):
    state = {**official["model"], "predictor.weight": torch.zeros(527, 64), "predictor.bias": torch.zeros(527)}
    path = save(tmp_path, {"cfg": {**official["cfg"], "finetuned_model": True}, "model": state})
    with pytest.warns(UserWarning, match=r"dropped the AudioSet classifier head \(predictor\.bias"):
        m = beats.load(path)
    assert m.cfg.finetuned_model is False
    with torch.no_grad():
        assert torch.equal(m.encode(io["fbank"]), model.encode(io["fbank"]))


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n" * 10, random.Random(0).randbytes(4096), b""])
def test_garbage_file_is_rejected(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(AsdError) as error:
        beats.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a checkpoint: cannot read it as a PyTorch file (") and "\n" not in message
    assert "weights_only" not in message.lower().replace(" ", "_")  # not PyTorch's weights-only advice


def test_checkpoint_filter_returns_config_and_renamed_state(official):
    config, state = beats.checkpoint_filter_official(official, CKPT)
    assert config == beats.BEATsConfig(**official["cfg"])
    assert "encoder.pos_conv.0.parametrizations.weight.original0" in state
    assert "encoder.pos_conv.0.weight_g" not in state
    assert state.keys() == beats.BEATs(config).state_dict().keys()


class _Payload:
    """Unpickles as os.system creating `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_code_in_a_checkpoint_is_refused_and_never_run(official, tmp_path):
    marker = tmp_path / "marker"
    path = save(tmp_path, {**official, "label_dict": _Payload(marker)})
    with pytest.raises(AsdError) as error:
        beats.load(path)
    system = f"{os.system.__module__}.system"
    assert str(error.value) == f"{path}: refuses to load class {system!r} from the checkpoint (not a tensor or config)"
    assert not marker.exists()


def test_fairseq_dictconfig_checkpoint_is_pointed_to_eat():
    path = FIXTURES / "eat_tiny_fairseq_omegaconf.pt"
    with pytest.raises(AsdError, match="not a BEATs checkpoint.*load it as the eat backbone") as error:
        beats.load(path)
    assert str(path) in str(error.value)


def test_eat_checkpoint_is_rejected():
    path = FIXTURES / "eat_tiny.pt"
    with pytest.raises(AsdError, match="not a BEATs checkpoint.*fairseq") as error:
        beats.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "ckpt, message",
    [
        ({"model": {}}, "expected a dict with 'cfg' and 'model'"),
        ([1, 2], "expected a dict with 'cfg' and 'model'"),
        ({"cfg": {"encoder_layers": 2, "bogus": 1}, "model": {}}, r"unknown cfg keys \(bogus\)"),
    ],
)
def test_foreign_layouts_are_rejected(tmp_path, ckpt, message):
    path = save(tmp_path, ckpt)
    with pytest.raises(AsdError, match=message) as error:
        beats.load(path)
    assert str(path) in str(error.value)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(AsdError, match="not found"):
        beats.load(tmp_path / "absent.pt")


def test_overrides_with_checkpoint(tmp_path):
    m = beats.load(CKPT, dropout=0.2, encoder_layerdrop=0.0)
    assert m.cfg.dropout == 0.2 and m.cfg.encoder_layerdrop == 0.0
    with pytest.raises(AsdError, match="cannot override architecture fields.*encoder_layers"):
        beats.load(CKPT, encoder_layers=3)
    with pytest.raises(AsdError, match="unknown BEATs config fields: bogus"):
        beats.load(size="tiny", bogus=1)


def test_load_backbone_tiny():
    m = load_backbone("beats", size="tiny")
    assert m.embed_dim == 192
    with torch.no_grad():
        tokens = m(torch.randn(3, 32000) * 0.1)  # 2 s: 198 frames -> 12 x 8 patches
    assert tokens.shape == (3, 96, 192)
    assert not m.training


def test_too_short_clip_is_rejected():
    m = beats.load(size="tiny")
    with pytest.raises(AsdError, match="too short"):
        m(torch.zeros(1, 2000))


# ----------------------------------------------------------------------------- the shared backbone contract

CONTRACT = {  # backbone -> (config class, checkpoint filters, exporters)
    "beats": ("BEATsConfig", ["checkpoint_filter_official"], ["to_official"]),
    "eat": ("EATConfig", ["checkpoint_filter_fairseq", "checkpoint_filter_hf"], ["to_fairseq", "to_hf"]),
}


@pytest.mark.parametrize("name", Backbone.values())
def test_backbones_share_one_contract(name):
    module = importlib.import_module(f"asdtool.models.backbones.{name}")
    config_name, filters, exporters = CONTRACT[name]
    config_class = getattr(module, config_name)
    assert set(module.SIZES) == set(Size.values())
    assert all(type(config) is config_class for config in module.SIZES.values())
    assert list(inspect.signature(module.load).parameters) == ["checkpoint", "size", "overrides"]
    assert sorted(n for n in vars(module) if n.startswith("checkpoint_filter_")) == sorted(filters)
    assert sorted(n for n in vars(module) if n.startswith("to_")) == sorted(exporters)
    assert not {"from_official", "read_official", "_read_torch"} & set(vars(module))  # the names before
    assert module.SAMPLE_RATE is asdtool.data.audio.SAMPLE_RATE

    torch.manual_seed(0)
    model = load_backbone(name, size="tiny")
    assert (model.embed_dim, model.num_layers, model.num_heads) == (192, 4, 4)
    attention = model.encoder.layers[0].self_attn if name == "beats" else model.blocks[0].attn
    assert attention.num_heads == 4 and not hasattr(attention, "n_head")
    wave = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        tokens = model(wave)
        assert torch.equal(tokens, model.encode(model.preprocess(wave)))
        assert model.set_sdpa(False) is model
        assert (model(wave) - tokens).abs().max().item() < 1e-5
    assert tokens.shape[0] == 2 and tokens.shape[2] == 192


def test_unknown_backbone_or_size_is_rejected():
    with pytest.raises(AsdError, match="unknown backbone 'wav2vec'; choose one of beats, eat"):
        load_backbone("wav2vec")
    with pytest.raises(AsdError, match="unknown backbone size 'huge'"):
        load_backbone("eat", size="huge")


def test_models_package_imports_no_backbone_until_one_is_built():
    code = """
import json, sys
import asdtool.models.backbones.registry, asdtool.models.classifier
from asdtool.models.classifier import CLASSIFIERS
before = sorted(m for m in ("asdtool.models.backbones.beats", "asdtool.models.backbones.eat") if m in sys.modules)
asdtool.models.backbones.registry.load_backbone("eat", size="tiny")
after = sorted(m for m in ("asdtool.models.backbones.beats", "asdtool.models.backbones.eat") if m in sys.modules)
print(json.dumps([before, after, list(CLASSIFIERS)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, classifiers = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [] and after == ["asdtool.models.backbones.eat"]
    assert classifiers == ["beats", "eat", "dual"]
