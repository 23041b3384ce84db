"""BEATs pre-training, first iteration: masked audio modeling of random-projection labels.

Chen et al. 2023, "BEATs: Audio Pre-Training with Acoustic Tokenizers" (ICML), with the tokenizer of
its first iteration (section 3.2.1), which follows BEST-RQ (Chiu et al. 2022, "Self-supervised
Learning with Random-projection Quantizer for Speech Recognition", ICML):

1. A frozen random-projection tokenizer gives every 16x16 fbank patch a discrete label
   (`RandomProjectionTokenizer`).
2. 75 % of the patches of each clip are masked (`mask_patches`, section 3.3.2); the encoder sees
   the unmasked patches only (`BEATs.encode_unmasked`).
3. A Transformer label predictor reads the encoded patches with zeros in the masked places and
   predicts the labels of the masked patches; the loss is their cross-entropy (Eq. 4).

Only the encoder is kept: `export` writes the official checkpoint layout of the student, without
the label predictor (BEATs section 3.3.3 discards it before fine-tuning) and without the tokenizer.
The later iterations (self-distilled tokenizers, section 3.2.2) are not implemented here.

Paper constants used (BEATs section 4.2 unless said otherwise):
- 16x16 patches of 128-bin fbanks normalised to N(0, 0.5^2): the backbone's `preprocess`.
- mask ratio 0.75 (section 3.3.2).
- codebook of 1024 codes (section 4.2: "1024 embeddings"). The paper gives the tokenizers' codebooks
  256 dimensions; BEST-RQ projects to 16 (its experiments, section 4), which `PretrainConfig.codebook_dim`
  documents as the default, so 16 is used unless set.
- projection Xavier-initialised, codebook drawn from a standard normal, both l2-normalised before
  the nearest-neighbour search (BEST-RQ section 3.1).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from asdtool.core.errors import AsdError
from asdtool.models.backbones.beats import BEATs, TransformerEncoder, init_encoder_weights, to_official

MASK_RATIO = 0.75  # BEATs section 3.3.2
CODEBOOK_SIZE = 1024  # BEATs section 4.2
CODEBOOK_DIM = 16  # BEST-RQ section 4; PretrainConfig's documented default
# The paper calls the label predictor "Transformer-based" (section 3.3.2) without giving its depth;
# its one other auxiliary Transformer, the tokenizer estimator, has 3 layers (section 3.2.2). We use
# 3 layers for the 12-layer base encoder, a quarter of the encoder's depth for smaller sizes.
PREDICTOR_DEPTH_RATIO = 3 / 12
# per-patch standardisation: a constant patch (digital silence, padding) stays at zero, label 0
PATCH_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------- tokenizer


def patchify(fbank: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Return the flattened patches (B, N, p * p) of fbanks (B, F, M), in the encoder's token order.

    Token n = t * (M // p) + f covers frames [t p, (t + 1) p) and bins [f p, (f + 1) p), as the
    strided Conv2d patch embedding of `BEATs` orders them; frames past the last whole patch are
    dropped as that convolution drops them.
    """
    B, frames, mels = fbank.shape
    T, Fq = frames // patch_size, mels // patch_size
    x = fbank[:, : T * patch_size, : Fq * patch_size]
    x = x.reshape(B, T, patch_size, Fq, patch_size).permute(0, 1, 3, 2, 4)  # (B, T, Fq, p, p)
    return x.reshape(B, T * Fq, patch_size * patch_size)


