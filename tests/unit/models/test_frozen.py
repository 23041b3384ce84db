"""The frozen model: pooled tokens of a pre-trained backbone, and `asdtool embed --backbone`."""

from __future__ import annotations


import h5py
import pytest
import torch
from typer.testing import CliRunner

from asdtool.cli import app
from asdtool.core.errors import AsdError
from asdtool.models.frozen import FrozenEmbedder, load_frozen
from asdtool.models.backbones.registry import load_backbone
from asdtool.models.backbones.beats import to_official

from tests.conftest import make_machine

runner = CliRunner()


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_layers_and_pooling(name):
    torch.manual_seed(0)
    backbone = load_backbone(name, size="tiny")
    wave = 0.1 * torch.randn(2, 8000)
    depth = backbone.num_layers
    with torch.inference_mode():
        last = FrozenEmbedder(backbone, name).tokens(wave)
        full = backbone(wave)[:, 1 if name == "eat" else 0 :]
        assert torch.allclose(last, full)
        first = FrozenEmbedder(backbone, name, layer=0).tokens(wave)
        assert first.shape == last.shape and not torch.allclose(first, last)
        # layer l is the input of block l: running block l on it gives layer l + 1's states
        mid = FrozenEmbedder(backbone, name, layer=1).tokens(wave)
        assert not torch.allclose(mid, first) and not torch.allclose(mid, last)
        emb = FrozenEmbedder(backbone, name, layer=depth, pooling="meanstd").embed(wave)
    assert emb.shape == (2, 2 * backbone.embed_dim)
    assert torch.allclose(emb[:, : backbone.embed_dim], last.mean(1), atol=1e-6)
    assert torch.allclose(emb[:, backbone.embed_dim :], last.std(1, unbiased=False), atol=1e-6)
    with pytest.raises(AsdError, match=f"--layer must lie in 0..{depth}"):
        FrozenEmbedder(backbone, name, layer=depth + 1)


def test_random_init_is_seeded_and_a_checkpoint_is_fingerprinted(tmp_path):
    a, fa = load_frozen("beats", None, seed=3)
    b, _ = load_frozen("beats", None, seed=3)
    c, _ = load_frozen("beats", None, seed=4)
    sa, sb, sc = (m.backbone.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert fa == "random:beats-tiny:seed3"
    torch.save(to_official(a.backbone), tmp_path / "backbone.pt")
    d, fd = load_frozen("beats", tmp_path / "backbone.pt", layer=0)
    assert len(fd) == 64 and all(torch.equal(sa[k], v) for k, v in d.backbone.state_dict().items())
    with pytest.raises(AsdError, match="not found"):
        load_frozen("beats", tmp_path / "missing.pt")


def test_embed_cli_frozen(tmp_path):
    root = tmp_path / "dev"
    make_machine(root, "fan", [{"m-n": "W"}], n_train=2, n_test=1)
    out = tmp_path / "frozen.h5"
    result = runner.invoke(app, ["embed", "--backbone", "eat", "--layer", "1", "--pooling", "mean",
                                 "--data-root", str(root), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f.attrs["model"] == "frozen-eat"
        assert f["fan/train/embeddings"].shape == (3, 192) and f["fan/test/embeddings"].shape == (4, 192)
    result = runner.invoke(app, ["embed", "--data-root", str(root), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and "either --model" in result.output
    result = runner.invoke(app, ["embed", "--backbone", "beats", "--layer", "9", "--data-root", str(root),
                                 "--out", str(tmp_path / "y.h5")])  # fmt: skip
    assert result.exit_code == 1 and "--layer must lie in 0..4" in result.output
    assert not (tmp_path / "y.h5").exists()
