"""EAT's self-supervised pre-training objective: data2vec 2.0 on 16x16 fbank patches.

EAT (Chen et al. 2024, "EAT: Self-Supervised Pre-Training with Efficient Audio Transformer",
IJCAI 2024) trains the encoder of `asdtool.models.backbones.eat` as data2vec 2.0 (Baevski et al. 2023,
"Efficient Self-supervised Learning with Contextualized Target Representations for Vision, Speech
and Language") trains its image model, plus one utterance-level term:

1. An EMA teacher, a copy of the whole encoder (patch embedding, CLS, norm, blocks), encodes the
   unmasked fbank once per clip. Its frame targets are the FFN outputs of its top-k blocks, each
   instance-normalised over the patches of the clip, averaged, then layer-normalised per patch.
2. Each clip is copied `clones` times, each copy with its own inverse block mask: 5x5 blocks of
   the (time x frequency) patch grid stay visible, 80 % of the patches are masked.
3. The student encodes only the visible patches and its CLS token. A CNN decoder of six grouped
   3x3 convolutions over the patch grid, with masked cells filled with N(0, 0.01) noise, predicts
   the teacher's targets; the frame loss is their squared error at the masked patches.
4. Utterance-Frame Objective: the student's CLS output regresses the teacher's targets averaged
   over the patches of the clip.

Every constant below was checked against the official configs, `config/pretraining_AS2M.yaml` of
github.com/cwx-worst-one/EAT (EAT-base on AudioSet-2M) and `examples/data2vec/config/v2/
base_images_only_task.yaml` of fairseq (data2vec 2.0 image base), and against the official model
code (EAT `models/EAT_pretraining.py`, `models/base.py`, `models/images.py`, `models/modules.py`,
`utils/data_utils.py`); the docstrings say where each comes from.

Choices of ours, all documented where they act:
- The EMA decay anneals linearly over the run's `total` steps (the official run anneals over its
  first 100 000 of 400 000 updates), since our runs are short.
- The decoder is as wide as the student (EAT-base: 768 = its embed_dim), so the tiny size gets a
  192-channel decoder; layers, kernel and groups keep the paper's values.
- Mask randomness comes from the loop's CPU generator (the official code seeds per clip id).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.errors import AsdError
from asdtool.models.backbones import eat as eat_model

if TYPE_CHECKING:
    from asdtool.config.stages import PretrainConfig

# --- The papers' constants -------------------------------------------------------------------
# EMA teacher decay, linearly annealed from start to end (EAT pretraining_AS2M.yaml `ema_decay`,
# `ema_end_decay`; data2vec 2.0 image base uses the same pair).
EMA_DECAY = 0.9998
EMA_END_DECAY = 0.99999
# Share of patches masked (EAT: "mask ratio 80 %"; yaml `modalities.image.mask_prob: 0.8`).
MASK_RATIO = 0.8
# Inverse block masking: visible blocks of 5x5 patches (EAT yaml `mask_length: 5`; data2vec 2.0
# images use 3), seeded with the kept share raised by 0.07 to offset block overlap (`mask_prob_adjust`).
MASK_BLOCK = 5
MASK_PROB_ADJUST = 0.07
# Std of the noise that fills masked cells of the decoder input (`mask_noise_std: 0.01`).
MASK_NOISE_STD = 0.01
# Masked copies of each clip per step, EAT's multi-mask (`clone_batch: 16`).
CLONES = 16
# Weight of the utterance (CLS) loss, EAT's lambda (`cls_loss: 1`).
UTTERANCE_WEIGHT = 1.0
# data2vec 2.0 / EAT CNN decoder (`modalities.image.decoder`: decoder_layers 6, decoder_kernel 3,
# decoder_groups 16, decoder_dim 768 = EAT-base's embed_dim, input_dropout 0, residual on).
DECODER_LAYERS = 6
DECODER_KERNEL = 3
DECODER_GROUPS = 16
# Optimiser betas of the official runs (yaml `optimizer.groups.default.optimizer.adam_betas`);
# the shared loop reads this name.
ADAM_BETAS = (0.9, 0.95)
# Gradients are clipped at this global norm (EAT pretraining_AS2M.yaml: optimization.clip_norm 4).
CLIP_NORM = 4.0
# eps of F.instance_norm and fairseq's LayerNorm, which the official target and decoder norms use.
NORM_EPS = 1e-5


def visible_count(patches: int, mask_ratio: float) -> int:
    """Return how many of `patches` stay visible under `mask_ratio`: floor(patches * (1 - ratio)), in [1, patches - 1].

    The official code takes int(L * (1 - mask_prob)); the 1e-6 keeps float error (1 - 0.8 =
    0.19999...) from dropping a patch, and the clamp keeps at least one patch on each side.
    """
    return min(max(math.floor(patches * (1.0 - mask_ratio) + 1e-6), 1), patches - 1)


def inverse_block_mask(
    masks: int,
    time_patches: int,
    freq_patches: int,
    mask_ratio: float,
    generator: torch.Generator,
    block: int = MASK_BLOCK,
    adjust: float = MASK_PROB_ADJUST,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (visible, masked) patch indices, (masks, K) and (masks, L - K), each row sorted ascending.

    data2vec 2.0's inverse block masking (its "Inverse block masking"; EAT's "inverse block
    multi-mask"), as `compute_block_mask_2d(inverse_mask=True)` does it: int(L * (1 - ratio +
    adjust) / block^2) block centres are drawn uniformly (with repeats) on the time x frequency
    grid, the block x block square around each, cut at the grid's edges, stays visible, and the
    visible set is then trimmed or topped up uniformly at random to exactly K = `visible_count`
    patches. Indices are time-major (t * freq_patches + f), as `EAT.patch_tokens` orders them.
    All draws come from the CPU `generator`; the result is on the CPU.
    """
    patches = time_patches * freq_patches
    if patches < 2:
        raise AsdError(f"EAT pre-training needs at least 2 patches per clip to mask, got {patches}")
    if block % 2 == 0:
        raise ValueError(f"mask block size must be odd, got {block}")
    keep = visible_count(patches, mask_ratio)
    centres = int(patches * (1.0 - mask_ratio + adjust) / block**2)
    seeds = torch.zeros(masks, patches)
    if centres > 0:
        seeds.scatter_(1, torch.randint(0, patches, (masks, centres), generator=generator), 1.0)
    # Dilating the centres by a block x block max-pool marks each square, cut at the edges.
    blocks = F.max_pool2d(seeds.view(masks, 1, time_patches, freq_patches), block, 1, block // 2)
    # Block cells score in [1, 2), the rest in [0, 1): the top K are a uniform subset of the blocks
    # when they hold more than K, else all of them plus a uniform subset of the other cells.
    score = blocks.view(masks, patches) + torch.rand(masks, patches, generator=generator)
    order = score.argsort(dim=1, descending=True, stable=True)
    return order[:, :keep].sort(dim=1).values, order[:, keep:].sort(dim=1).values


def frame_targets(layer_outputs: list[torch.Tensor]) -> torch.Tensor:
    """Return data2vec 2.0 frame targets (B, L, D) in float32 from the teacher's FFN outputs, k x (B, L, D).

    Each layer is instance-normalised (every channel over the patches of its clip;
    `instance_norm_target_layer: true`), the layers are averaged (`average_top_k_layers`), and the
    average is layer-normalised over channels without affine (`layer_norm_targets: true`).
    """
    h = torch.stack(layer_outputs).float()  # (k, B, L, D)
    mean = h.mean(dim=2, keepdim=True)
    var = h.var(dim=2, unbiased=False, keepdim=True)
    y = ((h - mean) * torch.rsqrt(var + NORM_EPS)).mean(dim=0)  # (B, L, D)
    return F.layer_norm(y, y.shape[-1:], eps=NORM_EPS)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, without affine (fairseq's decoder norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x with each position's channel vector normalised, same shape."""
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=NORM_EPS).permute(0, 3, 1, 2)


class Decoder2d(nn.Module):
    """data2vec 2.0's image decoder (`Decoder2d`), which EAT uses: grouped convolutions over the patch grid.

    Each of `layers` blocks is Conv2d(kernel, same padding, `groups`) -> LayerNorm over channels
    (no affine) -> GELU, plus a residual connection; a final Linear maps back to the encoder's
    width. The state dict keys (`blocks.{i}.0.weight`, `proj.weight`, ...) are the official
    ones under `modality_encoders.IMAGE.decoder.`.
    """

    def __init__(
        self, dim: int, layers: int = DECODER_LAYERS, kernel: int = DECODER_KERNEL, groups: int = DECODER_GROUPS
    ):
        super().__init__()
        # The paper's 16 groups divide every width asdtool builds (64, 192, 768); others use the gcd.
        self.groups = math.gcd(dim, groups)
        self.kernel = kernel
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=self.groups),
                ChannelLayerNorm(),
                nn.GELU(),
            )
            for _ in range(layers)
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, time_patches: int, freq_patches: int) -> torch.Tensor:
        """Return predictions (B, L, D) for a full, time-major patch sequence x (B, L, D), L = time x freq patches."""
        B, L, D = x.shape
        x = x.transpose(1, 2).reshape(B, D, time_patches, freq_patches)  # (B, D, T, F)
        for block in self.blocks:
            x = x + block(x)  # the decoder's width equals its input's, so every block is residual
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, L, D)


class Objective(nn.Module):
    """EAT's pre-training objective around a student `EAT`: EMA teacher, CNN decoder, frame and utterance losses."""

    def __init__(
        self,
        student: eat_model.EAT,
        mask_ratio: float = MASK_RATIO,
        clones: int = CLONES,
        ema_decay: float = EMA_DECAY,
        ema_end_decay: float = EMA_END_DECAY,
        top_k_layers: int | None = None,
        utterance_weight: float = UTTERANCE_WEIGHT,
    ):
        super().__init__()
        if not isinstance(student, eat_model.EAT):
            raise AsdError(f"the EAT objective needs an EAT backbone, got {type(student).__name__}")
        top_k = student.num_layers if top_k_layers is None else int(top_k_layers)
        if not 1 <= top_k <= student.num_layers:
            raise AsdError(f"top_k_layers must lie in 1..{student.num_layers} (the backbone's blocks), got {top_k}")
        if not 0 < mask_ratio < 1:
            raise AsdError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio}")
        if clones < 1:
            raise AsdError(f"clones must be at least 1, got {clones}")
        for name, value in (("ema_decay", ema_decay), ("ema_end_decay", ema_end_decay)):
            if not 0 <= value <= 1:
                raise AsdError(f"{name} must lie in [0, 1], got {value}")
        if utterance_weight < 0:
            raise AsdError(f"utterance_weight must be at least 0, got {utterance_weight}")
        self.student = student
        # The teacher copies the whole encoder, patch embedding included (`ema_encoder_only: false`,
        # `ema_local_encoder: true`), and never trains.
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        self.decoder = Decoder2d(student.embed_dim)
        self.mask_ratio, self.clones, self.top_k_layers = float(mask_ratio), int(clones), top_k
        self.ema_start, self.ema_end = float(ema_decay), float(ema_end_decay)
        self.utterance_weight = float(utterance_weight)
        # The decay of the latest teacher update, kept in the state so a resumed run logs the same.
        self.register_buffer("ema_decay", torch.tensor(self.ema_start, dtype=torch.float64))

    def train(self, mode: bool = True) -> "Objective":
        """Return self with student and decoder in `mode`; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, fbank: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (loss, stats) for a normalised fbank (B, frames, n_mels); masks and noise come from `generator`.

        loss = frame + utterance_weight * sum over the B x clones masked copies of the CLS error,
        both squared errors summed over channels and scaled by 1/sqrt(D) (data2vec 2.0's
        `loss_scale: None`), the frame term averaged over masked patches. This is the official
        normalisation: fairseq divides the summed losses by the masked-patch count, and the model
        multiplies the CLS term by that count first (`cls_loss * sample_size`), so the utterance
        term is a sum over the copies of a (per-process) micro-batch, not a mean.
        stats: frame_loss, utterance_loss (per copy), target_var and pred_var (mean per-channel std
        at the masked patches, as the official logs), ema_decay (of the latest teacher update).
        """
        student = self.student
        tokens = student.patch_tokens(fbank)  # (B, L, D); checks the fbank's shape
        B, L, D = tokens.shape
        freq = student.freq_patches
        time = L // freq
        device = tokens.device
        n = B * self.clones
        visible, masked = inverse_block_mask(n, time, freq, self.mask_ratio, generator)
        visible, masked = visible.to(device), masked.to(device)  # (n, K), (n, M)
        # Noise is drawn on the fbank's device from a seed the CPU generator gives, so it repeats on resume.
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))

        with torch.no_grad():
            layers: list[torch.Tensor] = []
            self.teacher.encode_tokens(self.teacher.patch_tokens(fbank), layers)
            y = frame_targets([h[:, 1:] for h in layers[-self.top_k_layers :]])  # (B, L, D) float32

        clip = torch.arange(B, device=device).repeat_interleave(self.clones)  # (n,): the clip of each copy
        x = student.encode_tokens(tokens[clip[:, None], visible])  # (n, 1 + K, D)
        noise = torch.Generator(device=device).manual_seed(noise_seed)
        grid = torch.randn(n, L, D, generator=noise, device=device, dtype=x.dtype) * MASK_NOISE_STD
        grid = grid.scatter(1, visible.unsqueeze(-1).expand(-1, -1, D), x[:, 1:])  # (n, L, D)
        pred = self.decoder(grid, time, freq)  # (n, L, D)

        rows = torch.arange(n, device=device)[:, None]
        pred_masked = pred[rows, masked].float()  # (n, M, D)
        y_masked = y[clip[:, None], masked]  # (n, M, D)
        scale = D**-0.5
        frame = (pred_masked - y_masked).pow(2).sum(-1).mean() * scale
        utterance = (x[:, 0].float() - y.mean(dim=1)[clip]).pow(2).sum(-1) * scale  # (n,)
        loss = frame + self.utterance_weight * utterance.sum()
        with torch.no_grad():
            stats = {
                "frame_loss": frame.detach(),
                "utterance_loss": utterance.mean().detach(),
                "target_var": _mean_std(y_masked),
                "pred_var": _mean_std(pred_masked),
                "ema_decay": self.ema_decay.detach().float(),
            }
        return loss, stats

    def decay_at(self, step: int, total: int) -> float:
        """Return the EMA decay after `step` of `total` optimiser steps: linear from start to end over the run.

        The official run anneals over `ema_anneal_end_step` = 100 000 updates; ours are short, so the
        anneal spans the whole run and the last update uses the end decay.
        """
        frac = 1.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
        return self.ema_start + (self.ema_end - self.ema_start) * frac

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        """Update the teacher after optimiser step `step` (1-based) of `total`: t = d * t + (1 - d) * s.

        Every float parameter takes the EMA; buffers (the fixed position table) are copied, as
        fairseq's EMAModule does with non-trainable state.
        """
        decay = self.decay_at(step, total)
        self.ema_decay.fill_(decay)
        if decay >= 1:
            return
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1 - decay)
        for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            t.copy_(s)

    def fairseq_cfg(self) -> dict:
        """Return the objective's settings in the official cfg['model'] field names (for the export)."""
        d = self.decoder
        return {
            "ema_decay": self.ema_start,
            "ema_end_decay": self.ema_end,
            "ema_encoder_only": False,
            "average_top_k_layers": self.top_k_layers,
            "instance_norm_target_layer": True,
            "layer_norm_targets": True,
            "end_of_block_targets": False,
            "clone_batch": self.clones,
            "cls_loss": self.utterance_weight,
            "d2v_loss": 1,
            "loss_beta": 0,
            "loss_scale": None,
            "modalities": {
                "image": {
                    "inverse_mask": True,
                    "mask_prob": self.mask_ratio,
                    "mask_prob_adjust": MASK_PROB_ADJUST,
                    "mask_length": MASK_BLOCK,
                    "mask_noise_std": MASK_NOISE_STD,
                    "ema_local_encoder": True,
                    "decoder": {
                        "decoder_dim": self.student.embed_dim,
                        "decoder_groups": d.groups,
                        "decoder_kernel": d.kernel,
                        "decoder_layers": len(d.blocks),
                        "input_dropout": 0.0,
                        "add_positions_masked": False,
                        "add_positions_all": False,
                        "decoder_residual": True,
                        "projection_layers": 1,
                    },
                }
            },
        }


