"""LoRA through peft on the real tiny backbones: targets, frozen weights, adapter save/load."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.models import lora
from asdtool.models.backbones.registry import count_parameters, load_backbone
from asdtool.models.classifier import build_classifier
from asdtool.models.lora import adapter_state_dict, apply_lora, load_adapter_state_dict, lora_modules

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # peft's notes on non-transformers models

# tiny sizes: 4 layers x 192 dims, as load_backbone(size="tiny") builds them
LAYERS, DIM = 4, 192
EXPECTED = {
    "beats": {f"base_model.model.encoder.layers.{i}.self_attn.{p}" for i in range(LAYERS)
              for p in ("q_proj", "v_proj", "out_proj")},
    "eat": {f"base_model.model.blocks.{i}.attn.{p}" for i in range(LAYERS) for p in ("qkv", "proj")},
}  # fmt: skip
# adapter parameters at rank r: A (in x r) + B (r x out) per adapted Linear
PER_LAYER = {"beats": 3 * (DIM + DIM), "eat": (DIM + 3 * DIM) + (DIM + DIM)}


def _wave(batch: int = 2, seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=g)


def _randomise_adapters(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_only_attention_projections_get_adapters(name):
    torch.manual_seed(0)
    backbone = load_backbone(name, size="tiny")
    total_before, _ = count_parameters(backbone)
    wave = _wave()
    with torch.no_grad():
        before = backbone(wave)
    wrapped = apply_lora(backbone, name, rank=8)
    assert set(lora_modules(wrapped)) == EXPECTED[name]
    total, trainable = count_parameters(wrapped)
    assert trainable == LAYERS * 8 * PER_LAYER[name]
    assert total == total_before + trainable
    trainable_names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable_names and all(re.search(r"\.lora_[AB]\.default\.weight$", n) for n in trainable_names)
    # the backbone's API reaches through the wrapper, and a fresh adapter (B = 0) changes nothing
    assert wrapped.embed_dim == DIM
    with torch.no_grad():
        after = wrapped.encode(wrapped.preprocess(wave))
        torch.testing.assert_close(after, before)
        torch.testing.assert_close(wrapped(wave), before)


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_optimiser_step_changes_adapters_and_head_only(name):
    torch.manual_seed(1)
    model = build_classifier(name, 3, size="tiny", lora_rank=4, hidden_dim=16, emb_dim=8, bottleneck=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_trainable = {n for n in trainable if n.startswith("branch.backbone.")}
    assert backbone_trainable and all(".lora_" in n for n in backbone_trainable)
    assert {n for n in trainable if not n.startswith("branch.backbone.")} == {
        n for n, _ in model.named_parameters() if n.startswith(("branch.head.", "arcface."))
    }
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(2):  # two steps: lora_A only moves once lora_B is non-zero
        loss, _ = model.loss(_wave(4, seed=step), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
            assert p.grad is None, n
        else:
            assert not torch.equal(p, start[n]), n
    assert frozen  # the whole pre-trained backbone


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_adapter_weights_round_trip(name, tmp_path):
    torch.manual_seed(2)
    base = load_backbone(name, size="tiny")
    twin = load_backbone(name, size="tiny")
    twin.load_state_dict(base.state_dict())
    a, b = apply_lora(base, name, rank=4), apply_lora(twin, name, rank=4)
    _randomise_adapters(a, seed=3)
    state = adapter_state_dict(a)
    assert all("lora_" in k for k in state)
    assert sum(v.numel() for v in state.values()) == count_parameters(a)[1]
    torch.save(state, tmp_path / "adapters.pt")
    wave = _wave()
    with torch.no_grad():
        assert not torch.allclose(a(wave), b(wave))
        load_adapter_state_dict(b, torch.load(tmp_path / "adapters.pt", weights_only=True))
        torch.testing.assert_close(b(wave), a(wave))


def test_adapter_loading_rejects_a_mismatch():
    torch.manual_seed(4)
    a = apply_lora(load_backbone("eat", size="tiny"), "eat", rank=4)
    state = adapter_state_dict(a)
    other_rank = apply_lora(load_backbone("eat", size="tiny"), "eat", rank=8)
    with pytest.raises(AsdError, match="adapters.pt: adapter weights do not fit"):
        load_adapter_state_dict(other_rank, state, path="adapters.pt")
    incomplete = dict(list(state.items())[1:])
    with pytest.raises(AsdError, match="1 missing"):
        load_adapter_state_dict(a, incomplete)
    with pytest.raises(AsdError, match="1 unexpected"):
        load_adapter_state_dict(a, {**state, "base_model.model.blocks.0.attn.qkv.lora_C.weight": torch.zeros(1)})
    beats = apply_lora(load_backbone("beats", size="tiny"), "beats", rank=4)
    with pytest.raises(AsdError, match="do not fit"):
        load_adapter_state_dict(beats, state)
    with pytest.raises(AsdError, match="no LoRA adapters"):
        adapter_state_dict(load_backbone("eat", size="tiny"))


def test_dual_adapters_keep_their_branches_apart():
    torch.manual_seed(5)
    model = build_classifier("dual", 2, size="tiny", lora_rank=2, hidden_dim=8, emb_dim=8, bottleneck=4)
    state = adapter_state_dict(model)
    assert {k.split(".")[0] for k in state} == {"beats", "eat"}
    assert sum(v.numel() for v in state.values()) == sum(
        p.numel() for n, p in model.named_parameters() if ".lora_" in n
    )


def test_sdpa_switch_reaches_through_the_wrapper():
    torch.manual_seed(6)
    wrapped = apply_lora(load_backbone("beats", size="tiny"), "beats", rank=4)
    _randomise_adapters(wrapped, seed=7)
    wave = _wave()
    with torch.no_grad():
        wrapped.set_sdpa(True)
        fused = wrapped(wave)
        wrapped.set_sdpa(False)
        math_path = wrapped(wave)
    torch.testing.assert_close(fused, math_path, atol=1e-4, rtol=1e-4)


def test_bad_lora_arguments():
    backbone = load_backbone("eat", size="tiny")
    with pytest.raises(AsdError, match="no LoRA targets"):
        apply_lora(backbone, "wav2vec", rank=4)
    with pytest.raises(AsdError, match="rank"):
        apply_lora(backbone, "eat", rank=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AsdError, match="cannot apply LoRA"):
            apply_lora(backbone, "beats", rank=4)  # BEATs module names do not exist in EAT


def test_count_parameters_counts_shared_tensors_once():
    shared = torch.nn.Linear(3, 2)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(2, 1))
    model[3].weight.requires_grad_(False)
    assert count_parameters(model) == (8 + 3, 8 + 1)
    # it lives in asdtool.models now; lora.py keeps neither it nor the unused merge helper
    assert not hasattr(lora, "count_parameters") and not hasattr(lora, "merge_lora")
