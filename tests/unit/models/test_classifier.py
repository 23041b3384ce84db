"""Attribute classifiers on the real tiny backbones: embeddings, losses, Dual multi-backpropagation."""

from __future__ import annotations

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.models.classifier import AttributeClassifier, DualClassifier, build_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # peft's notes on non-transformers models

HEAD = dict(hidden_dim=16, emb_dim=8, bottleneck=8)


def _wave(batch: int = 3, seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(16000 * seconds), generator=g)


def _build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_classifier(name, 4, size="tiny", **{**HEAD, **kwargs})


@pytest.mark.parametrize("name", ["beats", "eat", "dual"])
def test_embed_is_deterministic_and_of_the_documented_width(name):
    model = _build(name).train()  # embed must not depend on the mode it finds
    wave = _wave()
    first = model.embed(wave)
    assert model.training  # mode restored
    assert first.shape == (3, model.embedding_dim) == (3, 8)
    assert first.dtype == torch.float32 and not first.requires_grad
    torch.testing.assert_close(model.embed(wave), first, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(model.embed(wave), first, rtol=0, atol=0)
    # clips are embedded independently of their batch mates
    torch.testing.assert_close(model.embed(wave[1:2]), first[1:2], atol=1e-5, rtol=1e-5)


def test_first_layer_embedding():
    model = _build("eat", embedding_layer="first")
    assert model.embedding_dim == 16
    emb = model.embed(_wave())
    assert emb.shape == (3, 16)
    # the first dense layer is LayerNorm-ed: each embedding has zero mean
    torch.testing.assert_close(emb.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    # ArcFace still sees the second layer
    assert model(_wave()).shape == (3, 8)


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_spec_augment_runs_in_training_only(name):
    model = _build(name)
    calls = []
    model.branch.spec_augment.register_forward_hook(lambda m, i, o: calls.append(bool((o == 0).any())))
    labels = torch.tensor([0, 1, 3])
    model.train()
    loss, logits = model.loss(_wave(), labels)
    assert calls == [True]  # masked cells (the mean, 0.0) in the fbank the encoder saw
    assert logits.shape == (3, 4) and torch.isfinite(loss) and loss.item() > 0
    model.embed(_wave())
    model.eval()
    model.loss(_wave(), labels)
    assert len(calls) == 1
    no_masks = _build(name, spec_augment=False)
    assert no_masks.branch.spec_augment is None
    custom = _build(name, spec_augment={"max_time_mask": 10, "n_time_masks": 3})
    assert custom.branch.spec_augment.n_time_masks == 3


def test_full_fine_tuning_trains_the_backbone():
    model = _build("beats")
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    loss, _ = model.loss(_wave(), torch.tensor([0, 1, 2]))
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("branch.backbone.encoder.layers.0.")]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_dual_multi_backprop_step_reaches_both_branches_and_the_fusion(lora_rank):
    model = _build("dual", lora_rank=lora_rank, branch_weights=(0.5, 0.25)).train()
    wave, labels = _wave(4), torch.tensor([0, 1, 2, 3])
    out = model.multi_backprop_step(wave, labels)
    assert set(out) == {"loss", "joint", "beats", "eat", "logits"}
    assert out["loss"] == pytest.approx(out["joint"] + 0.5 * out["beats"] + 0.25 * out["eat"], rel=1e-5)
    assert out["logits"].shape == (4, 4)

    def grad_norm(prefix: str, lora_only: bool = False) -> float:
        grads = [p.grad for n, p in model.named_parameters()
                 if n.startswith(prefix) and p.requires_grad and (".lora_" in n or not lora_only)]  # fmt: skip
        assert grads and all(g is not None for g in grads), prefix
        return float(sum(g.abs().sum() for g in grads))

    for branch in ("beats", "eat"):
        assert grad_norm(f"{branch}.backbone.", lora_only=bool(lora_rank)) > 0
        assert grad_norm(f"{branch}.head.") > 0
        assert grad_norm(f"arcface_{branch}.") > 0
    assert grad_norm("fusion.") > 0 and grad_norm("arcface.") > 0
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == bool(lora_rank) and all(p.grad is None for p in frozen)


def test_multi_backprop_equals_branch_then_joint_backward():
    """The paper's order: each branch loss (weighted) back through its branch, then the joint loss."""
    model = _build("dual", lora_rank=0).eval()  # eval: no masks, no layerdrop, same graph twice
    wave, labels, weights = _wave(4), torch.tensor([0, 1, 2, 3]), (0.3, 0.7)
    model.multi_backprop_step(wave, labels, branch_weights=weights)
    combined = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    losses, _ = model.losses(wave, labels)
    (weights[0] * losses["beats"]).backward(retain_graph=True)
    # the BEATs branch loss reaches the BEATs branch only
    assert model.eat.head.dense2.weight.grad is None and model.fusion.weight.grad is None
    assert model.beats.head.dense2.weight.grad.abs().sum() > 0
    (weights[1] * losses["eat"]).backward(retain_graph=True)
    losses["joint"].backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, combined[n], atol=1e-5, rtol=1e-4, msg=n)  # analytically-zero grads (softmax biases) are float32 noise


def test_dual_branch_weight_zero_leaves_that_branch_head_untouched():
    model = _build("dual").eval()
    model.multi_backprop_step(_wave(2), torch.tensor([0, 1]), branch_weights=(1.0, 0.0))
    assert model.arcface_beats.weight.grad.abs().sum() > 0
    assert model.arcface_eat.weight.grad is None or model.arcface_eat.weight.grad.abs().sum() == 0
    assert model.eat.head.dense2.weight.grad.abs().sum() > 0  # the joint loss still trains the EAT branch