class RandomProjectionTokenizer(nn.Module):
    """The frozen random-projection tokenizer: patches (via fbanks) -> labels in [0, codebook_size).

    BEATs section 3.2.1, Eq. 1: z_t = argmin_i ||v_i - W x_t||^2 with a random projection W and a
    random codebook V = {v_i}, both frozen. Details follow BEST-RQ (section 3.1), which BEATs cites for
    it: W is Xavier-initialised, V standard normal, and W x_t and v_i are l2-normalised before the
    nearest-neighbour search, so the distance is that of unit vectors (the largest cosine wins) and
    no code wins by its norm alone.

    BEST-RQ normalises the input to zero mean and unit variance, without which a common offset
    dominates W x and the labels collapse onto a few codes. The fbanks are normalised with
    AudioSet's statistics (BEATs section 4.2), which leave machine sounds off centre (our synthetic
    fan, bearing, ToyCar and valve clips: mean 0.2 to 0.3 at a standard deviation near 0.3), so each
    patch is standardised on its own (its 256 values to mean 0, variance 1). On 576 patches of such
    clips that lifts the codes used from 15-101 to 331-372; after the l2-normalisation of W x it
    loses only the patch's mean level.

    W and V are buffers (saved in `state_dict`, never trained), drawn once from torch's global RNG
    when the tokenizer is built; labels are computed in float32 with autocast off, so bf16 training
    sees the same labels as float32.
    """

    def __init__(self, patch_size: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.patch_size = patch_size
        projection = torch.empty(codebook_dim, patch_size * patch_size)
        nn.init.xavier_normal_(projection)
        self.register_buffer("projection", projection)  # W (d, p * p)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, codebook_dim), dim=-1))  # V (K, d)

    @property
    def codebook_size(self) -> int:
        """Number of labels the tokenizer gives (codebook entries)."""
        return self.codebook.shape[0]

    @torch.no_grad()
    def forward(self, fbank: torch.Tensor) -> torch.Tensor:  # (B, F, M) -> (B, N) int64
        """Return the label (B, N) in [0, codebook_size) of every patch of fbanks (B, F, M)."""
        with torch.autocast(device_type=fbank.device.type, enabled=False):
            patches = patchify(fbank.float(), self.patch_size)  # (B, N, p * p)
            patches = F.layer_norm(patches, patches.shape[-1:], eps=PATCH_NORM_EPS)
            projected = F.normalize(patches @ self.projection.t(), dim=-1)  # (B, N, d)
            # for unit vectors ||v - u||^2 = 2 - 2 v.u: the nearest code has the largest dot product
            return (projected @ self.codebook.t()).argmax(dim=-1)  # (B, N)


# ----------------------------------------------------------------------------- masking


def mask_patches(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator):
    """Return (keep, masked): sorted patch indices (B, K) and (B, M) of each clip, M = round(ratio N).

    Every clip masks the same number of patches, chosen uniformly at random (BEATs section 3.3.2)
    from `generator` alone, on the CPU, so a resumed run draws the masks of the uninterrupted one.
    At least one patch is kept and one masked.
    """
    if num_patches < 2:
        raise AsdError(f"BEATs pre-training needs at least 2 patches per clip, got {num_patches}; use longer clips")
    num_masked = min(max(round(mask_ratio * num_patches), 1), num_patches - 1)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    keep = order[:, num_masked:].sort(dim=1).values
    masked = order[:, :num_masked].sort(dim=1).values
    return keep, masked


# ----------------------------------------------------------------------------- label predictor


class LabelPredictor(nn.Module):
    """Transformer label predictor (BEATs section 3.3.2): full sequence -> logits of chosen patches.

    Input is {r_t: t unmasked} with a zero vector for every masked t, as the paper writes it. It is
    a stack of BEATs encoder layers of the student's width, with the same convolutional position
    embedding (which gives the zero tokens their place from their neighbours) and gated relative
    position bias, then a linear layer to the codebook. Depth: `predictor_layers` (3 for the base
    encoder, see PREDICTOR_DEPTH_RATIO); no layerdrop and no layer-wise gradient decay.
    """

    def __init__(self, student_cfg, num_layers: int, codebook_size: int):
        super().__init__()
        self.cfg = replace(student_cfg, encoder_layers=num_layers, encoder_layerdrop=0.0,
                           layer_wise_gradient_decay_ratio=1.0)  # fmt: skip
        self.transformer = TransformerEncoder(self.cfg)
        init_encoder_weights(self.transformer, self.cfg)
        self.head = nn.Linear(self.cfg.encoder_embed_dim, codebook_size)
        # BERT-style small init: the first logits are near zero, the first loss near log(codebook_size)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B, N, D), (B, M) -> (B, M, K)
        """Return the codebook logits at `positions` of the whole sequence `x`."""
        x = self.transformer(x)
        x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, M, D)
        return self.head(x)


