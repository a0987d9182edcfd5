"""Fréchet distance between Gaussian fits, and the feature-FID of seed 000 appendix D.1.

    FD(N(μ₁,Σ₁), N(μ₂,Σ₂)) = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

"Modified FID" (seed 000 D.1): the features are the penultimate layer of a classifier
trained on the data set itself, since Inception features do not fit digits/MNIST.
"""

from __future__ import annotations

import numpy as np
import torch

from edgegan.errors import require


def gaussian_fit(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of features (n, d), in float64."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    require(f.ndim == 2 and f.shape[0] >= 2, "features", f"need (n>=2, d), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet (= W2²) distance between two Gaussians.

    tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) = Σ_i √λ_i(Σ₁Σ₂): the eigenvalues of a product of PSD
    matrices are real and ≥ 0, so this stays exact for singular (e.g. ReLU) feature covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    require(mu1.shape == mu2.shape, "mu", f"shapes differ: {mu1.shape} vs {mu2.shape}")
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    tr_cross = float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_cross)


def fid_from_features(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets."""
    return frechet_distance(*gaussian_fit(f1), *gaussian_fit(f2))
