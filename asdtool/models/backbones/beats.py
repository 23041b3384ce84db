"""BEATs audio encoder (Chen et al. 2022, "BEATs: Audio pre-training with acoustic tokenizers").

One file, forward order: config, preprocessing (kaldi fbank), patch embedding, convolutional
positional embedding, deep-norm transformer layers with a gated relative position bias, and the
import/export of the official checkpoints (`BEATs_iter3.pt`, `BEATs_iter3_plus_AS2M.pt`: a dict
with `cfg` and `model`, read by `asdtool.models.read_checkpoint`, which runs no pickled code).
Written from the published architecture; parameter names follow the official checkpoints so that
they load without renaming.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asdtool.data.audio import SAMPLE_RATE
from asdtool.core.errors import AsdError, few
from asdtool.models.features import kaldi_fbank
from asdtool.models.backbones.foreign import read_checkpoint

# fbank statistics of AudioSet used by the official preprocessing
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582


@dataclass
class BEATsConfig:
    """Architecture and regularisation knobs; field names equal the official checkpoint's `cfg` keys.

    Defaults are those of the official config class, so `BEATsConfig(**ckpt["cfg"])` means what it
    means there; `SIZES["base"]` holds the iter3 values.
    """

    input_patch_size: int = -1  # patch size of the Conv2d patch embedding
    embed_dim: int = 512  # patch feature dimension (the encoder width is encoder_embed_dim)
    conv_bias: bool = False  # bias in the patch embedding
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0  # gradient scale applied before every layer
    layer_norm_first: bool = False  # pre-LN instead of post-LN
    deep_norm: bool = False  # post-LN with residuals scaled by (2 * layers) ** 0.25
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128  # kernel of the convolutional positional embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False  # gate the relative position bias with the query
    finetuned_model: bool = False  # the official AudioSet classifier head; never built here
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    def __post_init__(self):
        if self.input_patch_size <= 0:
            raise AsdError(f"BEATs config: input_patch_size must be positive, got {self.input_patch_size}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise AsdError(
                f"BEATs config: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.activation_fn not in ACTIVATIONS:
            raise AsdError(
                f"BEATs config: activation_fn {self.activation_fn!r} is not supported; "
                f"choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise AsdError("BEATs config: deep_norm and layer_norm_first exclude each other")


ACTIVATIONS = {
    # the official "gelu" runs in float32 whatever the input dtype
    "gelu": lambda x: F.gelu(x.float()).type_as(x),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}

# Fields that change no parameter shape or computation graph: a checkpoint may be loaded with them
# overridden (e.g. dropout for fine-tuning).
TRAINING_FIELDS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "dropout_input",
        "layer_wise_gradient_decay_ratio",
        "predictor_dropout",
    }
)

_ITER3 = BEATsConfig(
    input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=0.6, layer_norm_first=False, deep_norm=True, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.0,
    conv_pos=128, conv_pos_groups=16, relative_position_embedding=True, num_buckets=320,
    max_distance=800, gru_rel_pos=True, finetuned_model=False,
)  # fmt: skip
SIZES = {
    "base": _ITER3,
    # same structure, CPU-friendly: tests and the embedded default run on it
    "tiny": replace(_ITER3, encoder_layers=4, encoder_embed_dim=192, encoder_ffn_embed_dim=768,
                    encoder_attention_heads=4, embed_dim=128),
}  # fmt: skip


# ----------------------------------------------------------------------------- building blocks


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x, scale):
        """Return a copy of x; keep `scale` for backward."""
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        """Return the gradient times `scale` (and no gradient for `scale`)."""
        return grad * ctx.scale, None


class SamePad(nn.Module):
    """Drops the extra last frame that symmetric padding of an even kernel adds."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):  # (B, C, T + remove) -> (B, C, T)
        """Return x without its last frame when the kernel size is even."""
        return x[:, :, : -self.remove] if self.remove else x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Return the (length, length) bucket index of key position j relative to query position i.

    Half the buckets per direction; within each, exact buckets up to half of it, then buckets
    log-spaced up to max_distance. Computed on CPU in float32 as the official code does, so that
    truncation at bucket edges gives the same integers on every device. Cached, and always built
    outside inference mode: a cached inference tensor would break a later training step (an
    embedding lookup saves its indices for backward).
    """
    with torch.inference_mode(False):
        return _relative_position_buckets(length, num_buckets, max_distance)


@functools.lru_cache(maxsize=32)
def _relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.long)
    relative = pos[None, :] - pos[:, None]  # (T, T): key - query
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    max_exact = half // 2
    # clamp keeps log() finite where the exact branch is taken anyway
    far = distance.clamp(min=max_exact).float()
    far_bucket = max_exact + (
        torch.log(far / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    far_bucket = far_bucket.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, far_bucket)


class MultiheadAttention(nn.Module):
    """Self-attention with BEATs' gated relative position bias; SDPA or the reference math path."""

    def __init__(self, cfg: BEATsConfig, relative_attention_bias: nn.Embedding | None):
        super().__init__()
        dim, self.num_heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = cfg.attention_dropout
        self.use_sdpa = True
        # one table shared by all layers (the official checkpoint repeats it under every layer)
        if relative_attention_bias is not None:
            self.relative_attention_bias = relative_attention_bias
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(self, x, position_bias=None):  # (B, T, C), (H, T, T) or (B, H, T, T) -> (B, T, C)
        """Return self-attention of x (B, T, C), same shape, with `position_bias` added to the scores (gated per query)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        bias = None
        if position_bias is not None:
            # (1, H, T, T) shared by the batch, or (B, H, T, T) when each clip keeps other patches
            bias = position_bias if position_bias.dim() == 4 else position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                # per-query gate in (1, 1 + grep_a); computed from the unscaled query
                gate = torch.sigmoid(self.grep_linear(q).view(B, self.num_heads, T, 2, 4).sum(-1))
                gate_a, gate_b = gate.chunk(2, dim=-1)  # (B, H, T, 1) each
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias  # (B, H, T, T)

        dropout = self.dropout if self.training else 0.0
        if self.use_sdpa:
            # softmax(q k^T / sqrt(hd) + bias): the official scaled-q-then-add-bias, as a float mask
            mask = None if bias is None else bias.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            y = self._attention_math(q, k, v, bias, dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)

    def _attention_math(self, q, k, v, bias, dropout):  # (B, H, T, hd) -> (B, H, T, hd)
        """Return attention output computed as the official code does (reference path)."""
        # The official code divides q by 32 and subtracts the row maximum before multiplying back,
        # which keeps half-precision scores in range; softmax is unchanged by both.
        alpha = 32.0
        att = (q * (self.scaling / alpha)) @ k.transpose(-2, -1)  # (B, H, T, T)
        att = (att - att.amax(dim=-1, keepdim=True)) * alpha
        if bias is not None:
            att = att + bias
        att = torch.softmax(att, dim=-1, dtype=torch.float32).type_as(v)
        att = F.dropout(att, p=dropout, training=dropout > 0)
        return att @ v


class EncoderLayer(nn.Module):
    """Transformer layer: post-LN with deep-norm residual scaling (or pre-LN)."""

    def __init__(self, cfg: BEATsConfig, relative_attention_bias: nn.Embedding | None):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(cfg, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def mlp(self, x):
        """Return the feed-forward transform of x (fc1, activation, fc2, with dropout), same shape."""
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x, position_bias=None):  # (B, T, C) -> (B, T, C)
        """Return the layer output for x (B, T, C): pre-LN residuals, or post-LN ones with the input scaled by deep-norm's alpha."""
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self.mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.alpha + self.mlp(x))