@pytest.mark.parametrize("name,lora_rank", [("eat", 0), ("beats", 2), ("dual", 2)])
def test_rebuild_and_compact_checkpoint(name, lora_rank):
    model = _build(name, seed=3, lora_rank=lora_rank)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for step in range(2):
        loss, _ = model.loss(_wave(4, seed=step), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    wave = _wave(seed=9)
    expected = model.embed(wave)
    # the same pre-trained backbone (same seed here), rebuilt from build_args, filled from the compact state
    torch.manual_seed(3)
    twin = build_classifier(**model.build_args)
    assert not torch.allclose(twin.embed(wave), expected)
    state = model.compact_state_dict()
    if lora_rank:
        assert not any("base_layer" in k for k in state)
        assert sum(v.numel() for v in state.values()) < 0.5 * sum(v.numel() for v in model.state_dict().values())
    twin.load_compact_state_dict(state)
    torch.testing.assert_close(twin.embed(wave), expected)


def test_compact_state_mismatch_is_an_asd_error():
    lora = _build("eat", lora_rank=2)
    full = _build("eat")
    with pytest.raises(AsdError, match="ckpt.pt: checkpoint and model disagree on LoRA"):
        full.load_compact_state_dict(lora.compact_state_dict(), path="ckpt.pt")
    other = build_classifier("eat", 5, size="tiny", **HEAD)
    with pytest.raises(AsdError, match="does not fit"):
        other.load_compact_state_dict(full.compact_state_dict())


def test_build_classifier_checks_its_arguments():
    assert isinstance(_build("beats"), AttributeClassifier)
    assert isinstance(_build("dual"), DualClassifier)
    with pytest.raises(AsdError, match="unknown classifier backbone"):
        build_classifier("wav2vec", 3, size="tiny")
    with pytest.raises(AsdError, match="n_classes"):
        build_classifier("eat", 0, size="tiny")
    with pytest.raises(AsdError, match="lora_rank"):
        build_classifier("eat", 3, size="tiny", lora_rank=-1)
    with pytest.raises(AsdError, match="checkpoint="):
        build_classifier("dual", 3, size="tiny", checkpoint="beats.pt")
    with pytest.raises(AsdError, match="one checkpoint path"):
        build_classifier("eat", 3, size="tiny", checkpoint={"eat": "x.pt"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moves_to_cuda_with_bf16_autocast():
    model = _build("dual", lora_rank=2).to("cuda").train()
    wave = _wave(2).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.multi_backprop_step(wave, torch.tensor([0, 1], device="cuda"))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k != "logits")
    emb = model.embed(wave)
    assert emb.device.type == "cuda" and emb.shape == (2, 8)


@pytest.mark.parametrize("name", ["eat", "dual"])
def test_forward_with_labels_is_the_loss(name):
    model = _build(name).eval()
    wave, labels = _wave(), torch.tensor([0, 1, 2])
    loss, logits = model(wave, labels)
    expected_loss, expected_logits = model.loss(wave, labels)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(logits, expected_logits)
    assert model(wave).shape == (3, 8)


@pytest.mark.parametrize("name", ["beats", "eat"])
def test_frame_tokens_put_each_time_steps_patches_side_by_side(name):
    from asdtool.models.classifier import frame_tokens

    backbone = _build(name).backbone
    bands, prefix, D = backbone.freq_patches, backbone.prefix_tokens, backbone.embed_dim
    assert bands == 8 and prefix == (1 if name == "eat" else 0)
    tokens = torch.arange(2 * (prefix + 3 * bands) * D, dtype=torch.float32).reshape(2, prefix + 3 * bands, D)
    frames = frame_tokens(tokens, backbone)
    assert frames.shape == (2, 3, bands * D)
    # frame t holds patches t*F .. t*F+F-1 (time-major), in frequency order, the prefix (CLS) dropped
    torch.testing.assert_close(frames[1, 2, D:2 * D], tokens[1, prefix + 2 * bands + 1], rtol=0, atol=0)
    with pytest.raises(AsdError, match="do not make whole frames of 8 frequency patches"):
        frame_tokens(tokens[:, :-1], backbone)


@pytest.mark.parametrize("name", ["beats", "eat", "dual"])
def test_frames_head_input_pools_frame_embeddings_and_rebuilds(name):
    model = _build(name, seed=2, head_input="frames")
    branches = [model.beats, model.eat] if name == "dual" else [model.branch]
    for branch in branches:
        b = branch.backbone
        assert branch.head.pool.channels == b.embed_dim * b.freq_patches  # F*D-wide frames
    wave = _wave()
    emb = model.embed(wave)
    assert emb.shape == (3, 8)
    patches = _build(name, seed=2)
    assert not torch.allclose(patches.embed(wave), emb)  # a different head input, a different embedding
    loss, _ = model.loss(_wave(4), torch.tensor([0, 1, 2, 3]))
    loss.backward()  # trains end to end
    torch.manual_seed(2)
    twin = build_classifier(**model.build_args)
    assert twin.build_args["head_input"] == "frames"
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin.embed(wave), emb)
    with pytest.raises(AsdError, match="unknown head input 'bands'"):
        _build(name, head_input="bands")
