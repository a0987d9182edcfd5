"""Small pre-trained source nodes shared by the issue-4 tests (built once per test session)."""

from __future__ import annotations

import functools

import torch

from edgegan.baselines.coalescence import digits_split, pretrain_sources
from edgegan.data import load_digits
from edgegan.gan import WGANConfig

CFG = WGANConfig(lr=2e-4, beta2=0.9)
SOURCE_CLASSES = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
TARGET_CLASSES = [2, 7]


@functools.lru_cache(maxsize=None)
def two_sources(steps: int = 300):
    """Digits split over two source nodes with disjoint classes and a 20-sample target node of
    classes {2, 7}; each source pre-trains an MLP WGAN-GP (width 64) for ``steps`` iterations."""
    torch.set_num_threads(1)
    data = load_digits()
    sources, target = digits_split(data, SOURCE_CLASSES, TARGET_CLASSES, 20, seed=0)
    gens, crits = pretrain_sources([s.x for s in sources], generator_width=64, critic_width=64, steps=steps,
                                   cfg=CFG, seed=0)
    return data, sources, target, gens, crits
