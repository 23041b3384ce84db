"""Fine-tuning heads: attentive statistics pooling, the two dense layers, and the ArcFace loss.

The paper appends "an attentive statistics pooling layer proposed in ECAPA-TDNN" to each
backbone, then "two dense layers", and trains with ArcFace on machine-attribute classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.errors import AsdError
from asdtool.config.choices import EmbeddingLayer



def _weighted_stats(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return mean and std (B, D, 1) of x (B, D, N) under weights w (B, D, N) that sum to 1 over N."""
    mean = (w * x).sum(dim=2, keepdim=True)
    var = (w * x.square()).sum(dim=2, keepdim=True) - mean.square()
    # clamp: rounding can make the variance of a near-constant channel slightly negative
    return mean, var.clamp(min=eps).sqrt()


class AttentiveStatsPool(nn.Module):
    """Return the attention-weighted mean and std of frame embeddings: [B, N, D] -> [B, 2D].

    ECAPA-TDNN's channel- and context-dependent variant: the attention net sees each frame
    concatenated with the utterance's global mean and std ([B, 3D, N]), goes through a Conv1d
    bottleneck, tanh, and a Conv1d back to D channels, and a softmax over time gives one weight per
    channel and frame. ECAPA's reference code adds ReLU + BatchNorm inside the bottleneck; this
    follows the paper's formula (tanh only), which also keeps the layer batch-size independent.
    `global_context=False` gives the plain attentive statistics pooling (the net sees frames only).
    """

    def __init__(self, channels: int, bottleneck: int = 128, global_context: bool = True, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.global_context = global_context
        self.eps = eps
        self.attention = nn.Sequential(
            nn.Conv1d(channels * (3 if global_context else 1), bottleneck, kernel_size=1),
            nn.Tanh(),
            nn.Conv1d(bottleneck, channels, kernel_size=1),
        )
        self.output_dim = 2 * channels

    def weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the attention weights (B, D, N) of tokens (B, N, D); they sum to 1 over N."""
        if tokens.dim() != 3 or tokens.shape[2] != self.channels:
            raise AsdError(
                f"AttentiveStatsPool expects tokens [B, N, {self.channels}], got shape {tuple(tokens.shape)}"
            )
        x = tokens.transpose(1, 2)  # (B, D, N)
        h = x
        if self.global_context:
            uniform = torch.full_like(x[:, :1], 1.0 / x.shape[2])  # (B, 1, N)
            mean, std = _weighted_stats(x, uniform, self.eps)  # (B, D, 1) each
            n = x.shape[2]
            h = torch.cat([x, mean.expand(-1, -1, n), std.expand(-1, -1, n)], dim=1)  # (B, 3D, N)
        return torch.softmax(self.attention(h), dim=2)  # (B, D, N)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, 2D)
        """Return the attention-weighted mean and std (B, 2D) of tokens (B, N, D)."""
        w = self.weights(tokens)
        mean, std = _weighted_stats(tokens.transpose(1, 2), w, self.eps)  # (B, D, 1) each
        return torch.cat([mean, std], dim=1).squeeze(2)


class EmbeddingHead(nn.Module):
    """Return utterance embeddings of frame tokens: pooling, then two dense layers.

    tokens [B, N, D] -> AttentiveStatsPool [B, 2D] -> Linear(2D, hidden) -> LayerNorm -> ReLU
    -> Linear(hidden, emb_dim) [B, emb_dim], the input of the ArcFace head.

    LayerNorm rather than BatchNorm between the layers: training uses small micro-batches with
    gradient accumulation, and LayerNorm behaves the same at any batch size and in eval mode.
    `embedding_layer` says which output the anomaly detector uses: "second" (default) the final
    dense output; "first" the normalised hidden layer before the ReLU (the last representation
    that has not been shaped by the class-specific output layer).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 128,
        emb_dim: int = 128,
        bottleneck: int = 128,
        embedding_layer: str = "second",
        global_context: bool = True,
    ):
        super().__init__()
        if embedding_layer not in EmbeddingLayer.values():
            raise AsdError(f"unknown embedding layer {embedding_layer!r}; choose one of {EmbeddingLayer.listed()}")
        self.embedding_layer = embedding_layer
        self.pool = AttentiveStatsPool(in_dim, bottleneck=bottleneck, global_context=global_context)
        self.dense1 = nn.Linear(self.pool.output_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dense2 = nn.Linear(hidden_dim, emb_dim)
        self.output_dim = emb_dim  # width of the classifier input (dense2's output)
        self.embedding_dim = hidden_dim if embedding_layer == "first" else emb_dim  # what `embed` returns

    def layers(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (first, second): the normalised hidden layer (B, hidden) and the output (B, emb_dim)."""
        first = self.norm(self.dense1(self.pool(tokens)))
        return first, self.dense2(F.relu(first))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, emb_dim)
        """Return the second dense output (B, emb_dim) of tokens (B, N, D): the ArcFace input."""
        return self.layers(tokens)[1]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the detector's embedding (B, embedding_dim), from the layer `embedding_layer` names."""
        first, second = self.layers(tokens)
        return first if self.embedding_layer == "first" else second


class ArcFaceLoss(nn.Module):
    """Return (loss, logits) of the additive angular margin loss (ArcFace, Deng et al. 2019).

    Logits are s * cos(theta_j) between the L2-normalised embedding and the L2-normalised class
    weight j; the target class gets s * cos(theta_y + m) instead. Defaults s = 30, m = 0.5: the
    margin of the ArcFace paper, and the scale most re-implementations (and earlier DCASE ASD
    systems) pair with it for a few hundred classes; s = 64 in the paper targets 85k identities.

    Numerical safety: cosines are clamped inside (-1, 1) so sin(theta) = sqrt(1 - cos^2) keeps a
    finite gradient; where theta + m would pass pi (cos(theta + m) stops decreasing), the
    target logit falls back to cos(theta) - m sin(m), as in the reference implementation
    (`easy_margin=True` instead applies the margin only where cos(theta) > 0).
    The returned logits carry no margin: their argmax is the prediction, for accuracy.
    """

    def __init__(self, emb_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5,
                 easy_margin: bool = False):  # fmt: skip
        super().__init__()
        if n_classes < 1:
            raise AsdError(f"ArcFace needs at least one class, got n_classes={n_classes}")
        if not 0.0 <= margin < math.pi / 2:
            raise AsdError(f"ArcFace margin must be in [0, pi/2), got {margin}")
        self.emb_dim, self.n_classes = emb_dim, n_classes
        self.scale, self.margin, self.easy_margin = float(scale), float(margin), easy_margin
        self.weight = nn.Parameter(torch.empty(n_classes, emb_dim))
        nn.init.xavier_uniform_(self.weight)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # theta + m > pi beyond this cosine
        self.fallback = math.sin(math.pi - margin) * margin

    def extra_repr(self) -> str:
        """Return the sizes, scale and margin shown in the module's repr."""
        return f"emb_dim={self.emb_dim}, n_classes={self.n_classes}, scale={self.scale}, margin={self.margin}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Return cos(theta) (B, n_classes) between embeddings (B, E) and the class weights."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ArcFace loss, margin-free logits (B, n_classes)) of embeddings (B, E) and class labels (B,)."""
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise AsdError(
                f"ArcFace labels must be [B] for embeddings {tuple(embeddings.shape)}, got {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            low, high = int(labels.min()), int(labels.max())
            raise AsdError(f"ArcFace labels must lie in [0, {self.n_classes}), got {low}..{high}")
        cos = self.cosine(embeddings).clamp(-1.0 + 1e-7, 1.0 - 1e-7)  # (B, C), fp32 even under autocast
        sin = (1.0 - cos.square()).sqrt()
        cos_margin = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            cos_margin = torch.where(cos > 0, cos_margin, cos)
        else:
            cos_margin = torch.where(cos > self.threshold, cos_margin, cos - self.fallback)
        target = F.one_hot(labels, self.n_classes).bool()
        logits = self.scale * cos
        loss = F.cross_entropy(torch.where(target, self.scale * cos_margin, logits), labels)
        return loss, logits.detach()