class TransformerEncoder(nn.Module):
    """Convolutional positional embedding, then the transformer layers."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        conv = nn.Conv1d(dim, dim, cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4 / (cfg.conv_pos * dim)))
        nn.init.zeros_(conv.bias)
        # weight norm over all but the kernel axis: official keys weight_g (1, 1, K) and weight_v
        conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.pos_conv = nn.Sequential(conv, SamePad(cfg.conv_pos), nn.GELU())

        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        table = None
        if cfg.relative_position_embedding:
            table = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)
        self.layers = nn.ModuleList(EncoderLayer(cfg, table) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.encoder_layerdrop
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio

    def position_bias(self, length: int, keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """Return the relative position bias shared by all layers, or None.

        (H, T, T) for a whole sequence of `length`; with `keep` (B, K), indices of the patches each
        clip keeps, (B, H, K, K) between those patches at their distances in the whole sequence.
        """
        if not self.layers or not hasattr(self.layers[0].self_attn, "relative_attention_bias"):
            return None
        table = self.layers[0].self_attn.relative_attention_bias
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance).to(table.weight.device)
        if keep is None:
            return table(buckets).permute(2, 0, 1)  # (H, T, T)
        buckets = buckets[keep[:, :, None], keep[:, None, :]]  # (B, K, K)
        return table(buckets).permute(0, 3, 1, 2)  # (B, H, K, K)

    def forward(self, x, keep: torch.Tensor | None = None):  # (B, T, C) -> (B, T, C), or (B, K, C) with keep
        """Return the encoded sequence; with `keep` (B, K) only the kept positions, each at its true place.

        With `keep` (masked pre-training), the dropped positions are zeroed before the convolutional
        position embedding, so a kept patch sees its kept neighbours at their true offsets and
        nothing of the dropped ones; the layers then attend among the kept patches only, with the
        relative position bias of their distances in the whole sequence.
        """
        length = x.shape[1]
        if keep is None:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        else:
            kept = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device).scatter_(1, keep, 1.0)
            x = x + self.pos_conv((x * kept.unsqueeze(-1)).transpose(1, 2)).transpose(1, 2)
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, C)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = self.position_bias(length, keep)
        for layer in self.layers:
            if self.grad_decay != 1.0 and torch.is_grad_enabled():
                x = _GradMultiply.apply(x, self.grad_decay)
            # layerdrop: skip a whole layer at random while training
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x = layer(x, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


@torch.no_grad()
def init_encoder_weights(encoder: TransformerEncoder, cfg: BEATsConfig) -> None:
    """Initialise `encoder` as the official code does: BERT-style normal(0.02), then deep-norm scaling."""
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear):
            module.bias.zero_()
    if cfg.deep_norm:
        beta = (8 * cfg.encoder_layers) ** -0.25
        for layer in encoder.layers:
            attn = layer.self_attn
            nn.init.xavier_normal_(attn.k_proj.weight, gain=1.0)
            nn.init.xavier_normal_(attn.q_proj.weight, gain=1.0)
            for weight in (attn.v_proj.weight, attn.out_proj.weight, layer.fc1.weight, layer.fc2.weight):
                nn.init.xavier_normal_(weight, gain=beta)


class BEATs(nn.Module):
    """The BEATs encoder: `forward(wave[B, T]) -> tokens[B, N, D]` (official `extract_features`)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.encoder_embed_dim  # token width, what heads build on
        self.freq_patches = 128 // cfg.input_patch_size  # patches per time step (tokens are time-major)
        self.prefix_tokens = 0  # tokens before the patches
        self.num_layers, self.num_heads = cfg.encoder_layers, cfg.encoder_attention_heads
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=cfg.input_patch_size, stride=cfg.input_patch_size, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        init_encoder_weights(self.encoder, cfg)

    def set_sdpa(self, enabled: bool) -> BEATs:
        """Return self after switching every layer to scaled_dot_product_attention or the math path."""
        for layer in self.encoder.layers:
            layer.self_attn.use_sdpa = bool(enabled)
        return self

    @torch.no_grad()
    def preprocess(self, wave: torch.Tensor) -> torch.Tensor:
        """Return normalised kaldi fbanks (B, frames, 128) of 16 kHz waves (B, T) in [-1, 1]."""
        if wave.dim() != 2:
            raise AsdError(f"BEATs.preprocess expects waves of shape (batch, samples), got {tuple(wave.shape)}")
        fbanks = [
            # kaldi reads 16-bit integer scale; one clip at a time, as the official code does
            kaldi_fbank(clip.float().unsqueeze(0) * 2**15, num_mel_bins=128, sample_frequency=SAMPLE_RATE,
                        frame_length=25, frame_shift=10)
            for clip in wave
        ]  # fmt: skip
        return (torch.stack(fbanks) - FBANK_MEAN) / (2 * FBANK_STD)  # (B, F, 128)

    def embed_patches(self, fbank: torch.Tensor) -> torch.Tensor:
        """Return patch embeddings (B, N, D) of fbanks (B, F, 128), the encoder's input; time-major."""
        if fbank.shape[1] < self.cfg.input_patch_size:
            raise AsdError(
                f"clip too short for BEATs: {fbank.shape[1]} fbank frames, at least "
                f"{self.cfg.input_patch_size} needed (about {(self.cfg.input_patch_size + 1.5) / 100:.2f} s)"
            )
        x = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))  # (B, E, F/16, 8)
        x = x.flatten(2).transpose(1, 2)  # (B, N, E)
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)  # (B, N, D)
        return self.dropout_input(x)

    def encode(self, fbank: torch.Tensor) -> torch.Tensor:
        """Return tokens (B, N, D) of fbanks (B, F, 128); N = (F // 16) * 8, time-major."""
        return self.encoder(self.embed_patches(fbank))  # (B, N, D)

    def encode_unmasked(self, fbank: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return tokens (B, K, D) of only the patches `keep` (B, K) indexes, as masked pre-training feeds them.

        The encoder sees the unmasked patches only (BEATs section 3.3, as in MAE); each keeps its
        place in the whole sequence for both position encodings (`TransformerEncoder.forward`).
        """
        return self.encoder(self.embed_patches(fbank), keep=keep)  # (B, K, D)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Return tokens (B, N, D) of 16 kHz waves (B, T)."""
        return self.encode(self.preprocess(wave))


# ----------------------------------------------------------------------------- official checkpoints

# modern torch keeps weight norm as a parametrization; the official files use the old names
_WEIGHT_NORM_KEYS = {
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv.0.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv.0.parametrizations.weight.original1",
}
_PREDICTOR_PREFIXES = ("predictor.", "predictor_dropout.")


def _check_against(model: BEATs, state_dict: dict, path) -> None:
    """Raise AsdError, naming keys as the official files do, unless `state_dict` fits `model` exactly."""
    expected = model.state_dict()
    inverse = {v: k for k, v in _WEIGHT_NORM_KEYS.items()}
    missing = [inverse.get(k, k) for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys ({few(missing, 5)})"] if missing else []) + (
            [f"unexpected keys ({few(unexpected, 5)})"] if unexpected else []
        )
        raise AsdError("checkpoint does not match the BEATs config: " + "; ".join(parts), path)
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise AsdError(
                f"checkpoint key {inverse.get(key, key)} has shape {found}, "
                f"the config needs {tuple(expected[key].shape)}",
                path,
            )
    tables = sorted(k for k in state_dict if k.endswith("self_attn.relative_attention_bias.weight"))
    for key in tables[1:]:
        if not torch.equal(state_dict[key], state_dict[tables[0]]):
            raise AsdError(f"{key} differs from {tables[0]}; BEATs shares one relative position table", path)


def checkpoint_filter_official(ckpt: object, path) -> tuple[BEATsConfig, dict]:
    """Return (config, state dict renamed for `BEATs`) of an official checkpoint {"cfg": ..., "model": ...}.

    The AudioSet classifier (`predictor.*`) of fine-tuned checkpoints is dropped with a warning:
    asdtool uses the encoder only.
    """
    if not isinstance(ckpt, dict) or not {"cfg", "model"} <= ckpt.keys():
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise AsdError(f"not a BEATs checkpoint: expected a dict with 'cfg' and 'model', found {found}", path)
    cfg, state_dict = ckpt["cfg"], ckpt["model"]
    if not isinstance(cfg, dict) or not isinstance(state_dict, dict):
        raise AsdError("not a BEATs checkpoint: 'cfg' and 'model' must both be dicts", path)
    if isinstance(cfg.get("model"), dict):
        raise AsdError(
            "not a BEATs checkpoint: its cfg has a 'model' section, as fairseq checkpoints "
            "(EAT, data2vec) do; load it as the eat backbone",
            path,
        )
    unknown = set(cfg) - {f.name for f in fields(BEATsConfig)}
    if unknown:
        raise AsdError(f"not a BEATs checkpoint: unknown cfg keys ({few(map(str, unknown), 5)})", path)
    try:
        config = BEATsConfig(**{**cfg, "finetuned_model": False})  # no classifier head is ever built
    except (AsdError, TypeError) as error:
        raise AsdError(str(error), path) from None

    state_dict = {_WEIGHT_NORM_KEYS.get(k, k): v for k, v in state_dict.items()}
    dropped = [k for k in state_dict if k.startswith(_PREDICTOR_PREFIXES)]
    if dropped:
        warnings.warn(
            f"{path or 'BEATs checkpoint'}: dropped the AudioSet classifier head ({few(dropped, 5)}); "
            "asdtool uses the encoder only",
            stacklevel=3,
        )
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    return config, state_dict


def to_official(model: BEATs) -> dict:
    """Return {"cfg": dict, "model": state_dict} in the official checkpoint layout."""
    inverse = {v: k for k, v in _WEIGHT_NORM_KEYS.items()}
    state_dict = {inverse.get(k, k): v.detach() for k, v in model.state_dict().items()}
    # no classifier head is ever built, so the file must not promise one
    cfg = asdict(replace(model.cfg, finetuned_model=False))
    return {"cfg": cfg, "model": state_dict}


def load(checkpoint: str | Path | None = None, size: str = "base", **overrides) -> BEATs:
    """Return a BEATs encoder in eval mode: from an official-format checkpoint, else random at `size`.

    With a checkpoint the architecture comes from its cfg and only training-time fields
    (dropouts, layerdrop, gradient decay) may be overridden.
    """
    known = {f.name for f in fields(BEATsConfig)}
    if set(overrides) - known:
        raise AsdError(f"unknown BEATs config fields: {', '.join(sorted(set(overrides) - known))}")
    if checkpoint is None:
        if size not in SIZES:
            raise AsdError(f"unknown BEATs size {size!r}; choose one of {', '.join(SIZES)}")
        return BEATs(replace(SIZES[size], **overrides)).eval()

    config, state_dict = checkpoint_filter_official(read_checkpoint(checkpoint), checkpoint)
    architectural = sorted(k for k in overrides if k not in TRAINING_FIELDS and overrides[k] != getattr(config, k))
    if architectural:
        raise AsdError(f"cannot override architecture fields of a checkpoint: {', '.join(architectural)}", checkpoint)
    try:
        config = replace(config, **overrides)
    except AsdError as error:
        raise AsdError(str(error), checkpoint) from None
    # random init is wasted work here: build on the meta device and take the tensors as they are
    with torch.device("meta"):
        model = BEATs(config)
    _check_against(model, state_dict, checkpoint)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()
