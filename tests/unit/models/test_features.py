"""SpecAugment: masks whole time frames / mel bins in train mode, nothing in eval."""

from __future__ import annotations

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.models.features import SpecAugment


def _fbank(batch: int = 8, frames: int = 300, mels: int = 128) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, frames, mels) + 1.0  # strictly positive: a 0.0 can only come from a mask


def test_eval_mode_is_identity():
    x = _fbank()
    aug = SpecAugment().eval()
    assert torch.equal(aug(x), x)


def test_train_mode_masks_whole_rows_and_columns_within_limits():
    x = _fbank(batch=16)
    aug = SpecAugment(max_time_mask=80, max_freq_mask=80, n_time_masks=1, n_freq_masks=1).train()
    torch.manual_seed(1)
    y = aug(x)
    assert y.shape == x.shape
    masked = y == 0.0
    assert masked.any(dim=(1, 2)).sum() >= 14  # a mask may draw length 0, rarely
    time_rows = masked.all(dim=2)  # (B, F): whole frames masked
    freq_cols = masked.all(dim=1)  # (B, mels): whole mel bins masked
    # every masked cell lies on a masked frame or a masked bin, and nothing else changed
    assert torch.equal(masked, time_rows[:, :, None] | freq_cols[:, None, :])
    assert torch.equal(y[~masked], x[~masked])
    # one contiguous span per axis, shorter than the maximum
    assert int(time_rows.sum(dim=1).max()) < 80 and int(freq_cols.sum(dim=1).max()) < 80
    for row in time_rows:
        idx = row.nonzero().flatten()
        if len(idx):
            assert int(idx[-1] - idx[0]) + 1 == len(idx)
    # clips draw their own masks
    assert len({tuple(r.nonzero().flatten().tolist()) for r in time_rows}) > 8


def test_more_masks_cover_more():
    x = _fbank(batch=32)
    torch.manual_seed(2)
    one = (SpecAugment(n_time_masks=1, n_freq_masks=1).train()(x) == 0).float().mean()
    torch.manual_seed(2)
    three = (SpecAugment(n_time_masks=3, n_freq_masks=3).train()(x) == 0).float().mean()
    assert three > one > 0


def test_mask_value_and_zero_masks():
    x = _fbank()
    torch.manual_seed(3)
    y = SpecAugment(mask_value=-7.0).train()(x)
    assert (y == -7.0).any() and not (y == 0.0).any()
    assert torch.equal(SpecAugment(n_time_masks=0, n_freq_masks=0).train()(x), x)


def test_mask_longer_than_axis_is_clipped():
    x = _fbank(batch=4, frames=20, mels=16)
    aug = SpecAugment(max_time_mask=500, max_freq_mask=500, n_time_masks=2, n_freq_masks=2).train()
    for seed in range(10):
        torch.manual_seed(seed)
        y = aug(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


def test_bad_arguments():
    with pytest.raises(AsdError, match="max_time_mask"):
        SpecAugment(max_time_mask=-1)
    with pytest.raises(AsdError, match="n_freq_masks"):
        SpecAugment(n_freq_masks=1.5)
    with pytest.raises(AsdError, match="fbank batch"):
        SpecAugment().train()(torch.zeros(10, 128))
