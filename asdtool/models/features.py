"""Features: the kaldi fbank every model computes, and SpecAugment masks on the normalised fbanks.

This is the one module that imports torchaudio (whose compiled part must match torch exactly).
Each backbone's `.preprocess` calls `kaldi_fbank` with its official settings; the log-mel
reference detector calls it too.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from asdtool.core.errors import AsdError


def kaldi_fbank(wave: torch.Tensor, **options) -> torch.Tensor:
    """Return the kaldi-compatible log-mel filterbank [frames, bins] of one wave [1, T] (torchaudio's options)."""
    return torchaudio.compliance.kaldi.fbank(wave, **options)


class SpecAugment(nn.Module):
    """Return a fbank [B, F, mels] with random time and frequency masks in train mode; unchanged in eval.

    Each clip of the batch draws its own masks (torchaudio's `iid_masks`): `n_time_masks` spans
    of up to `max_time_mask` frames and `n_freq_masks` spans of up to `max_freq_mask` mel bins.
    The paper fine-tunes with "a maximum mask length of 80"; one mask per axis, as in the
    AST/EAT fine-tuning recipes, is the default. A maximum longer than the axis is clipped to the
    axis length (a short clip or a test-size fbank must not crash). Masked cells take
    `mask_value`: 0.0 is the dataset mean, since both backbones' fbanks are mean-normalised.
    """

    def __init__(
        self,
        max_time_mask: int = 80,
        max_freq_mask: int = 80,
        n_time_masks: int = 1,
        n_freq_masks: int = 1,
        mask_value: float = 0.0,
    ):
        super().__init__()
        for name, value in (("max_time_mask", max_time_mask), ("max_freq_mask", max_freq_mask),
                            ("n_time_masks", n_time_masks), ("n_freq_masks", n_freq_masks)):  # fmt: skip
            if int(value) != value or value < 0:
                raise AsdError(f"SpecAugment {name} must be a non-negative integer, got {value!r}")
        self.max_time_mask = int(max_time_mask)
        self.max_freq_mask = int(max_freq_mask)
        self.n_time_masks = int(n_time_masks)
        self.n_freq_masks = int(n_freq_masks)
        self.mask_value = float(mask_value)

    def extra_repr(self) -> str:
        """Return the mask settings shown in the module's repr."""
        return (
            f"max_time_mask={self.max_time_mask}, max_freq_mask={self.max_freq_mask}, "
            f"n_time_masks={self.n_time_masks}, n_freq_masks={self.n_freq_masks}, mask_value={self.mask_value}"
        )

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:  # (B, F, mels) -> (B, F, mels)
        """Return the fbank (B, F, mels) with each clip's own random masks in train mode; unchanged in eval mode."""
        if not self.training:
            return fbank
        if fbank.dim() != 3:
            raise AsdError(f"SpecAugment expects a fbank batch [B, frames, mels], got shape {tuple(fbank.shape)}")
        frames, mels = fbank.shape[1], fbank.shape[2]
        # torchaudio masks the last two dims as (freq, time)
        x = fbank.transpose(1, 2)  # (B, mels, F)
        freq = torchaudio.transforms.FrequencyMasking(min(self.max_freq_mask, mels), iid_masks=True)
        time = torchaudio.transforms.TimeMasking(min(self.max_time_mask, frames), iid_masks=True)
        for _ in range(self.n_freq_masks):
            x = freq(x, self.mask_value)
        for _ in range(self.n_time_masks):
            x = time(x, self.mask_value)
        return x.transpose(1, 2).contiguous()  # (B, F, mels)
