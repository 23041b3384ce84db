"""EAT: the Efficient Audio Transformer encoder (Chen et al. 2024), in plain PyTorch.

EAT is the data2vec 2.0 image-modality encoder run on a 128-bin log-mel fbank: 16x16 patches,
a fixed 2-D sin-cos position table, one CLS token, a LayerNorm on the embedded sequence and
post-norm transformer blocks. This file rebuilds that encoder without fairseq and imports the
two official checkpoint layouts: the fairseq pre-training checkpoint (`EAT-base_epoch30_pt.pt`)
and the Hugging Face port (`worstchan/EAT-base_epoch30_pretrain`: config.json + model.safetensors).
Fairseq files are read by `asdtool.models.read_checkpoint`, which turns their pickled OmegaConf
config into plain dicts without omegaconf or fairseq and refuses any other pickled class.
`to_fairseq` writes that layout back, optionally with the pre-training decoder and EMA teacher that
`asdtool.pretrain.eat` trains.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.atomic import atomic_path, write_json
from asdtool.data.audio import SAMPLE_RATE
from asdtool.core.errors import AsdError, few
from asdtool.models.features import kaldi_fbank
from asdtool.models.backbones.foreign import read_checkpoint

# Mean and std of the AudioSet fbank that EAT was pre-trained on; the official code divides by 2 * std.
FBANK_MEAN = -4.268
FBANK_STD = 4.569


@dataclass
class EATConfig:
    """Architecture knobs of the data2vec 2.0 image encoder EAT uses; `SIZES["base"]` is EAT-base."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    max_length: int = 768  # time patches the position table covers: 768 x 16 frames = 122.88 s
    patch_size: int = 16
    n_mels: int = 128
    norm_eps: float = 1e-6
    sdpa: bool = True  # attention through F.scaled_dot_product_attention; False = the reference math


SIZES = {
    "base": EATConfig(),
    "tiny": EATConfig(embed_dim=192, depth=4, num_heads=4),  # CPU-friendly, for tests and the demo
}
# Fields that change the weights or the math; a checkpoint fixes them.
ARCH_FIELDS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "max_length", "patch_size", "n_mels", "norm_eps")


