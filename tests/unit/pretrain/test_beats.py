"""BEATs pre-training objective: random-projection labels, masks, masked encoding, loss, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asdtool.config.stages import PretrainConfig
from asdtool.core.errors import AsdError
from asdtool.models.backbones import beats
from asdtool.pretrain import beats as pretrain
from tests import paths

PATCH = 16
OFFICIAL = paths.FIXTURES / "beats_tiny.pt"  # a 2-layer checkpoint in the official layout


def config(**overrides) -> PretrainConfig:
    return PretrainConfig(out=Path("unused"), backbone="beats", size="tiny", **overrides)


def objective(seed: int = 0, **overrides) -> pretrain.Objective:
    torch.manual_seed(seed)
    # layerdrop draws from torch's global RNG; off, a forward depends on the generator alone
    return pretrain.build_objective(beats.load(size="tiny", encoder_layerdrop=0.0).train(), config(**overrides))


def stationary_fbank(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    """A steady spectrum per clip plus a little noise, as a running machine gives."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, 1, 128, generator=g) + 0.1 * torch.randn(batch, frames, 128, generator=g)


@pytest.fixture(scope="module")
def obj():
    return objective()


# ----------------------------------------------------------------------------- tokenizer


def test_patchify_orders_patches_as_the_patch_embedding_does(obj):
    fbank = torch.randn(2, 40, 128)  # 40 frames: the last 8 fall outside a whole patch
    patches = pretrain.patchify(fbank, PATCH)
    assert patches.shape == (2, 2 * 8, 256)
    conv = obj.student.patch_embedding
    with torch.no_grad():
        expected = conv(fbank.unsqueeze(1)).flatten(2).transpose(1, 2)  # (B, N, E)
        got = patches @ conv.weight.flatten(1).t()
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(patches[1, 8 + 3], fbank[1, 16:32, 48:64].flatten())  # time 1, band 3


def test_labels_are_the_nearest_normalised_codes(obj):
    tokenizer = obj.tokenizer
    fbank = torch.randn(3, 64, 128)
    labels = tokenizer(fbank)
    assert labels.shape == (3, 32) and labels.dtype == torch.long
    patches = pretrain.patchify(fbank, PATCH)
    patches = (patches - patches.mean(-1, keepdim=True)) / patches.std(-1, unbiased=False, keepdim=True)
    projected = F.normalize(patches @ tokenizer.projection.t(), dim=-1).flatten(0, 1)
    distances = torch.cdist(projected, F.normalize(tokenizer.codebook, dim=-1))  # (B N, K)
    assert torch.equal(labels.flatten(), distances.argmin(-1))


def test_labels_are_deterministic_in_range_and_spread(obj):
    fbank = torch.randn(8, 198, 128, generator=torch.Generator().manual_seed(0))
    labels = obj.tokenizer(fbank)
    assert torch.equal(labels, obj.tokenizer(fbank))
    assert labels.min() >= 0 and labels.max() < 1024
    # 768 patches over 1024 codes: a uniform draw would hit about 540 distinct codes
    assert labels.unique().numel() > 400
    assert tuple(obj.tokenizer.projection.shape) == (16, 256) and tuple(obj.tokenizer.codebook.shape) == (1024, 16)


def test_labels_ignore_the_level_and_scale_of_each_patch(obj):
    # each patch is standardised on its own: a gain or an offset of the recording changes no label
    fbank = torch.randn(2, 64, 128)
    assert torch.equal(obj.tokenizer(3.0 * fbank - 1.5), obj.tokenizer(fbank))


