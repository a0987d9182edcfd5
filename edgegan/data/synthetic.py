"""Synthetic measures: Gaussians with seeded random SPD covariances, and 2-D mixtures.

A *sampler* is a callable ``sample(m) -> (m, d)`` tensor; barycenter solvers take samplers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from edgegan.errors import require

Sampler = Callable[[int], torch.Tensor]


def random_rotation(dim: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, sign-fixed)."""
    a = torch.randn(dim, dim, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def random_spd(dim: int, generator: torch.Generator | None = None, min_eig: float = 0.5,
               max_eig: float = 2.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """R · diag(exp(linspace(log min_eig, log max_eig))) · Rᵀ (seeds 001/004 benchmark).

    Condition number is bounded by ``max_eig / min_eig``.
    """
    require(dim >= 1, "dim", f"must be >= 1, got {dim}")
    require(0 < min_eig <= max_eig, "min_eig", "need 0 < min_eig <= max_eig")
    r = random_rotation(dim, generator, dtype)
    eig = torch.exp(torch.linspace(math.log(min_eig), math.log(max_eig), dim, dtype=dtype))
    s = r @ torch.diag(eig) @ r.T
    return 0.5 * (s + s.T)


def gaussian_sampler(mean: torch.Tensor, cov: torch.Tensor,
                     generator: torch.Generator | None = None) -> Sampler:
    """Sampler of N(mean, cov) in float32."""
    chol = torch.linalg.cholesky(cov.double())
    mean = mean.double()

    def sample(m: int) -> torch.Tensor:
        z = torch.randn(m, mean.shape[0], generator=generator, dtype=torch.float64)
        return (mean + z @ chol.T).float()

    return sample


def _mixture_sampler(centers: torch.Tensor, std: float,
                     generator: torch.Generator | None) -> Sampler:
    def sample(m: int) -> torch.Tensor:
        k = torch.randint(0, centers.shape[0], (m,), generator=generator)
        return centers[k] + std * torch.randn(m, 2, generator=generator)

    return sample


def ring8_centers(radius: float = 2.0) -> torch.Tensor:
    """Centres of the 8-Gaussian ring."""
    ang = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)


def ring8_sampler(radius: float = 2.0, std: float = 0.02,
                  generator: torch.Generator | None = None) -> Sampler:
    """8 Gaussians on a circle of ``radius`` with standard deviation ``std``."""
    return _mixture_sampler(ring8_centers(radius), std, generator)


def grid25_centers(spacing: float = 1.0) -> torch.Tensor:
    """Centres of the 5×5 grid mixture."""
    g = (torch.arange(5, dtype=torch.float32) - 2) * spacing
    return torch.cartesian_prod(g, g)


def grid25_sampler(spacing: float = 1.0, std: float = 0.05,
                   generator: torch.Generator | None = None) -> Sampler:
    """25 Gaussians on a 5×5 grid."""
    return _mixture_sampler(grid25_centers(spacing), std, generator)