def sincos_position_table(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    """Return the fixed 2-D sin-cos table (1, rows*cols, embed_dim) of MAE / data2vec 2.0, row-major."""
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    row = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)  # (rows*cols,) time index
    col = torch.arange(cols, dtype=torch.float64).repeat(rows)  # (rows*cols,) frequency index
    # MAE builds its grid with meshgrid(w, h), so the first half of the channels encodes the
    # column (frequency) and the second half the row (time); the checkpoints depend on that order.
    halves = []
    for pos in (col, row):
        angle = pos[:, None] * omega[None, :]  # (rows*cols, D/4)
        halves += [angle.sin(), angle.cos()]
    return torch.cat(halves, dim=1).float().unsqueeze(0)  # (1, rows*cols, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection; fused SDPA or the reference math path (fp32 softmax)."""
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.use_sdpa = cfg.sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return multi-head self-attention of x (B, N, D), same shape."""
        B, N, D = x.shape
        hs = D // self.num_heads
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, hs).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, N, hs)
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            att = (q * hs**-0.5) @ k.transpose(-2, -1)  # (B, nh, N, N)
            att = att.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # fp32 softmax as in the official code
            y = att @ v  # (B, nh, N, hs)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    """The block's feed-forward network: Linear to embed_dim * mlp_ratio, GELU, Linear back."""
    def __init__(self, cfg: EATConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the feed-forward transform of x (B, N, D), same shape."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """data2vec 2.0 `AltBlock` with layer_norm_first=False: LayerNorm after each residual sum."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for x (B, N, D), same shape."""
        return self.forward_with_ffn(x)[0]

    def forward_with_ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (block output, FFN output before its residual sum), both (B, N, D).

        The FFN output is data2vec 2.0's per-layer target (`AltBlock` with ffn_targets, i.e.
        end_of_block_targets=False), which EAT's teacher averages into the frame targets.
        """
        x = self.norm1(x + self.attn(x))
        ffn = self.mlp(x)
        return self.norm2(x + ffn), ffn


class EAT(nn.Module):
    """The EAT encoder: 16 kHz waves (B, T) -> tokens (B, 1 + patches, D), CLS first.

    Kaldi fbank, patch embedding plus the fixed sin-cos positions, CLS token, LayerNorm, post-norm blocks.
    """
    def __init__(self, cfg: EATConfig):
        super().__init__()
        if cfg.embed_dim % cfg.num_heads or cfg.embed_dim % 4 or cfg.n_mels % cfg.patch_size:
            raise AsdError(
                f"invalid EAT config: embed_dim {cfg.embed_dim} must divide by num_heads {cfg.num_heads} and 4, "
                f"n_mels {cfg.n_mels} by patch_size {cfg.patch_size}"
            )
        self.cfg = cfg
        self.embed_dim, self.num_layers, self.num_heads = cfg.embed_dim, cfg.depth, cfg.num_heads
        self.freq_patches = cfg.n_mels // cfg.patch_size  # patches per time step (tokens are time-major)
        self.prefix_tokens = 1  # the CLS token leads the patches
        self.patch_embed = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # A buffer, not a parameter: the table is fixed and must stay out of optimisers and LoRA.
        self.register_buffer("pos_embed", sincos_position_table(cfg.embed_dim, cfg.max_length, self.freq_patches))
        self.embed_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the official pre-training does (BERT linears, Xavier patches, N(0, 1) CLS)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.embed_dim, -1))
        nn.init.normal_(self.cls_token)

    def set_sdpa(self, enabled: bool) -> "EAT":
        """Return self after switching every block to fused SDPA attention (True) or the reference math path."""
        self.cfg = dataclasses.replace(self.cfg, sdpa=bool(enabled))
        for block in self.blocks:
            block.attn.use_sdpa = bool(enabled)
        return self

    @torch.no_grad()
    def preprocess(self, wave: torch.Tensor) -> torch.Tensor:
        """Return the normalised kaldi fbank (B, frames, n_mels) of 16 kHz waves (B, T), frames a multiple of 16."""
        if wave.dim() != 2:
            raise AsdError(f"EAT.preprocess expects a batch of waves [B, T], got shape {tuple(wave.shape)}")
        feats = []
        with torch.autocast(wave.device.type, enabled=False):
            for clip in wave.float():
                fbank = kaldi_fbank(
                    (clip - clip.mean()).unsqueeze(0),
                    htk_compat=True,
                    sample_frequency=SAMPLE_RATE,
                    use_energy=False,
                    window_type="hanning",
                    num_mel_bins=self.cfg.n_mels,
                    dither=0.0,
                    frame_shift=10,
                )  # (frames, n_mels)
                feats.append(fbank)
        fbank = torch.stack(feats)  # (B, frames, n_mels)
        if fbank.shape[1] == 0:
            raise AsdError(f"clip of {wave.shape[1]} samples is shorter than one 25 ms fbank frame")
        # Zero-pad before normalising, as the official feature extraction does.
        fbank = F.pad(fbank, (0, 0, 0, -fbank.shape[1] % self.cfg.patch_size))
        return (fbank - FBANK_MEAN) / (2 * FBANK_STD)

    def encode(self, fbank: torch.Tensor) -> torch.Tensor:
        """Return tokens (B, 1 + patches, D), CLS first, for a normalised fbank (B, frames, n_mels)."""
        return self.encode_tokens(self.patch_tokens(fbank))

    def patch_tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """Return the embedded patches plus positions (B, patches, D), time-major, for a normalised fbank.

        Patch t * (n_mels/patch_size) + f is time patch t, frequency patch f. A subset of these rows
        (the visible patches of a mask) may go to `encode_tokens`, as the pre-training student does.
        """
        B, frames, mels = fbank.shape
        p = self.cfg.patch_size
        if mels != self.cfg.n_mels or frames % p or frames == 0:
            raise AsdError(
                f"EAT.encode expects a fbank [B, frames, {self.cfg.n_mels}] with frames a positive multiple of {p} "
                f"(use preprocess()), got shape {tuple(fbank.shape)}"
            )
        if frames // p > self.cfg.max_length:
            raise AsdError(
                f"clip of {frames} fbank frames is longer than the {self.cfg.max_length * p} frames "
                f"({self.cfg.max_length * p / 100:.2f} s) the EAT position table covers"
            )
        x = self.patch_embed(fbank.unsqueeze(1))  # (B, D, frames/p, n_mels/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), time-major: patch t * n_mels/p + f
        return x + self.pos_embed[:, : x.shape[1]]

    def encode_tokens(self, x: torch.Tensor, ffn_outputs: list | None = None) -> torch.Tensor:
        """Return tokens (B, 1 + K, D), CLS first, for K patch tokens (B, K, D) from `patch_tokens`.

        When `ffn_outputs` is a list, each block's FFN output (B, 1 + K, D) is appended to it
        (the data2vec 2.0 layer results the pre-training teacher turns into targets).
        """
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + K, D); the CLS has no position
        x = self.embed_norm(x)
        for block in self.blocks:
            if ffn_outputs is None:
                x = block(x)
            else:
                x, ffn = block.forward_with_ffn(x)
                ffn_outputs.append(ffn)
        return x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Return tokens (B, 1 + patches, D) for 16 kHz waves (B, T); CLS at index 0."""
        return self.encode(self.preprocess(wave))