def _mean_std(v: torch.Tensor) -> torch.Tensor:
    """Return the mean over channels of the std over rows of v (..., D), as data2vec 2.0 logs target/pred var."""
    v = v.detach().float().reshape(-1, v.shape[-1])
    return torch.sqrt(v.var(dim=0) + 1e-6).mean()


def build_objective(student: eat_model.EAT, cfg: PretrainConfig) -> Objective:
    """Return EAT's objective around `student`; knobs left None in `cfg` take the paper's values."""

    def pick(value, default):
        """Return `value`, or `default` when it is None."""
        return default if value is None else value

    return Objective(
        student,
        mask_ratio=pick(cfg.mask_ratio, MASK_RATIO),
        clones=pick(cfg.clones, CLONES),
        ema_decay=pick(cfg.ema_decay, EMA_DECAY),
        ema_end_decay=pick(cfg.ema_end_decay, EMA_END_DECAY),
        top_k_layers=cfg.top_k_layers,
        utterance_weight=pick(cfg.utterance_weight, UTTERANCE_WEIGHT),
    )


def export(objective: Objective) -> dict:
    """Return the trained student as an official fairseq EAT pre-training checkpoint, with decoder and EMA teacher.

    Layout: {"cfg": {"model": ...}, "model": encoder keys (modality_encoders.IMAGE.*, blocks.*),
    modality_encoders.IMAGE.decoder.*, and "_ema": the teacher's tensors in the same names}.
    `asdtool.models.backbones.eat.load` reads it (dropping decoder and teacher) as the student.
    """
    return eat_model.to_fairseq(
        objective.student,
        decoder=objective.decoder.state_dict(),
        ema=objective.teacher,
        pretraining_cfg=objective.fairseq_cfg(),
    )