def test_tokenizer_is_frozen_saved_and_drawn_from_the_seed():
    a, b, c = objective(seed=0), objective(seed=0), objective(seed=1)
    assert torch.equal(a.tokenizer.codebook, b.tokenizer.codebook)
    assert not torch.equal(a.tokenizer.codebook, c.tokenizer.codebook)
    assert list(a.tokenizer.parameters()) == []
    assert not any(t.requires_grad for t in a.tokenizer.buffers())
    assert {"tokenizer.projection", "tokenizer.codebook"} <= set(a.state_dict())

    fbank = stationary_fbank(2, 64)
    before = a.tokenizer(fbank)
    optimiser = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        loss, _ = a(fbank, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        a.after_step(0, 2)
    assert torch.equal(a.tokenizer(fbank), before)

    c.load_state_dict(a.state_dict())  # a resumed run gets the tokenizer back from the state dict
    assert torch.equal(c.tokenizer(fbank), before)


def test_labels_are_the_same_under_bf16_autocast(obj):
    fbank = torch.randn(2, 64, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels = obj.tokenizer(fbank)
        loss, stats = obj(fbank, torch.Generator().manual_seed(0))
    assert torch.equal(labels, obj.tokenizer(fbank))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    obj.zero_grad()


# ----------------------------------------------------------------------------- masks


def test_masks_have_the_ratio_and_repeat_for_the_same_generator_state():
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    keep, masked = pretrain.mask_patches(8, 96, 0.75, generator)
    assert keep.shape == (8, 24) and masked.shape == (8, 72)
    together = torch.cat([keep, masked], dim=1).sort(dim=1).values
    assert torch.equal(together, torch.arange(96).expand(8, -1))  # disjoint, and every patch in one
    assert torch.equal(keep, keep.sort(dim=1).values) and torch.equal(masked, masked.sort(dim=1).values)
    assert not torch.equal(masked[0], masked[1])  # each clip draws its own

    again = torch.Generator()
    again.set_state(state)
    keep2, masked2 = pretrain.mask_patches(8, 96, 0.75, again)
    assert torch.equal(keep, keep2) and torch.equal(masked, masked2)
    assert torch.equal(generator.get_state(), again.get_state())
    assert not torch.equal(pretrain.mask_patches(8, 96, 0.75, generator)[1], masked)  # the next draw differs


@pytest.mark.parametrize(("ratio", "n", "masked"), [(0.75, 8, 6), (0.99, 8, 7), (0.01, 8, 1), (0.5, 2, 1)])
def test_masks_keep_and_mask_at_least_one_patch(ratio, n, masked):
    keep, mask = pretrain.mask_patches(2, n, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (2, masked) and keep.shape == (2, n - masked)


def test_too_few_patches_are_rejected():
    with pytest.raises(AsdError, match="at least 2 patches"):
        pretrain.mask_patches(2, 1, 0.75, torch.Generator())


def test_loss_repeats_for_the_same_generator_state():
    a, b = objective(seed=0), objective(seed=0)
    fbank = stationary_fbank(2, 64)
    loss_a, _ = a(fbank, torch.Generator().manual_seed(5))
    loss_b, _ = b(fbank, torch.Generator().manual_seed(5))
    loss_c, _ = b(fbank, torch.Generator().manual_seed(6))
    assert torch.equal(loss_a, loss_b) and not torch.equal(loss_a, loss_c)


# ----------------------------------------------------------------------------- masked encoding


def test_encoding_all_patches_as_unmasked_is_encode(obj):
    student = obj.student.eval()
    fbank = torch.randn(2, 64, 128)
    with torch.no_grad():
        whole = student.encode(fbank)
        subset = student.encode_unmasked(fbank, torch.arange(32).expand(2, -1))
    obj.student.train()
    assert torch.allclose(subset, whole, atol=1e-5)


def put_patch(fbank: torch.Tensor, n: int, content: torch.Tensor) -> None:
    t, f = divmod(n, 8)
    fbank[0, t * PATCH : (t + 1) * PATCH, f * PATCH : (f + 1) * PATCH] = content


def test_masked_patches_do_not_reach_the_encoder_and_kept_ones_keep_their_place(obj):
    student = obj.student.eval()
    fbank = torch.randn(1, 64, 128)
    keep, masked = pretrain.mask_patches(1, 32, 0.75, torch.Generator().manual_seed(0))
    patches = pretrain.patchify(fbank, PATCH)[0]  # (32, 256)
    changed = fbank.clone()
    for n in masked[0].tolist():
        put_patch(changed, n, torch.randn(PATCH, PATCH))
    # every kept patch one time step (8 positions) later: all distances stay
    shifted = torch.cat([torch.randn(1, PATCH, 128), fbank], dim=1)
    # the kept contents packed into the first 8 positions: other distances
    packed = torch.randn(1, 64, 128)
    for i, n in enumerate(keep[0].tolist()):
        put_patch(packed, i, patches[n].view(PATCH, PATCH))
    with torch.no_grad():
        tokens = student.encode_unmasked(fbank, keep)
        assert tokens.shape == (1, 8, 192)
        assert torch.allclose(student.encode_unmasked(changed, keep), tokens, atol=1e-6)
        assert torch.allclose(student.encode_unmasked(shifted, keep + 8), tokens, atol=1e-5)
        assert not torch.allclose(student.encode_unmasked(packed, torch.arange(8)[None]), tokens, atol=1e-2)
    obj.student.train()


# ----------------------------------------------------------------------------- loss


def test_loss_starts_near_log_codebook_size_and_falls():
    obj = objective(seed=0)
    fbank = stationary_fbank(2, 96)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        loss, stats = obj(fbank, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(1024)) < 0.2
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
    assert set(stats) == {"accuracy", "codes_used"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    assert 0.1 < stats["accuracy"] <= 1.0


def test_loss_is_the_cross_entropy_of_the_masked_labels():
    obj = objective(seed=0)
    assert len(obj.label_predictor.transformer.layers) == 1  # a quarter of tiny's 4 layers
    assert pretrain.predictor_layers(12) == 3  # the base encoder
    fbank = stationary_fbank(2, 64)
    loss, stats = obj(fbank, torch.Generator().manual_seed(0))
    keep, masked = pretrain.mask_patches(2, 32, 0.75, torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoded = obj.student.encode_unmasked(fbank, keep)  # (2, 8, 192)
        full = torch.zeros(2, 32, 192)
        full[torch.arange(2)[:, None], keep] = encoded
        logits = obj.label_predictor(full, masked)  # (2, 24, 1024)
    targets = obj.tokenizer(fbank).gather(1, masked)
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()), atol=1e-6)
    assert torch.equal(stats["accuracy"], (logits.argmax(-1) == targets).float().mean())
    assert stats["codes_used"] == obj.tokenizer(fbank).unique().numel()

    loss.backward()
    trained = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert all(obj.get_parameter(n).grad is not None for n in trained)


# ----------------------------------------------------------------------------- build and export


def test_build_objective_takes_the_paper_defaults_and_the_overrides():
    obj = objective()
    assert obj.mask_ratio == 0.75
    assert obj.tokenizer.codebook_size == 1024 and obj.tokenizer.codebook.shape[1] == 16
    other = objective(mask_ratio=0.5, codebook_size=64, codebook_dim=8)
    assert other.mask_ratio == 0.5 and tuple(other.tokenizer.codebook.shape) == (64, 8)
    assert other.label_predictor.head.out_features == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"mask_ratio": 1.0}, "--mask-ratio"), ({"codebook_size": 0}, "--codebook-size"),
     ({"codebook_dim": 2.5}, "--codebook-dim")],
)  # fmt: skip
def test_bad_knobs_are_rejected(overrides, message):
    with pytest.raises(AsdError, match=message):
        pretrain.build_objective(beats.load(size="tiny"), config(**overrides))