# ---------------------------------------------------------------------------------------------
# Official checkpoint layouts. Each table maps a foreign key (exact, or a prefix ending in ".")
# onto this module's key; keys listed as dropped are pre-training-only parts (decoder, EMA
# teacher, classification head) that the encoder does not use.

FAIRSEQ_KEYS = {
    "modality_encoders.IMAGE.local_encoder.proj.": "patch_embed.",
    "modality_encoders.IMAGE.extra_tokens": "cls_token",
    "modality_encoders.IMAGE.fixed_positional_encoder.positions": "pos_embed",
    "modality_encoders.IMAGE.context_encoder.norm.": "embed_norm.",
    "blocks.": "blocks.",
}
FAIRSEQ_DROPPED = (
    "modality_encoders.IMAGE.decoder.",
    "_ema",
    "ema.",
    "shared_decoder.",
    "recon_proj.",
    "cls_proj.",
    "center",
)

HF_KEYS = {
    "model.local_encoder.proj.": "patch_embed.",
    "model.extra_tokens": "cls_token",
    "model.fixed_positional_encoder.positions": "pos_embed",
    "model.pre_norm.": "embed_norm.",
    "model.blocks.": "blocks.",
}
HF_DROPPED = ("model.fc_norm.", "model.head.")


def _rename(key: str, table: dict[str, str]) -> str | None:
    """Return `key` renamed through `table`, or None when no entry matches."""
    for src, dst in table.items():
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src) :]
    return None


def _is_dropped(key: str, dropped: tuple[str, ...]) -> bool:
    """Return whether `key` belongs to a part the encoder leaves out on purpose."""
    return any(key == d or key.startswith(d if d.endswith(".") else d + ".") for d in dropped)


def _convert(state: dict, table: dict[str, str], dropped: tuple[str, ...], path) -> dict[str, torch.Tensor]:
    """Return `state` renamed into this module's keys; unknown keys raise, dropped parts warn."""
    out, unexpected, skipped = {}, [], []
    for key, value in state.items():
        if _is_dropped(key, dropped):
            skipped.append(key)
            continue
        new = _rename(key, table)
        if new is None:
            unexpected.append(key)
        elif not isinstance(value, torch.Tensor):
            raise AsdError(f"checkpoint entry {key} is a {type(value).__name__}, not a tensor", path)
        else:
            out[new] = value
    if unexpected:
        raise AsdError(f"not an EAT encoder checkpoint: unexpected keys {few(unexpected, 5)}", path)
    if skipped:
        warnings.warn(
            f"{path}: dropped {len(skipped)} pre-training-only entries the encoder does not use "
            f"(decoder, EMA teacher, heads): {few(skipped, 3)}",
            stacklevel=3,
        )
    return out


