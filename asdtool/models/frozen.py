"""The frozen model: a pre-trained backbone, not fine-tuned, whose tokens are pooled into one vector per clip.

What several top DCASE 2025 systems used beside fine-tuned ones: the self-supervised backbone's
own features, with no attribute classifier to make them blind to what the classes do not need.
`layer` picks the token states: 0 is the patch embedding as the transformer receives it, l in
1..L the output of block l (the default, L, is the last). The patch tokens (EAT's CLS left out) are
pooled over all patches (`meanstd`: the per-dimension mean and standard deviation, concatenated;
`mean`: the mean), or over time only, band by band (`freq-meanstd`, `freq-mean`: the statistics of
each row of frequency patches, concatenated), which keeps where in the spectrum a token lies as the
log-mel reference keeps its 128 bins.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from asdtool.core.errors import AsdError
from asdtool.models.classifier import frame_tokens
from asdtool.config.choices import Pooling



def _blocks(backbone: nn.Module) -> nn.ModuleList:
    return backbone.encoder.layers if hasattr(backbone, "encoder") else backbone.blocks


class FrozenEmbedder(nn.Module):
    """`embed(wave[B, T]) -> [B, E]`: pooled layer-`layer` patch tokens of a frozen backbone."""

    def __init__(self, backbone: nn.Module, name: str, layer: int | None = None, pooling: str = "meanstd"):
        super().__init__()
        depth = len(_blocks(backbone))
        layer = depth if layer is None else layer
        if not 0 <= layer <= depth:
            raise AsdError(f"--layer must lie in 0..{depth} for this {name} backbone (0: patch embedding), got {layer}")
        if pooling not in Pooling.values():
            raise AsdError(f"unknown pooling {pooling!r}; choose one of {Pooling.listed()}")
        self.backbone, self.name, self.layer, self.pooling = backbone.eval().requires_grad_(False), name, layer, pooling
        self.bands = backbone.freq_patches  # patches per time step

    @property
    def embedding_dim(self) -> int:
        """Return E, the length of `embed`'s vectors: token width x statistics (2 for *meanstd) x bands (freq-*)."""
        stats = 2 if self.pooling.endswith("meanstd") else 1
        return self.backbone.embed_dim * stats * (self.bands if self.pooling.startswith("freq") else 1)

    def tokens(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the layer's patch tokens (B, N, D)."""
        return self.states(wave)[:, self.backbone.prefix_tokens :]

    def states(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the layer's token states (B, prefix + N, D): EAT's CLS first, then the patch tokens."""
        blocks = _blocks(self.backbone)
        captured: list[torch.Tensor] = []
        if self.layer < len(blocks):
            def hook(module, args):  # the block's input is the previous layer's output
                """Capture the block's input and stop the forward pass there."""
                captured.append(args[0])
                raise _Stop

            handle = blocks[self.layer].register_forward_pre_hook(hook)
        else:
            def hook(module, args, output):
                """Capture the last block's output."""
                captured.append(output)

            handle = blocks[-1].register_forward_hook(hook)
        try:
            self.backbone(wave)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the pooled clip vectors (B, E), float32: the patch tokens' mean, and for *meanstd their std.

        `meanstd`/`mean` pool over all patches, `freq-*` over time band by band (bands concatenated); the
        std is the population one (divisor N).
        """
        tokens = self.states(wave).float()  # (B, prefix + N, D)
        if self.pooling.startswith("freq"):  # (B, T, F, D): the statistics over time, band by band
            frames = frame_tokens(tokens, self.backbone)
            tokens = frames.reshape(*frames.shape[:2], self.bands, tokens.shape[-1])
        else:
            tokens = tokens[:, self.backbone.prefix_tokens :]  # (B, N, D)
        dim = 1
        mean = tokens.mean(dim)
        parts = [mean] if not self.pooling.endswith("meanstd") else [mean, tokens.std(dim, unbiased=False)]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


class _Stop(Exception):
    """Raised by a hook once the wanted layer is captured: the deeper blocks need not run."""


def load_frozen(backbone: str, pretrained: str | Path | None, size: str = "tiny", layer: int | None = None,
                pooling: str = "meanstd", seed: int = 0, device: str = "cpu") -> tuple[FrozenEmbedder, str]:  # fmt: skip
    """Return (frozen embedder, fingerprint): official-format weights, or a seeded random init (the no-pre-training ablation)."""
    from asdtool.models.checkpoint import path_sha256
    from asdtool.models.device import resolve_device
    from asdtool.models.backbones.registry import load_backbone

    if pretrained is not None and not Path(pretrained).exists():
        raise AsdError("pre-trained checkpoint not found", pretrained)
    torch.manual_seed(seed)
    model = load_backbone(backbone, pretrained, size=size)
    fingerprint = path_sha256(pretrained) if pretrained is not None else f"random:{backbone}-{size}:seed{seed}"
    return FrozenEmbedder(model, backbone, layer, pooling).to(resolve_device(device)), fingerprint
