"""Attribute classifiers: a backbone plus pooling/dense head trained with ArcFace; and the Dual model.

wave [B, T] -> backbone.preprocess -> fbank [B, F, 128] -> SpecAugment (train only)
  -> backbone.encode -> tokens [B, N, D] -> EmbeddingHead -> [B, E] -> ArcFace(classes)

The detector later uses `.embed(wave)`; training uses `.loss(wave, labels)`. Both classes share
that API, so one training loop drives either (DualClassifier adds `multi_backprop_step`).
`model(wave, labels)` returns the same (loss, logits) as `model.loss`, so a DistributedDataParallel
wrapper (which only syncs gradients of what goes through its forward) drives training too.

Head sizes: the paper gives none. Defaults are ECAPA's attention bottleneck (128) and two
128-wide dense layers, the smallest usual choice: at full size with r = 64 LoRA this makes
BEATs-LoRA 4.16M trainable (Table 1: 3.73M), of which 3.54M adapters and 0.39M pooling
attention alone; `benchmarks/param_counts.py` prints the comparison.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from asdtool.config.choices import Backbone, HeadInput, ModelBackbone
from asdtool.core.errors import AsdError
from asdtool.models.features import SpecAugment
from asdtool.models.backbones.registry import load_backbone
from asdtool.models.heads import ArcFaceLoss, EmbeddingHead
from asdtool.models.lora import adapter_state_dict, apply_lora, load_adapter_state_dict

CLASSIFIERS = ModelBackbone.values()


@contextmanager
def _eval_mode(module: nn.Module):
    """Run the block with `module` in eval mode, restoring its mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def frame_tokens(tokens: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """Return frame embeddings (B, T, F*D) of a backbone's tokens (B, prefix + T*F, D).

    Both backbones cut the fbank into 16x16 patches and order the tokens time-major (t * F + f), so
    the F patch tokens of one time step, side by side, are that step's frame embedding: the "frame
    embeddings" the paper's pooling fuses, with the frequency layout kept. Leading tokens (EAT's CLS)
    are dropped.
    """
    bands, prefix = backbone.freq_patches, backbone.prefix_tokens
    B, N, D = tokens.shape
    if (N - prefix) % bands:
        raise AsdError(f"{N - prefix} patch tokens do not make whole frames of {bands} frequency patches")
    return tokens[:, prefix:].reshape(B, (N - prefix) // bands, bands * D)


class _Branch(nn.Module):
    """One backbone with its own SpecAugment and head: wave -> (detector embedding, classifier input).

    `head_input`: "patches" pools every patch token (B, N, D); "frames" pools frame embeddings
    (B, T, F*D), see `frame_tokens`.
    """

    def __init__(self, backbone: nn.Module, head_args: dict, spec_augment: dict | bool, head_input: str = "patches"):
        super().__init__()
        if head_input not in HeadInput.values():
            raise AsdError(f"unknown head input {head_input!r}; choose one of {HeadInput.listed()}")
        self.backbone = backbone
        self.head_input = head_input
        if spec_augment is True:
            spec_augment = {}
        self.spec_augment = None if spec_augment is False else SpecAugment(**spec_augment)
        width = backbone.embed_dim * (backbone.freq_patches if head_input == "frames" else 1)
        self.head = EmbeddingHead(width, **head_args)

    def tokens(self, wave: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, N, D) or (B, frames, F*D)
        """Return the head's input of waves (B, T): patch tokens (B, N, D) or frame embeddings (B, frames, F*D).

        In train mode the fbank gets SpecAugment masks first (when the branch has them).
        """
        fbank = self.backbone.preprocess(wave)  # (B, F, 128), no gradient
        if self.training and self.spec_augment is not None:
            fbank = self.spec_augment(fbank)
        tokens = self.backbone.encode(fbank)
        return frame_tokens(tokens, self.backbone) if self.head_input == "frames" else tokens

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T) -> (B, e), (B, E)
        """Return (detector embedding, classifier input) of waves (B, T): the `embedding_layer` output and the second dense output."""
        first, second = self.head.layers(self.tokens(wave))
        return (first if self.head.embedding_layer == "first" else second), second


class AttributeClassifier(nn.Module):
    """Return ArcFace class logits of waves; a backbone with attentive-stats pooling and two dense layers.

    `backbone` is a module from `load_backbone` (optionally LoRA-wrapped by `apply_lora`).
    Head sizes: `hidden_dim`, `emb_dim`, `bottleneck` (pooling attention), `embedding_layer`
    ("first" | "second": which dense output `embed` gives the detector, see EmbeddingHead).
    `spec_augment`: True for SpecAugment at its defaults (the paper's), a dict of SpecAugment
    keyword arguments, or False for no masking. `head_input`: the pooling fuses every patch token
    ("patches") or frame embeddings, each time step's frequency patches side by side ("frames").
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        hidden_dim: int = 128,
        emb_dim: int = 128,
        bottleneck: int = 128,
        embedding_layer: str = "second",
        arcface_scale: float = 30.0,
        arcface_margin: float = 0.5,
        spec_augment: dict | bool = True,
        head_input: str = "patches",
    ):
        super().__init__()
        head_args = dict(hidden_dim=hidden_dim, emb_dim=emb_dim, bottleneck=bottleneck, embedding_layer=embedding_layer)
        self.branch = _Branch(backbone, head_args, spec_augment, head_input)
        self.arcface = ArcFaceLoss(emb_dim, n_classes, scale=arcface_scale, margin=arcface_margin)
        self.n_classes = n_classes
        self.build_args: dict = {}  # set by build_classifier: what rebuilds this architecture

    @property
    def backbone(self) -> nn.Module:
        """The backbone module, as given (LoRA-wrapped or not)."""
        return self.branch.backbone

    @property
    def head(self) -> EmbeddingHead:
        """The EmbeddingHead on the backbone's tokens."""
        return self.branch.head

    @property
    def embedding_dim(self) -> int:
        """Width of `embed`'s output."""
        return self.head.embedding_dim

    def forward(self, wave: torch.Tensor, labels: torch.Tensor | None = None):
        """Return the ArcFace input (B, emb_dim) (the second dense output) of waves (B, T); with labels, `loss`."""
        embeddings = self.branch(wave)[1]
        return embeddings if labels is None else self.arcface(embeddings, labels)

    def loss(self, wave: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ArcFace loss, margin-free logits (B, n_classes)) of waves (B, T) and class labels (B,)."""
        return self(wave, labels)

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the detector's embeddings (B, embedding_dim) of waves (B, T); eval mode, deterministic."""
        with _eval_mode(self):
            return self.branch(wave)[0].float()

    def compact_state_dict(self) -> dict[str, torch.Tensor]:
        """Return what training changed: LoRA adapters + head + ArcFace weights, or everything without LoRA.

        Adapter keys start with "adapter."; the frozen backbone weights are left out, so loading
        needs a model built on the same pre-trained checkpoint.
        """
        return _compact_state_dict(self)

    def load_compact_state_dict(self, state: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
        """Load a `compact_state_dict` into this identically built model (same pre-trained backbone)."""
        _load_compact_state_dict(self, state, path)


class DualClassifier(nn.Module):
    """Return ArcFace logits of the fused BEATs + EAT embedding ("Dual Pre-trained" in the paper).

    Each branch has its own SpecAugment, pooling and dense layers; the two branch embeddings
    (each branch's second dense output) are concatenated and mapped by one dense layer to the
    joint embedding, which feeds the joint ArcFace head and is what `embed` returns. Each branch
    also has its own ArcFace head for the per-branch losses of the multi-backpropagation.
    """

    def __init__(
        self,
        beats: nn.Module,
        eat: nn.Module,
        n_classes: int,
        hidden_dim: int = 128,
        emb_dim: int = 128,
        bottleneck: int = 128,
        fused_dim: int | None = None,
        arcface_scale: float = 30.0,
        arcface_margin: float = 0.5,
        spec_augment: dict | bool = True,
        branch_weights: tuple[float, float] = (1.0, 1.0),
        head_input: str = "patches",
    ):
        super().__init__()
        head_args = dict(hidden_dim=hidden_dim, emb_dim=emb_dim, bottleneck=bottleneck, embedding_layer="second")
        self.beats = _Branch(beats, head_args, spec_augment, head_input)
        self.eat = _Branch(eat, head_args, spec_augment, head_input)
        fused_dim = emb_dim if fused_dim is None else fused_dim
        self.fusion = nn.Linear(2 * emb_dim, fused_dim)
        arc = dict(scale=arcface_scale, margin=arcface_margin)
        self.arcface = ArcFaceLoss(fused_dim, n_classes, **arc)
        self.arcface_beats = ArcFaceLoss(emb_dim, n_classes, **arc)
        self.arcface_eat = ArcFaceLoss(emb_dim, n_classes, **arc)
        self.n_classes = n_classes
        self.branch_weights = tuple(float(w) for w in branch_weights)
        self.build_args: dict = {}

    @property
    def embedding_dim(self) -> int:
        """Width of `embed`'s output (the fused embedding)."""
        return self.fusion.out_features

    def branch_embeddings(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (BEATs branch (B, E), EAT branch (B, E), fused (B, fused_dim)) embeddings of waves (B, T)."""
        e_beats = self.beats(wave)[1]
        e_eat = self.eat(wave)[1]
        return e_beats, e_eat, self.fusion(torch.cat([e_beats, e_eat], dim=1))

    def forward(self, wave: torch.Tensor, labels: torch.Tensor | None = None):
        """Return the fused embeddings (B, fused_dim) of waves (B, T); with labels, `loss`."""
        if labels is None:
            return self.branch_embeddings(wave)[2]
        losses, logits = self.losses(wave, labels)
        return losses["loss"], logits

    def losses(self, wave: torch.Tensor, labels: torch.Tensor, branch_weights: tuple[float, float] | None = None):
        """Return (dict of loss tensors "loss", "joint", "beats", "eat"; joint logits (B, n_classes)).

        "loss" = joint + w_beats * beats + w_eat * eat, the objective of the multi-backpropagation.
        """
        w_beats, w_eat = self.branch_weights if branch_weights is None else branch_weights
        e_beats, e_eat, fused = self.branch_embeddings(wave)
        joint, logits = self.arcface(fused, labels)
        beats, _ = self.arcface_beats(e_beats, labels)
        eat, _ = self.arcface_eat(e_eat, labels)
        total = joint + w_beats * beats + w_eat * eat
        return {"loss": total, "joint": joint, "beats": beats, "eat": eat}, logits

    def loss(self, wave: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (multi-backpropagation objective, joint logits (B, n_classes)), as AttributeClassifier.loss."""
        return self(wave, labels)

    def multi_backprop_step(
        self, wave: torch.Tensor, labels: torch.Tensor, branch_weights: tuple[float, float] | None = None,
        loss_scale: float = 1.0,
    ) -> dict[str, float | torch.Tensor]:  # fmt: skip
        """Back-propagate one batch the paper's way and return its losses (floats) and joint "logits".

        First each branch's own ArcFace loss, weighted by `branch_weights` (default: the
        constructor's), goes back through that branch only; then the joint loss goes back through
        the whole model. Gradients accumulate in `.grad`; the optimiser step (and zero_grad) stay
        with the caller. `loss_scale` multiplies every backward (1 / accumulation steps, or an AMP
        scale). Since gradients add, this equals one backward of joint + w_b * beats + w_e * eat;
        it is done as one backward of that sum so the shared graph is traversed once.
        """
        losses, logits = self.losses(wave, labels, branch_weights)
        (losses["loss"] * loss_scale).backward()
        out: dict[str, float | torch.Tensor] = {k: float(v.detach()) for k, v in losses.items()}
        out["logits"] = logits
        return out

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the fused embeddings (B, fused_dim) of waves (B, T); eval mode, deterministic."""
        with _eval_mode(self):
            return self.forward(wave).float()

    def compact_state_dict(self) -> dict[str, torch.Tensor]:
        """Return what training changed (see AttributeClassifier.compact_state_dict); both branches."""
        return _compact_state_dict(self)

    def load_compact_state_dict(self, state: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
        """Load a `compact_state_dict` into this identically built model (same pre-trained backbones)."""
        _load_compact_state_dict(self, state, path)


# ----------------------------------------------------------------------------- compact checkpoints


def _lora_backbone_prefixes(model: nn.Module) -> list[str]:
    """Return the state-dict prefixes of the LoRA-wrapped (frozen) backbones inside `model`."""
    from peft import PeftModel

    return [f"{name}." for name, m in model.named_modules() if isinstance(m, PeftModel)]


def _compact_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    prefixes = _lora_backbone_prefixes(model)
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
    if prefixes:
        state.update({f"adapter.{k}": v for k, v in adapter_state_dict(model).items()})
    return state


def _load_compact_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path=None) -> None:
    prefixes = _lora_backbone_prefixes(model)
    adapters = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
    rest = {k: v for k, v in state.items() if not k.startswith("adapter.")}
    if bool(adapters) != bool(prefixes):
        raise AsdError("checkpoint and model disagree on LoRA: build the model with the checkpoint's lora_rank", path)
    expected = {k for k in model.state_dict() if not any(k.startswith(p) for p in prefixes)}
    missing, unexpected = sorted(expected - set(rest)), sorted(set(rest) - expected)
    if missing or unexpected:
        raise AsdError(
            f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}", path
        )
    try:
        model.load_state_dict(rest, strict=False)
    except RuntimeError as error:
        raise AsdError(f"checkpoint does not fit the model: {' '.join(str(error).split())}", path) from None
    if adapters:
        load_adapter_state_dict(model, adapters, path)


# ----------------------------------------------------------------------------- construction


def _backbone(name: str, size: str, checkpoint, lora_rank: int, lora_alpha, lora_dropout, overrides) -> nn.Module:
    backbone = load_backbone(name, checkpoint, size=size, **overrides)
    if lora_rank:
        backbone = apply_lora(backbone, name, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
    return backbone


def build_classifier(
    backbone_name: str,
    n_classes: int,
    size: str = "base",
    checkpoint: str | Path | dict | None = None,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    backbone_overrides: dict | None = None,
    **head_args,
) -> AttributeClassifier | DualClassifier:
    """Return an attribute classifier on the named backbone: "beats", "eat" or "dual" (both).

    `checkpoint`: the pre-trained backbone file; for "dual" a dict {"beats": ..., "eat": ...}
    (either may be missing or None: random init at `size`). `lora_rank` 0 fine-tunes the whole
    backbone ("-full" models); > 0 freezes it and trains LoRA adapters of that rank ("-LoRA").
    `head_args` go to AttributeClassifier / DualClassifier (hidden_dim, emb_dim, spec_augment...).
    The returned model's `build_args` record these arguments without the checkpoint and with the
    backbones' full configs as `backbone_overrides`, so `build_classifier(**model.build_args)`
    rebuilds the architecture at random init, ready for the trained model's saved state.
    """
    if backbone_name not in CLASSIFIERS:
        raise AsdError(f"unknown classifier backbone {backbone_name!r}; choose one of {', '.join(CLASSIFIERS)}")
    if int(n_classes) != n_classes or n_classes < 1:
        raise AsdError(f"n_classes must be a positive integer, got {n_classes!r}")
    if int(lora_rank) != lora_rank or lora_rank < 0:
        raise AsdError(f"lora_rank must be a non-negative integer (0 = full fine-tuning), got {lora_rank!r}")
    overrides = dict(backbone_overrides or {})
    lora = (lora_rank, lora_alpha, lora_dropout)
    if backbone_name == "dual":
        if checkpoint is not None and not isinstance(checkpoint, dict):
            raise AsdError("the dual classifier takes checkpoint={'beats': path, 'eat': path}", str(checkpoint))
        ckpts = checkpoint or {}
        unknown = set(ckpts) - set(Backbone.values())
        if unknown:
            raise AsdError(f"unknown backbone(s) in dual checkpoints: {', '.join(sorted(unknown))}")
        per = {b: overrides.pop(b, {}) for b in Backbone.values()}  # optional {"beats": {...}, "eat": {...}}
        if overrides:
            raise AsdError("dual backbone_overrides must be {'beats': {...}, 'eat': {...}}")
        beats = _backbone("beats", size, ckpts.get("beats"), *lora, per["beats"])
        eat = _backbone("eat", size, ckpts.get("eat"), *lora, per["eat"])
        model = DualClassifier(beats, eat, int(n_classes), **head_args)
    else:
        if isinstance(checkpoint, dict):
            raise AsdError(f"a {backbone_name} classifier takes one checkpoint path, not a dict")
        backbone = _backbone(backbone_name, size, checkpoint, *lora, overrides)
        model = AttributeClassifier(backbone, int(n_classes), **head_args)
    # the backbones' full configs, so a rebuild never depends on today's size presets
    if backbone_name == "dual":
        configs = {"beats": _config(model.beats.backbone), "eat": _config(model.eat.backbone)}
    else:
        configs = _config(model.backbone)
    model.build_args = dict(backbone_name=backbone_name, n_classes=int(n_classes), size=size, lora_rank=int(lora_rank),
                            lora_alpha=lora_alpha, lora_dropout=lora_dropout, backbone_overrides=configs,
                            **head_args)  # fmt: skip
    return model


def _config(backbone: nn.Module) -> dict:
    """Return the backbone's config fields (what `load_backbone(**overrides)` accepts)."""
    return dataclasses.asdict(backbone.cfg)