def _check_against(model: EAT, state: dict[str, torch.Tensor], table: dict[str, str], path) -> None:
    """Raise AsdError, naming keys in the file's own layout, unless `state` fits `model` exactly."""
    foreign = {dst: src for src, dst in table.items()}
    expected = model.state_dict()

    def name(key):  # the key as the checkpoint spells it
        """Return `key` as the checkpoint's own layout spells it."""
        for dst, src in foreign.items():
            if key == dst or (dst.endswith(".") and key.startswith(dst)):
                return src + key[len(dst) :]
        return key

    missing = [name(k) for k in expected if k not in state]
    if missing:
        raise AsdError(f"EAT checkpoint lacks keys {few(missing, 5)}", path)
    extra = [name(k) for k in state if k not in expected]
    if extra:
        raise AsdError(f"EAT checkpoint has unexpected keys {few(extra, 5)}", path)
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise AsdError(
                f"EAT checkpoint key {name(key)} has shape {tuple(value.shape)}, "
                f"the config implies {tuple(expected[key].shape)}",
                path,
            )


def _max_length(state: dict[str, torch.Tensor], cfg: EATConfig, path) -> int:
    """Return the time patches of the checkpoint's position table (which fixes max_length)."""
    table = state.get("pos_embed")
    cols = cfg.n_mels // cfg.patch_size
    if table is None or table.dim() != 3 or table.shape[1] % cols:
        return cfg.max_length  # _check_against reports the problem with the key's own name
    return table.shape[1] // cols


