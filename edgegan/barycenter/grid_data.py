"""Training data for the grid-barycenter DCNN (seed 002 §3.2), made here, not downloaded.

Shapes are built by Constructive Solid Geometry: start from a random primitive (filled
ellipse, triangle, rectangle or thick line) and combine it ``d`` times with a new random
primitive by OR / AND / XOR / NOT (set difference ``a ∧ ¬b``), where
``d ~ ⅓(U(0, 50) + N(0, 2.5) + N(50, 2.5))`` clipped to [0, 50] promotes simple and complex
shapes; a Sobel filter then turns the mask into contours (seed 002 §3.2). Each shape is a
probability vector on the ``size × size`` grid. Ground-truth barycenters of random pairs
with random weights come from POT's entropic convolutional barycenter (Solomon et al. 2015),
and the whole data set is cached on disk under a content hash of its recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgegan.checkpoint import load_checkpoint, save_checkpoint
from edgegan.errors import require

log = logging.getLogger(__name__)

OPERATORS = ("or", "and", "xor", "not")
PRIMITIVES = ("ellipse", "triangle", "rectangle", "line")


def _primitive(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """One random filled primitive as a boolean mask on the unit-square grid (X, Y)."""
    kind = PRIMITIVES[rng.integers(len(PRIMITIVES))]
    cx, cy = rng.uniform(0.15, 0.85, size=2)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * (X - cx) + s * (Y - cy), -s * (X - cx) + c * (Y - cy)  # rotated frame
    if kind == "ellipse":
        a, b = rng.uniform(0.05, 0.35, size=2)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "rectangle":
        a, b = rng.uniform(0.04, 0.3, size=2)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "line":
        half, width = rng.uniform(0.1, 0.45), rng.uniform(0.015, 0.04)
        return (np.abs(u) <= half) & (np.abs(v) <= width)
    p = np.array([cx, cy]) + rng.uniform(-0.35, 0.35, size=(3, 2))  # triangle
    d = [(X - p[i, 0]) * (p[(i + 1) % 3, 1] - p[i, 1]) - (Y - p[i, 1]) * (p[(i + 1) % 3, 0] - p[i, 0])
         for i in range(3)]
    return ((d[0] >= 0) & (d[1] >= 0) & (d[2] >= 0)) | ((d[0] <= 0) & (d[1] <= 0) & (d[2] <= 0))


def _sobel(mask: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a 2-D array by the 3×3 Sobel filter (edge-replicated border)."""
    p = np.pad(mask.astype(np.float64), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.hypot(gx, gy)


def csg_shape(rng: np.random.Generator, size: int = 64, max_ops: int = 50,
              contour: bool = True) -> np.ndarray:
    """A random CSG shape as a probability vector of shape (size, size), float64.

    ``d ~ ⅓(U(0, max_ops) + N(0, 2.5) + N(max_ops, 2.5))`` combinations (seed 002 §3.2),
    then Sobel contours (``contour``) or the filled mask; redrawn until it holds >= 8 pixels.
    """
    t = (np.arange(size) + 0.5) / size
    X, Y = np.meshgrid(t, t)  # X varies along columns, Y along rows
    while True:
        mode = rng.integers(3)
        d = rng.uniform(0, max_ops) if mode == 0 else rng.normal(0 if mode == 1 else max_ops, 2.5)
        d = int(np.clip(round(d), 0, max_ops))
        mask = _primitive(rng, X, Y)
        for _ in range(d):
            op, other = OPERATORS[rng.integers(4)], _primitive(rng, X, Y)
            mask = {"or": mask | other, "and": mask & other, "xor": mask ^ other,
                    "not": mask & ~other}[op]
        mass = _sobel(mask) if contour else mask.astype(np.float64)
        if (mass > 0).sum() >= 8:
            return mass / mass.sum()


def random_shapes(rng: np.random.Generator, num: int, size: int = 64, max_ops: int = 50,
                  filled_fraction: float = 0.3, smooth_fraction: float = 0.0) -> np.ndarray:
    """``num`` CSG shapes (num, size, size); each filled with probability ``filled_fraction``,
    and with probability ``smooth_fraction`` drawn on a coarse 8×8 or 16×16 grid and upsampled
    bilinearly (smooth, dense inputs such as upsampled images)."""
    out = []
    for _ in range(num):
        coarse = int(rng.choice([8, 16])) if smooth_fraction > 0 and rng.uniform() < smooth_fraction else size
        h = csg_shape(rng, coarse, max_ops, contour=rng.uniform() >= filled_fraction)
        out.append(h if coarse == size else _upsample(torch.tensor(h)[None], size)[0].numpy())
    return np.stack(out)


def _upsample(h: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) histograms → (N, size, size) by bilinear interpolation, renormalised."""
    up = torch.nn.functional.interpolate(h[:, None].double(), size=(size, size), mode="bilinear",
                                         align_corners=False)[:, 0].clamp_min(0)
    return up / up.sum(dim=(1, 2), keepdim=True)


def digit_histograms(size: int = 64) -> torch.Tensor:
    """scikit-learn's 8×8 digits upsampled bilinearly to (N, size, size) probability vectors."""
    from edgegan.data import load_digits

    return _upsample((load_digits().x[:, 0] + 1.0) / 2.0, size)  # pixels in [0, 1]


@dataclass
class GridDataConfig:
    """Recipe of a pair data set; its JSON is the cache key (with the code version)."""

    size: int = field(default=64, metadata={"unit": "grid cells per side"})
    num_shapes: int = field(default=1500, metadata={"unit": "distinct CSG shapes"})
    num_pairs: int = field(default=4000, metadata={"unit": "(μ1, μ2, λ) training triples"})
    reg: float = field(default=0.004, metadata={"unit": "entropic reg. on the unit square"})
    stop_thr: float = field(default=1e-4, metadata={"unit": "POT stopThr"})
    max_ops: int = field(default=50, metadata={"unit": "CSG operations, seed 002: 50"})
    filled_fraction: float = field(default=0.3, metadata={
        "unit": "share of filled (not contour) shapes; seed 002 uses 0, filled ones help dense inputs"})
    smooth_fraction: float = field(default=0.0, metadata={
        "unit": "share drawn on an 8×8/16×16 grid and upsampled; seed 002 uses 0"})
    seed: int = field(default=0, metadata={"unit": "rng seed"})

    def validate(self, prefix: str = "data") -> None:
        require(self.size >= 16 and self.size % 8 == 0, f"{prefix}.size",
                f"{self.size} is not a multiple of 8 >= 16", "use 32, 64, 128, ...")
        require(self.num_shapes >= 2, f"{prefix}.num_shapes", f"{self.num_shapes} < 2", "use >= 2")
        require(self.num_pairs >= 1, f"{prefix}.num_pairs", f"{self.num_pairs} < 1", "use >= 1")
        require(self.reg > 0, f"{prefix}.reg", f"{self.reg} <= 0", "use e.g. 0.004")
        require(0 <= self.filled_fraction <= 1, f"{prefix}.filled_fraction",
                f"{self.filled_fraction} is outside [0, 1]", "use e.g. 0.3")
        require(0 <= self.smooth_fraction <= 1, f"{prefix}.smooth_fraction",
                f"{self.smooth_fraction} is outside [0, 1]", "use e.g. 0.3")

    def key(self) -> str:
        recipe = asdict(self)
        if not self.smooth_fraction:  # added later: recipes without it keep their keys
            del recipe["smooth_fraction"]
        blob = json.dumps({"v": 1, **recipe}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_pair_dataset(cfg: GridDataConfig, cache: bool = True) -> dict[str, torch.Tensor]:
    """``{"shapes": (S, H, W), "pairs": (P, 2) long, "weights": (P, 2), "barycenters": (P, H, W)}``
    (float32); pair barycenters from :func:`sinkhorn_grid_barycenter` at ``cfg.reg``.

    Cached as ``<cache_dir>/grid_barycenter/pairs-<key>.pt``; the key hashes the recipe.
    """
    from edgegan.barycenter.grid import sinkhorn_grid_barycenter

    cfg.validate()
    path = pair_cache_path(cfg)
    if cache and path.is_file():
        return {k: v for k, v in load_checkpoint(path).items() if isinstance(v, torch.Tensor)}
    rng = np.random.default_rng(cfg.seed)
    shapes = random_shapes(rng, cfg.num_shapes, cfg.size, cfg.max_ops, cfg.filled_fraction, cfg.smooth_fraction)
    pairs = np.stack([rng.choice(cfg.num_shapes, 2, replace=False) for _ in range(cfg.num_pairs)])
    lam = rng.uniform(0, 1, size=cfg.num_pairs)
    weights = np.stack([lam, 1 - lam], axis=1)
    bars, t0 = np.empty((cfg.num_pairs, cfg.size, cfg.size)), time.time()
    for i, (a, b) in enumerate(pairs):
        bars[i] = sinkhorn_grid_barycenter(shapes[[a, b]], weights[i], reg=cfg.reg, stop_thr=cfg.stop_thr)
        if (i + 1) % 500 == 0:
            log.info("grid pairs %d/%d (%.0f s)", i + 1, cfg.num_pairs, time.time() - t0)
    out = {"shapes": torch.tensor(shapes, dtype=torch.float32),
           "pairs": torch.tensor(pairs, dtype=torch.long),
           "weights": torch.tensor(weights, dtype=torch.float32),
           "barycenters": torch.tensor(bars, dtype=torch.float32)}
    if cache:
        save_checkpoint(path, {**out, "config": asdict(cfg)})
    return out


def pair_cache_path(cfg: GridDataConfig) -> Path:
    """Where :func:`make_pair_dataset` caches ``cfg``'s data set."""
    from edgegan.eval.classifier import cache_dir

    return cache_dir() / "grid_barycenter" / f"pairs-{cfg.key()}.pt"