def test_only_beats_backbones_are_accepted():
    with pytest.raises(AsdError, match="needs a BEATs backbone"):
        pretrain.build_objective(torch.nn.Linear(2, 2), config())


def test_export_loads_as_the_official_checkpoint_with_the_students_tokens(tmp_path):
    obj = objective(seed=2)
    fbank = stationary_fbank(2, 64)
    optimiser = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    loss, _ = obj(fbank, torch.Generator().manual_seed(0))
    loss.backward()
    optimiser.step()  # trained weights, not the initial ones

    exported = pretrain.export(obj)
    assert set(exported) == {"cfg", "model"}
    keys = set(exported["model"])
    assert keys == set(beats.to_official(beats.load(size="tiny"))["model"])
    official_names = {
        "patch_embedding.weight",
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.layers.3.self_attn.grep_a",
        "encoder.layers.0.self_attn.relative_attention_bias.weight",
    }
    assert official_names <= keys
    assert not any(k.startswith(("predictor", "label_predictor", "tokenizer")) for k in keys)
    assert exported["cfg"]["finetuned_model"] is False

    path = tmp_path / "checkpoint.pt"
    torch.save(exported, path)
    loaded = beats.load(path)
    student = obj.student.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(fbank), student.encode(fbank))
    assert loaded.cfg == student.cfg


def test_export_of_a_run_started_from_official_weights_keeps_the_official_layout():
    official = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    obj = pretrain.build_objective(beats.load(OFFICIAL).train(), config())
    assert len(obj.label_predictor.transformer.layers) == 1
    exported = pretrain.export(obj)
    assert exported["cfg"] == official["cfg"]
    assert set(exported["model"]) == set(official["model"])
    assert all(torch.equal(exported["model"][k], v) for k, v in official["model"].items())
