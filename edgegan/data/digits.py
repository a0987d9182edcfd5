"""scikit-learn's embedded 8×8 digits (1797 images, 10 classes), scaled to [-1, 1]."""

from __future__ import annotations

import torch

from edgegan.data.tensordata import TensorData


def load_digits() -> TensorData:
    """Digits as (1797, 1, 8, 8) float32 in [-1, 1]; pixel values 0..16 map linearly."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # (N,1,8,8)
    y = torch.tensor(d.target, dtype=torch.long)
    return TensorData("digits", x, y, 10)
