"""Tests for asdtool/models/backbones/registry.py: which backbones and sizes exist, building one, counting parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asdtool.config.choices import Backbone, Size
from asdtool.core.errors import AsdError
from asdtool.models.backbones import beats, eat
from asdtool.models.backbones.registry import BACKBONE_MODULES, count_parameters, load_backbone
from tests import paths


def test_every_backbone_choice_has_a_module():
    assert Backbone.values() == ("beats", "eat") and Size.values() == ("tiny", "base")
    assert BACKBONE_MODULES == {"beats": "asdtool.models.backbones.beats", "eat": "asdtool.models.backbones.eat"}
    assert set(BACKBONE_MODULES) == set(Backbone.values())


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["wav2vec", "BEATs", "", "dual"])
def test_an_unknown_backbone_is_refused_by_name(name):
    with pytest.raises(AsdError) as error:
        load_backbone(name, size="tiny")
    assert str(error.value) == f"unknown backbone {name!r}; choose one of beats, eat"


@pytest.mark.parametrize("size", ["huge", "Tiny", "", "small"])
@pytest.mark.parametrize("name", ["beats", "eat"])
def test_an_unknown_size_is_refused_by_name(name, size):
    with pytest.raises(AsdError) as error:
        load_backbone(name, size=size)
    assert str(error.value) == f"unknown backbone size {size!r}; choose one of tiny, base"


def test_the_name_is_checked_before_the_size():
    with pytest.raises(AsdError, match="^unknown backbone 'x';"):
        load_backbone("x", size="huge")


def test_a_missing_checkpoint_is_refused_with_its_path(tmp_path):
    for name in Backbone.values():
        with pytest.raises(AsdError, match="not found") as error:
            load_backbone(name, tmp_path / "absent.pt", size="tiny")
        assert str(tmp_path / "absent.pt") in str(error.value)


# ----------------------------------------------------------------------------- count_parameters


def test_count_parameters_of_a_plain_module():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    assert count_parameters(m) == (3 * 4 + 4 + 4 * 2, 3 * 4 + 4 + 4 * 2)
    assert count_parameters(nn.ReLU()) == (0, 0)


def test_a_module_used_twice_counts_once():
    shared = nn.Linear(3, 3)
    m = nn.Sequential(shared, nn.Tanh(), shared)
    assert count_parameters(m) == (12, 12)


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10)
            self.out.weight = self.embed.weight  # the usual input-output tie

    assert count_parameters(Tied()) == (40 + 10, 40 + 10)


def test_frozen_parameters_count_in_the_total_only():
    m = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 2))
    m[0].requires_grad_(False)
    assert count_parameters(m) == (30 + 12, 12)
    m[1].bias.requires_grad_(False)
    assert count_parameters(m) == (42, 10)
    m.requires_grad_(False)
    assert count_parameters(m) == (42, 0)


def test_buffers_are_not_parameters():
    m = nn.BatchNorm1d(6)  # weight, bias; running_mean, running_var, num_batches_tracked are buffers
    assert count_parameters(m) == (12, 12)


# ----------------------------------------------------------------------------- load_backbone


@pytest.mark.parametrize("name, module", [("beats", beats), ("eat", eat)])
def test_load_backbone_builds_a_tiny_random_model_in_eval_mode(name, module):
    torch.manual_seed(0)
    m = load_backbone(name, size="tiny")
    assert type(m) is (module.BEATs if name == "beats" else module.EAT)
    assert not m.training and all(not sub.training for sub in m.modules())
    assert (m.embed_dim, m.num_layers, m.num_heads) == (192, 4, 4)
    total, trainable = count_parameters(m)
    unique = {p.data_ptr(): p.numel() for _, p in m.named_parameters(remove_duplicate=False)}
    assert total == trainable == sum(unique.values()) and 0 < total < 10_000_000
    torch.manual_seed(0)
    again = load_backbone(name, size="tiny")  # the same seed: the same weights
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    with torch.no_grad():
        tokens = m(0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)))
    assert tokens.shape[0] == 1 and tokens.shape[2] == 192 and torch.isfinite(tokens).all()


def test_load_backbone_is_the_backbones_own_load():
    torch.manual_seed(3)
    via_registry = load_backbone("eat", size="tiny")
    torch.manual_seed(3)
    direct = eat.load(size="tiny")
    assert via_registry.cfg == direct.cfg
    assert all(torch.equal(a, b) for a, b in zip(via_registry.state_dict().values(), direct.state_dict().values()))


def test_load_backbone_passes_overrides_on():
    m = load_backbone("beats", size="tiny", dropout=0.25, encoder_layerdrop=0.0)
    assert m.cfg.dropout == 0.25 and m.cfg.encoder_layerdrop == 0.0
    assert m.cfg.encoder_layers == 4  # the rest is the tiny size's
    with pytest.raises(AsdError, match="unknown BEATs config fields: bogus"):
        load_backbone("beats", size="tiny", bogus=1)


def test_load_backbone_reads_a_checkpoint():
    ckpt = paths.FIXTURES / "beats_tiny.pt"
    m = load_backbone("beats", ckpt, size="tiny")
    ref = beats.load(ckpt)
    assert not m.training and m.cfg == ref.cfg
    assert m.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in m.state_dict().items())
    random_init = load_backbone("beats", size="tiny")
    assert not torch.equal(next(iter(m.state_dict().values())), next(iter(random_init.state_dict().values())))
