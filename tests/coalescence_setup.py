"""Small pre-trained source nodes shared by the coalescence tests (built once per test session)."""

from __future__ import annotations

import functools

import torch

from edgegan.baselines.coalescence import digits_split, pretrain_sources
from edgegan.data import load_digits
from edgegan.gan import WGANConfig

# ema_decay 0: the raw G, the setting every margin of the tests built on these sources was measured with
CFG = WGANConfig(lr=2e-4, beta2=0.9, ema_decay=0.0)
PRETRAIN_CFG = WGANConfig(lr=5e-4, beta2=0.9, ema_decay=0.0)  # sources reach feature-FID ~240 (real ~190) in 300 steps
SOURCE_CLASSES = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
TARGET_CLASSES = [2, 7]


def two_sources(steps: int = 300, seed: int = 0):
    """Digits split over two source nodes with disjoint classes and a 20-sample target node of
    classes {2, 7}; each source pre-trains an MLP WGAN-GP (G width 128, D 64) for ``steps`` iterations
    from training seed ``seed`` (the split itself is fixed). Built once per (steps, seed)."""
    return _two_sources(steps, seed)


@functools.lru_cache(maxsize=None)
def _two_sources(steps: int, seed: int):
    data = load_digits()
    sources, target = digits_split(data, SOURCE_CLASSES, TARGET_CLASSES, 20, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sources whatever the test process's thread count
    try:
        gens, crits = pretrain_sources([s.x for s in sources], generator_width=128, critic_width=64, steps=steps,
                                       cfg=PRETRAIN_CFG, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return data, sources, target, gens, crits


def two_source_barycenter(steps: int = 150, seed: int = 0):
    """Stage I result for :func:`two_sources` (training seed ``seed``) with equal radii; built once
    per (steps, seed)."""
    return _two_source_barycenter(steps, seed)


@functools.lru_cache(maxsize=None)
def _two_source_barycenter(steps: int, seed: int):
    from edgegan.barycenter import recursive_barycenter

    _, _, _, gens, crits = two_sources(seed=seed)
    torch.manual_seed(seed)
    return recursive_barycenter(gens, crits, [1.0, 1.0], steps, CFG)