def checkpoint_filter_fairseq(ckpt: object, path) -> tuple[EATConfig, dict[str, torch.Tensor]]:
    """Return (config, state dict) from an official fairseq EAT checkpoint {"cfg": {"model": ...}, "model": ...}."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise AsdError("not an EAT checkpoint: expected a dict with a 'model' state dict", path)
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and "encoder_layers" in cfg:
        raise AsdError("this is a BEATs checkpoint (cfg has encoder_layers), not EAT; load it as beats", path)
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict):
        raise AsdError("not an EAT fairseq checkpoint: no cfg['model'] section", path)
    if not any(k.startswith("modality_encoders.IMAGE.") for k in ckpt["model"]):
        raise AsdError(
            f"not an EAT checkpoint: no modality_encoders.IMAGE.* keys (has {few(ckpt['model'], 3)})", path
        )
    image = (model_cfg.get("modalities") or {}).get("image") or {}
    unsupported = {
        "layer_norm_first": (model_cfg.get("layer_norm_first", False), False),
        "prenet_depth": (image.get("prenet_depth", 0), 0),
        "num_extra_tokens": (image.get("num_extra_tokens", 1), 1),
        "in_chans": (image.get("in_chans", 1), 1),
        "use_alibi_encoder": (image.get("use_alibi_encoder", False), False),
    }
    for field, (value, wanted) in unsupported.items():
        if value != wanted:
            raise AsdError(f"EAT checkpoint with {field}={value} is not supported (EAT uses {wanted})", path)
    state = _convert(ckpt["model"], FAIRSEQ_KEYS, FAIRSEQ_DROPPED, path)
    try:
        config = EATConfig(
            embed_dim=int(model_cfg["embed_dim"]),
            depth=int(model_cfg["depth"]),
            num_heads=int(model_cfg["num_heads"]),
            mlp_ratio=float(model_cfg.get("mlp_ratio", 4.0)),
            patch_size=int(image.get("patch_size", 16)),
            norm_eps=float(model_cfg.get("norm_eps", 1e-6)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AsdError(f"EAT checkpoint cfg['model'] lacks or garbles {e}", path) from None
    return dataclasses.replace(config, max_length=_max_length(state, config, path)), state


def checkpoint_filter_hf(hf_config: dict, tensors: dict[str, torch.Tensor], path) -> tuple[EATConfig, dict]:
    """Return (config, state dict) from the Hugging Face port (config.json fields, model.safetensors tensors)."""
    if not isinstance(hf_config, dict) or "embed_dim" not in hf_config:
        raise AsdError("config.json is not an EAT config (no embed_dim)", path)
    for field, wanted in (("layer_norm_first", False), ("in_chans", 1), ("fixed_positions", True)):
        if hf_config.get(field, wanted) != wanted:
            raise AsdError(f"EAT config with {field}={hf_config[field]} is not supported", path)
    patch = int(hf_config.get("patch_size", 16))
    if int(hf_config.get("stride", patch)) != patch:
        raise AsdError(f"EAT config with overlapping patches (stride {hf_config['stride']}) is not supported", path)
    state = _convert(tensors, HF_KEYS, HF_DROPPED, path)
    config = EATConfig(
        embed_dim=int(hf_config["embed_dim"]),
        depth=int(hf_config.get("depth", 12)),
        num_heads=int(hf_config.get("num_heads", 12)),
        mlp_ratio=float(hf_config.get("mlp_ratio", 4.0)),
        max_length=int(hf_config.get("max_length", 768)),
        patch_size=patch,
        n_mels=int(hf_config.get("mel_bins", 128)),
        norm_eps=float(hf_config.get("norm_eps", 1e-6)),
    )
    return config, state


def _read_hf(path: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """Return (config.json dict, safetensors tensors, folder) of a Hugging Face EAT folder or file in it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = path if path.is_dir() else path.parent
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise AsdError(f"Hugging Face EAT folder lacks {needed.name}", folder)
    from asdtool.core.safeparse import read_json

    hf_config = read_json(config_path, what="Hugging Face config")
    try:
        tensors = load_file(weights_path, device="cpu")
    except (OSError, SafetensorError) as e:
        raise AsdError(f"cannot read safetensors: {e}", weights_path) from None
    return hf_config, tensors, folder


def _from_state(config: EATConfig, state: dict, table: dict[str, str], path) -> EAT:
    """Return an EAT built from `config` holding exactly `state`."""
    with torch.device("meta"):  # skip the random init that the checkpoint overwrites anyway
        model = EAT(config)
    _check_against(model, state, table, path)
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model


