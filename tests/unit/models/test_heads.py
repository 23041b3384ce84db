"""Attentive statistics pooling, the dense embedding head and the ArcFace loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.errors import AsdError
from asdtool.models.heads import ArcFaceLoss, AttentiveStatsPool, EmbeddingHead


@pytest.mark.parametrize("global_context", [True, False])
def test_asp_shape_weights_and_permutation_invariance(global_context):
    torch.manual_seed(0)
    pool = AttentiveStatsPool(24, bottleneck=8, global_context=global_context)
    x = torch.randn(3, 17, 24)
    out = pool(x)
    assert out.shape == (3, 48)
    w = pool.weights(x)
    assert w.shape == (3, 24, 17) and (w > 0).all()
    torch.testing.assert_close(w.sum(dim=2), torch.ones(3, 24))
    # the attention is per channel: weights differ across channels of one clip
    assert not torch.allclose(w[:, 0], w[:, 1])
    perm = torch.randperm(17)
    torch.testing.assert_close(pool(x[:, perm]), out)
    # mean and std are the attention-weighted statistics
    xt = x.transpose(1, 2)
    mean = (w * xt).sum(2)
    std = ((w * (xt - mean[..., None]) ** 2).sum(2)).sqrt()
    torch.testing.assert_close(out[:, :24], mean)
    torch.testing.assert_close(out[:, 24:], std, atol=1e-4, rtol=1e-4)


def test_asp_constant_frames_and_context_dependence():
    torch.manual_seed(1)
    pool = AttentiveStatsPool(8, bottleneck=4)
    frame = torch.randn(1, 1, 8)
    out = pool(frame.expand(2, 10, 8))
    torch.testing.assert_close(out[:, :8], frame[0].expand(2, 8))  # weighted mean of equal frames
    assert (out[:, 8:] < 0.01).all() and torch.isfinite(out).all()  # std floored by eps, not NaN
    # the same frames in a different utterance get different weights: the net sees mean and std
    x = torch.randn(1, 6, 8)
    other = torch.cat([x, 5 + torch.randn(1, 6, 8)], dim=1)
    w_alone = pool.weights(x)
    w_inside = pool.weights(other)[..., :6]
    assert not torch.allclose(w_alone, w_inside / w_inside.sum(-1, keepdim=True), atol=1e-3)


def test_asp_gradient_and_bad_input():
    pool = AttentiveStatsPool(8, bottleneck=4)
    x = torch.randn(2, 5, 8, requires_grad=True)
    pool(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.parameters())
    with pytest.raises(AsdError, match="tokens"):
        pool(torch.randn(2, 5, 7))


def test_embedding_head_layers():
    torch.manual_seed(2)
    head = EmbeddingHead(16, hidden_dim=12, emb_dim=6, bottleneck=4)
    x = torch.randn(3, 9, 16)
    first, second = head.layers(x)
    assert first.shape == (3, 12) and second.shape == (3, 6)
    assert head.embedding_dim == 6 and head.output_dim == 6
    torch.testing.assert_close(head(x), second)
    torch.testing.assert_close(head.embed(x), second)
    # first is LayerNorm-ed: zero mean, unit variance per clip (at init the affine is identity)
    torch.testing.assert_close(first.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    head_first = EmbeddingHead(16, hidden_dim=12, emb_dim=6, bottleneck=4, embedding_layer="first")
    head_first.load_state_dict(head.state_dict())
    assert head_first.embedding_dim == 12
    torch.testing.assert_close(head_first.embed(x), first)
    with pytest.raises(AsdError, match="embedding layer"):
        EmbeddingHead(16, embedding_layer="third")


def test_arcface_target_logit_has_the_angular_margin():
    arc = ArcFaceLoss(2, 2, scale=10.0, margin=0.3)
    with torch.no_grad():
        arc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # normalised inside
    theta = 0.4
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]]) * 7.0  # angle 0.4 to class 0, pi/2 - 0.4 to class 1
    loss, logits = arc(emb, torch.tensor([0]))
    torch.testing.assert_close(logits, 10.0 * torch.tensor([[math.cos(theta), math.sin(theta)]]))
    expected = F.cross_entropy(10.0 * torch.tensor([[math.cos(theta + 0.3), math.sin(theta)]]), torch.tensor([0]))
    torch.testing.assert_close(loss, expected)
    # the margin only makes the target harder
    assert loss > F.cross_entropy(logits, torch.tensor([0]))


def test_arcface_is_safe_at_the_edges():
    arc = ArcFaceLoss(4, 3, margin=0.5)
    w = F.normalize(arc.weight.detach(), dim=1)
    # exactly on the class weight (cos = 1) and exactly opposite (theta + m > pi)
    emb = torch.stack([w[0], -w[1], torch.zeros(4) + 1e-12]).requires_grad_(True)
    loss, logits = arc(emb, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all() and torch.isfinite(arc.weight.grad).all()
    # beyond theta = pi - m, cos(theta + m) would rise again: the target logit becomes cos(theta) - m sin(m)
    arc2 = ArcFaceLoss(2, 2, scale=4.0, margin=0.5)
    with torch.no_grad():
        arc2.weight.copy_(torch.eye(2))
    theta = 2.9  # > pi - 0.5
    emb2 = torch.tensor([[math.cos(theta), math.sin(theta)]])
    loss2, _ = arc2(emb2, torch.tensor([0]))
    target = math.cos(theta) - math.sin(math.pi - 0.5) * 0.5
    expected = F.cross_entropy(4.0 * torch.tensor([[target, math.sin(theta)]]), torch.tensor([0]))
    torch.testing.assert_close(loss2, expected)
    with pytest.raises(AsdError, match="labels"):
        arc(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(AsdError, match="margin"):
        ArcFaceLoss(4, 3, margin=2.0)


def test_arcface_learns_a_separable_toy_problem():
    torch.manual_seed(3)
    n_classes, dim = 4, 16
    centres = torch.randn(n_classes, dim) * 3
    labels = torch.arange(n_classes).repeat_interleave(32)
    x = centres[labels] + torch.randn(len(labels), dim)
    net = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 8))
    arc = ArcFaceLoss(8, n_classes)
    opt = torch.optim.Adam([*net.parameters(), *arc.parameters()], lr=1e-2)
    losses = []
    for _ in range(60):
        loss, logits = arc(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    loss, logits = arc(net(x), labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert loss.item() < 0.2 * losses[0]
    assert accuracy > 0.95