def predictor_layers(encoder_layers: int) -> int:
    """Return the label predictor's depth for an encoder of `encoder_layers` (3 for 12, 1 for tiny's 4)."""
    return max(1, round(encoder_layers * PREDICTOR_DEPTH_RATIO))


# ----------------------------------------------------------------------------- objective


class Objective(nn.Module):
    """Masked audio modeling with random-projection labels: `forward(fbank, generator) -> (loss, stats)`.

    loss = mean over the masked patches of -log p(z_t | unmasked patches) (BEATs Eq. 4, which sums;
    the mean keeps the scale independent of batch and clip length). Logits are cast to float32
    before the softmax so bf16 autocast cannot overflow it.
    """

    def __init__(self, student: BEATs, mask_ratio: float, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.student = student
        self.mask_ratio = mask_ratio
        self.tokenizer = RandomProjectionTokenizer(student.cfg.input_patch_size, codebook_size, codebook_dim)
        self.label_predictor = LabelPredictor(student.cfg, predictor_layers(student.num_layers), codebook_size)

    def forward(self, fbank: torch.Tensor, generator: torch.Generator):
        """Return (loss, stats) of fbanks (B, F, 128); the masks come from the CPU `generator` alone.

        stats: `accuracy` of the predicted labels of the masked patches, `codes_used` the number of
        distinct labels in the batch (a collapsing tokenizer would show here first).
        """
        labels = self.tokenizer(fbank)  # (B, N)
        B, N = labels.shape
        keep, masked = (ix.to(fbank.device) for ix in mask_patches(B, N, self.mask_ratio, generator))

        encoded = self.student.encode_unmasked(fbank, keep)  # (B, K, D)
        # the encoded patches in their places, zeros in the masked ones (section 3.3.2)
        full = encoded.new_zeros(B, N, encoded.shape[-1])
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, encoded.shape[-1]), encoded)
        logits = self.label_predictor(full, masked).float()  # (B, M, K)
        targets = labels.gather(1, masked)  # (B, M)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())

        with torch.no_grad():
            ordered = labels.flatten().sort().values  # distinct labels, counted without a host sync
            stats = {
                "accuracy": (logits.argmax(-1) == targets).float().mean(),
                "codes_used": (ordered[1:] != ordered[:-1]).sum().float() + 1,
            }
        return loss, stats

    def after_step(self, step: int, total: int) -> None:
        """Nothing to update: the tokenizer is frozen and there is no teacher."""


def build_objective(student: BEATs, cfg) -> Objective:
    """Return the BEATs iteration-1 objective around `student`; unset knobs take the papers' values."""
    if not isinstance(student, BEATs):
        raise AsdError(f"the BEATs pre-training objective needs a BEATs backbone, got {type(student).__name__}")
    mask_ratio = MASK_RATIO if getattr(cfg, "mask_ratio", None) is None else cfg.mask_ratio
    codebook_size = CODEBOOK_SIZE if getattr(cfg, "codebook_size", None) is None else cfg.codebook_size
    codebook_dim = CODEBOOK_DIM if getattr(cfg, "codebook_dim", None) is None else cfg.codebook_dim
    if not 0 < mask_ratio < 1:
        raise AsdError(f"--mask-ratio must lie strictly between 0 and 1, got {mask_ratio}")
    for name, value in (("codebook-size", codebook_size), ("codebook-dim", codebook_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AsdError(f"--{name} must be a positive integer, got {value!r}")
    return Objective(student, float(mask_ratio), codebook_size, codebook_dim)


def export(objective: Objective) -> dict:
    """Return the student in the official BEATs checkpoint layout {"cfg": ..., "model": ...}.

    The label predictor and the tokenizer are left out: they serve pre-training only (BEATs
    section 3.3.3 discards the predictor), and `asdtool.models.backbones.beats` would take keys under
    `predictor.` for the AudioSet classifier of fine-tuned checkpoints.
    """
    objective = getattr(objective, "module", objective)  # a DistributedDataParallel wrapper
    return to_official(objective.student)


__all__ = [
    "CODEBOOK_DIM",
    "CODEBOOK_SIZE",
    "MASK_RATIO",
    "LabelPredictor",
    "Objective",
    "RandomProjectionTokenizer",
    "build_objective",
    "export",
    "mask_patches",
    "patchify",
    "predictor_layers",
]