def load(checkpoint: str | Path | None = None, size: str = "base", **overrides) -> EAT:
    """Return an EAT encoder in eval mode: from an official checkpoint when given, else random at `size`.

    `checkpoint` is a fairseq `.pt` file or a Hugging Face folder (or its model.safetensors /
    config.json); its config wins over `size`. `overrides` are EATConfig fields.
    """
    fields = {f.name for f in dataclasses.fields(EATConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise AsdError(f"unknown EAT option(s) {', '.join(unknown)}; choose from {', '.join(sorted(fields))}")
    if checkpoint is None:
        if size not in SIZES:
            raise AsdError(f"unknown EAT size {size!r}; choose one of {', '.join(SIZES)}")
        return EAT(dataclasses.replace(SIZES[size], **overrides)).eval()

    path = Path(checkpoint)
    if not path.exists():
        raise AsdError("checkpoint not found", path)
    if path.is_dir() or path.suffix == ".safetensors" or path.name == "config.json":
        hf_config, tensors, path = _read_hf(path)
        config, state = checkpoint_filter_hf(hf_config, tensors, path)
        table = HF_KEYS
    else:
        config, state = checkpoint_filter_fairseq(read_checkpoint(path), path)
        table = FAIRSEQ_KEYS
    for name, value in overrides.items():
        if name in ARCH_FIELDS and getattr(config, name) != value:
            ours = getattr(config, name)
            raise AsdError(f"option {name}={value} conflicts with the checkpoint's {name}={ours}", path)
    return _from_state(dataclasses.replace(config, **overrides), state, table, path).eval()


def _export(model: EAT, table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Return the model's state dict renamed into a foreign layout."""
    inverse = {dst: src for src, dst in table.items()}
    return {_rename(k, inverse): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


# Where the official pre-training checkpoints keep the parts only pre-training uses.
FAIRSEQ_DECODER = "modality_encoders.IMAGE.decoder."  # data2vec 2.0's `Decoder2d`: blocks.{i}.0.*, proj.*
FAIRSEQ_EMA = "_ema"  # the EMA teacher: {key: fp32 tensor} in the encoder's own fairseq names


def to_fairseq(
    model: EAT,
    decoder: dict[str, torch.Tensor] | None = None,
    ema: EAT | None = None,
    pretraining_cfg: dict | None = None,
) -> dict:
    """Return the model as an official fairseq checkpoint {"cfg": {"model": ...}, "model": state dict}.

    The optional pre-training parts go where the official pre-training checkpoints keep them:
    `decoder` (a state dict in data2vec 2.0's `Decoder2d` names, `blocks.{i}.0.weight`,
    `proj.weight`, ...) under `modality_encoders.IMAGE.decoder.`, the EMA teacher `ema` as a dict
    under `_ema`, and `pretraining_cfg` (objective fields of cfg['model'], with an optional
    `modalities.image` part) merged into the config; the architecture fields of `model` win.
    `load` reads the encoder alone and drops the rest.
    """
    c = model.cfg
    image = {
        "type": "IMAGE",
        "in_chans": 1,
        "patch_size": c.patch_size,
        "embed_dim": c.embed_dim,
        "num_extra_tokens": 1,
        "prenet_depth": 0,
        "fixed_positions": True,
        "use_alibi_encoder": False,
        "max_length": c.max_length,
    }
    cfg = {
        "embed_dim": c.embed_dim,
        "depth": c.depth,
        "num_heads": c.num_heads,
        "mlp_ratio": c.mlp_ratio,
        "norm_eps": c.norm_eps,
        "layer_norm_first": False,
        "supported_modality": "IMAGE",
        "modalities": {"image": image},
    }
    state = _export(model, FAIRSEQ_KEYS)
    if pretraining_cfg:
        extra = dict(pretraining_cfg)
        image_extra = dict((extra.pop("modalities", None) or {}).get("image") or {})
        cfg = {**extra, **cfg, "modalities": {"image": {**image_extra, **image}}}
    if decoder is not None:
        state.update({FAIRSEQ_DECODER + k: v.detach().cpu().contiguous() for k, v in decoder.items()})
    if ema is not None:
        if ema.cfg != dataclasses.replace(c, sdpa=ema.cfg.sdpa):
            raise AsdError("the EMA teacher's architecture differs from the exported encoder's")
        state[FAIRSEQ_EMA] = {k: v.float() for k, v in _export(ema, FAIRSEQ_KEYS).items()}
    return {"cfg": {"model": cfg}, "model": state}


def to_hf(model: EAT, folder: str | Path) -> Path:
    """Return `folder` after writing the model there in the Hugging Face layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    c = model.cfg
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {
        "architectures": ["EATModel"],
        "model_type": "eat",
        "embed_dim": c.embed_dim,
        "depth": c.depth,
        "num_heads": c.num_heads,
        "patch_size": c.patch_size,
        "stride": c.patch_size,
        "in_chans": 1,
        "mel_bins": c.n_mels,
        "max_length": c.max_length,
        "model_variant": "pretrain",
        "mlp_ratio": c.mlp_ratio,
        "qkv_bias": True,
        "layer_norm_first": False,
        "norm_eps": c.norm_eps,
        "norm_affine": True,
        "fixed_positions": True,
        "img_size": [1024, c.n_mels],
    }
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(_export(model, HF_KEYS), str(tmp), metadata={"format": "pt"})
    write_json(folder / "config.json", hf_config)
    return folder
