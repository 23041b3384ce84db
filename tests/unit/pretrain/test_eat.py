"""Tests for asdtool/pretrain/eat.py: EAT's data2vec 2.0 pre-training objective, on the tiny size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asdtool.config.stages import PretrainConfig
from asdtool.core.errors import AsdError
from asdtool.models.backbones import eat
from asdtool.models.backbones.foreign import read_checkpoint
from asdtool.pretrain import eat as pe
from tests import paths

FIXTURES = paths.FIXTURES


def _student(**overrides) -> eat.EAT:
    torch.manual_seed(0)
    return eat.load(size="tiny", **overrides).train()


def _fbank(batch: int = 2, time_patches: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16 * time_patches, 128, generator=g)


def _cfg(**fields) -> PretrainConfig:
    return PretrainConfig(audio=[Path("audio")], out=Path("out"), backbone="eat", **fields)


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_patches", "ratio", "visible"), [(64, 0.8, 102), (13, 0.8, 20), (10, 0.8, 16), (3, 0.5, 12)]
)
def test_masks_have_the_requested_ratio(time_patches, ratio, visible):
    patches = time_patches * 8
    g = torch.Generator().manual_seed(0)
    keep, masked = pe.inverse_block_mask(32, time_patches, 8, ratio, g)
    assert keep.shape == (32, visible) and masked.shape == (32, patches - visible)
    assert visible == math.floor(patches * (1 - ratio) + 1e-6)  # 80 patches keep 16, not int(80 * 0.19999) = 15
    # every row splits the patches into visible and masked, each sorted
    both = torch.cat([keep, masked], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(patches).expand(32, -1))
    assert torch.all(keep.diff(dim=1) > 0) and torch.all(masked.diff(dim=1) > 0)


def test_masks_keep_blocks_visible():
    g = torch.Generator().manual_seed(0)
    keep, _ = pe.inverse_block_mask(64, 64, 8, 0.8, g)  # the paper's 1024-frame grid
    grid = torch.zeros(64, 64 * 8)
    grid.scatter_(1, keep, 1.0)
    grid = grid.view(64, 1, 64, 8)
    # share of visible patches with a visible 4-neighbour: blocks make it near 1, i.i.d. masks 1 - 0.8^4 = 0.59
    kernel = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    neighbours = F.conv2d(grid, kernel, padding=1)
    share = ((neighbours > 0) & (grid > 0)).sum() / grid.sum()
    assert share > 0.9


def test_masks_repeat_for_the_same_generator_state_and_differ_otherwise():
    a = pe.inverse_block_mask(16, 13, 8, 0.8, torch.Generator().manual_seed(7))
    b = pe.inverse_block_mask(16, 13, 8, 0.8, torch.Generator().manual_seed(7))
    c = pe.inverse_block_mask(16, 13, 8, 0.8, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # the clones of one step get their own masks (two may coincide: a block cut at the grid's edge
    # can hold exactly the 20 visible patches)
    assert len({tuple(row.tolist()) for row in a[0]}) >= 12


def test_too_few_patches_is_one_line():
    with pytest.raises(AsdError, match="at least 2 patches"):
        pe.inverse_block_mask(2, 1, 1, 0.8, torch.Generator())


# --- targets ----------------------------------------------------------------------------------


def test_frame_targets_follow_data2vec2():
    g = torch.Generator().manual_seed(0)
    layers = [3 * torch.randn(2, 24, 16, generator=g) + 1 for _ in range(3)]
    # reference: F.instance_norm per layer over the patches (B, C, T), average, layer norm without affine
    normed = [F.instance_norm(h.transpose(1, 2)).transpose(1, 2) for h in layers]
    expected = F.layer_norm(sum(normed) / 3, (16,))
    got = pe.frame_targets(layers)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # bf16 layer outputs (autocast) still give float32 targets
    assert pe.frame_targets([h.bfloat16() for h in layers]).dtype == torch.float32


def test_teacher_runs_once_per_clip_on_every_patch():
    objective = pe.Objective(_student(), clones=4)
    seen = []
    original = objective.teacher.encode_tokens

    def spy(x, ffn_outputs=None):
        seen.append(tuple(x.shape))
        return original(x, ffn_outputs)

    objective.teacher.encode_tokens = spy
    objective(_fbank(batch=2, time_patches=3), torch.Generator().manual_seed(0))
    assert seen == [(2, 24, 192)]  # 2 clips, all 3 x 8 patches, not the 2 x 4 masked copies


# --- loss and gradients -----------------------------------------------------------------------


def test_teacher_gets_no_gradient():
    objective = pe.Objective(_student(), clones=2)
    loss, stats = objective(_fbank(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in objective.teacher.parameters())
    assert not objective.teacher.training and objective.student.training
    trainable = {n.split(".")[0] for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable == {"student", "decoder"}
    # every student and decoder weight is used (DDP would otherwise need unused-parameter search)
    for name, p in objective.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert set(stats) == {"frame_loss", "utterance_loss", "target_var", "pred_var", "ema_decay"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_loss_is_frame_plus_summed_utterance_terms():
    fbank = _fbank(batch=2)
    weighted = pe.Objective(_student(), clones=3, utterance_weight=0.5)
    loss, stats = weighted(fbank, torch.Generator().manual_seed(0))
    # the official normalisation: the CLS term is summed over the 2 x 3 masked copies
    expected = stats["frame_loss"] + 0.5 * 6 * stats["utterance_loss"]
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    frame_only = pe.Objective(_student(), clones=3, utterance_weight=0.0)
    loss0, stats0 = frame_only(fbank, torch.Generator().manual_seed(0))
    assert loss0.item() == stats0["frame_loss"].item()
    assert stats0["frame_loss"].item() == pytest.approx(stats["frame_loss"].item(), rel=1e-6)


def test_forward_repeats_for_the_same_generator_state():
    objective = pe.Objective(_student(), clones=2)
    fbank = _fbank()
    a, _ = objective(fbank, torch.Generator().manual_seed(3))
    b, _ = objective(fbank, torch.Generator().manual_seed(3))
    c, _ = objective(fbank, torch.Generator().manual_seed(4))
    assert a.item() == b.item()  # masks and decoder noise both come from the generator
    assert a.item() != c.item()


def test_loss_falls_on_a_fixed_batch():
    objective = pe.Objective(_student(), clones=2)
    fbank = _fbank(batch=2, time_patches=2)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=pe.ADAM_BETAS, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    losses, frames = [], []
    for step in range(30):
        optimizer.zero_grad()
        loss, stats = objective(fbank, g)
        loss.backward()
        optimizer.step()
        objective.after_step(step + 1, 30)
        losses.append(loss.item())
        frames.append(stats["frame_loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert frames[-1] < 0.5 * frames[0]
    # targets are layer-normalised, so predicting zeros costs sum_d y^2 / sqrt(D) = sqrt(D): it beats that
    assert sum(frames[-5:]) / 5 < math.sqrt(192)


def test_bf16_autocast_runs_with_float32_targets():
    objective = pe.Objective(_student(), clones=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = objective(_fbank(), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in objective.decoder.parameters())


def test_wrong_fbank_shape_is_one_line():
    objective = pe.Objective(_student(), clones=1)
    with pytest.raises(AsdError, match="fbank"):
        objective(torch.zeros(1, 40, 128), torch.Generator())


# --- EMA teacher ------------------------------------------------------------------------------


def test_ema_update_equals_the_formula():
    objective = pe.Objective(_student(), clones=1, ema_decay=0.5, ema_end_decay=0.9)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in objective.teacher.parameters()]
    objective.after_step(3, 10)
    d = 0.5 + (0.9 - 0.5) * 0.3
    assert objective.ema_decay.item() == pytest.approx(d)
    for t0, t1, s in zip(before, objective.teacher.parameters(), objective.student.parameters(), strict=True):
        assert torch.equal(t1, (t0 * d).add(s, alpha=1 - d))
    assert objective.decay_at(0, 10) == 0.5 and objective.decay_at(10, 10) == 0.9 and objective.decay_at(20, 10) == 0.9


def test_ema_decay_of_one_freezes_the_teacher():
    objective = pe.Objective(_student(), clones=1, ema_decay=1.0, ema_end_decay=1.0)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in objective.teacher.parameters()]
    objective.after_step(5, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, objective.teacher.parameters(), strict=True))


def test_state_dict_round_trips_into_a_fresh_objective():
    a = pe.Objective(_student(), clones=2)
    a.after_step(4, 8)
    torch.manual_seed(1)
    b = pe.Objective(eat.load(size="tiny").train(), clones=2)
    b.load_state_dict(a.state_dict())
    fbank = _fbank()
    la, _ = a(fbank, torch.Generator().manual_seed(5))
    lb, sb = b(fbank, torch.Generator().manual_seed(5))
    assert la.item() == lb.item()
    assert sb["ema_decay"].item() == pytest.approx(a.decay_at(4, 8))


# --- build_objective --------------------------------------------------------------------------


def test_build_objective_takes_the_paper_defaults():
    objective = pe.build_objective(_student(), _cfg())
    assert objective.mask_ratio == 0.8 and objective.clones == 16
    assert (objective.ema_start, objective.ema_end) == (0.9998, 0.99999)
    assert objective.top_k_layers == 4  # all blocks of the tiny backbone
    assert objective.utterance_weight == 1.0
    assert isinstance(objective.student, eat.EAT)
    # width scales with the student; layers, kernel and groups stay the paper's
    conv = objective.decoder.blocks[0][0]
    assert len(objective.decoder.blocks) == 6 and conv.kernel_size == (3, 3) and conv.groups == 16
    assert conv.in_channels == conv.out_channels == 192


def test_build_objective_takes_cfg_values():
    cfg = _cfg(mask_ratio=0.6, clones=3, ema_decay=0.99, ema_end_decay=0.999, top_k_layers=2, utterance_weight=0.0)
    objective = pe.build_objective(_student(), cfg)
    assert (objective.mask_ratio, objective.clones, objective.top_k_layers) == (0.6, 3, 2)
    assert (objective.ema_start, objective.ema_end, objective.utterance_weight) == (0.99, 0.999, 0.0)


def test_too_many_top_k_layers_is_one_line():
    with pytest.raises(AsdError, match="top_k_layers must lie in 1..4"):
        pe.build_objective(_student(), _cfg(top_k_layers=5))


# --- export -----------------------------------------------------------------------------------


def test_export_loads_as_the_student(tmp_path):
    objective = pe.Objective(_student(), clones=2)
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):  # make student and teacher differ
        optimizer.zero_grad()
        objective(_fbank(), g)[0].backward()
        optimizer.step()
        objective.after_step(step + 1, 2)
    path = tmp_path / "checkpoint.pt"
    torch.save(pe.export(objective), path)
    with pytest.warns(UserWarning, match="dropped"):
        loaded = eat.load(path)
    assert loaded.cfg == objective.student.cfg
    fbank = _fbank(batch=2, time_patches=4, seed=1)
    objective.student.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(fbank), objective.student.encode(fbank))
        assert not torch.equal(objective.teacher.encode(fbank), objective.student.encode(fbank))


def test_export_holds_the_official_keys():
    # the architecture of tests/fixtures/eat_tiny.pt, which the official fairseq code wrote
    objective = pe.Objective(_student(embed_dim=64, depth=2, num_heads=4, max_length=64), clones=1)
    exported = pe.export(objective)
    official = read_checkpoint(FIXTURES / "eat_tiny.pt")["model"]
    state = exported["model"]
    ema = state.pop("_ema")
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in official.items()}
    assert "modality_encoders.IMAGE.decoder.blocks.5.0.weight" in state
    encoder = {k: tuple(v.shape) for k, v in official.items() if ".decoder." not in k}
    assert {k: tuple(v.shape) for k, v in ema.items()} == encoder
    assert all(v.dtype == torch.float32 for v in ema.values())
    assert torch.equal(ema["blocks.0.attn.qkv.weight"], objective.teacher.blocks[0].attn.qkv.weight)
    cfg = exported["cfg"]["model"]
    decoder = cfg["modalities"]["image"]["decoder"]
    dims = ("decoder_dim", "decoder_groups", "decoder_kernel", "decoder_layers")
    assert tuple(decoder[k] for k in dims) == (64, 16, 3, 6)
    assert (cfg["embed_dim"], cfg["depth"], cfg["clone_batch"], cfg["average_top_k_layers"]) == (64, 2, 1, 2)
    assert cfg["modalities"]["image"]["mask_prob"] == 0.8 and cfg["modalities"]["image"]["mask_length"] == 5


def test_plain_export_is_unchanged():
    student = _student()
    plain = eat.to_fairseq(student)
    assert not any(k.startswith("modality_encoders.IMAGE.decoder.") or k == "_ema" for k in plain["model"])
    assert "clone_batch" not in plain["cfg"]["model"]
