"""DCGAN-style generator and critic for 8×8, 28×28 and 32×32×3 images.

Shapes follow the spirit of seed 000 figs. 9–10 (transposed-conv generator with batch norm,
strided-conv critic with LeakyReLU and no batch norm, as WGAN-GP requires).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgegan.errors import EdgeganError
from edgegan.nn.base import Generator, ProjectionCritic


def _plan(h: int) -> tuple[int, int]:
    """(start size, number of ×2 upsamplings) for an image side ``h``."""
    plans = {8: (2, 2), 28: (7, 2), 32: (4, 3), 64: (4, 4)}
    if h not in plans:
        raise EdgeganError("image_shape", f"side {h} not supported by DCGAN models",
                           "use 8, 28, 32 or 64, or the MLP models")
    return plans[h]


class DCGANGenerator(Generator):
    """z (B, latent_dim) [+ label embedding] → tanh image (B, C, H, W)."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], base_channels: int = 64,
                 num_classes: int = 0, embed_dim: int = 16) -> None:
        super().__init__()
        self._remember(locals())
        c, h, _ = image_shape
        self.latent_dim, self.num_classes, self.image_shape = latent_dim, num_classes, tuple(image_shape)
        s0, n_up = _plan(h)
        ch = base_channels * 2 ** (n_up - 1)
        self.s0, self.ch0 = s0, ch
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        d_in = latent_dim + (embed_dim if num_classes else 0)
        self.fc = nn.Sequential(nn.Linear(d_in, ch * s0 * s0), nn.BatchNorm1d(ch * s0 * s0), nn.ReLU())
        ups: list[nn.Module] = []
        for i in range(n_up):
            out = c if i == n_up - 1 else ch // 2
            ups.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if i < n_up - 1:
                ups += [nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.up = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], 1)
        h = self.fc(z).view(-1, self.ch0, self.s0, self.s0)  # (B, ch0, s0, s0)
        return torch.tanh(self.up(h))  # (B, C, H, W)


class DCGANCritic(ProjectionCritic):
    """image (B, C, H, W) [+ label] → score (B,); conditional by projection."""

    def __init__(self, image_shape: Sequence[int], base_channels: int = 64,
                 num_classes: int = 0) -> None:
        super().__init__()
        self._remember(locals())
        c, h, _ = image_shape
        self.num_classes = num_classes
        _, n_down = _plan(h)
        layers: list[nn.Module] = []
        ch_in, ch = c, base_channels
        for _ in range(n_down):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch_in, ch = ch, ch * 2
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            feat = self.conv(torch.zeros(1, c, h, h)).numel()
        self.feat_dim = feat
        self.out = nn.Linear(feat, 1)
        self.proj = nn.Embedding(num_classes, feat) if num_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)  # (B, feat)
