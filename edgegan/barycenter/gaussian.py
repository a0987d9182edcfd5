"""Ground truth for W2 barycenters: Gaussians and location-scatter families.

Exact barycenter of N(m_k, Σ_k) with weights α (Álvarez-Esteban et al. 2016, seed 004 §4.1):

    mean = Σ_k α_k m_k,
    S ← S^{-1/2} ( Σ_k α_k (S^{1/2} Σ_k S^{1/2})^{1/2} )² S^{-1/2}   until S stops moving,

whose fixed point satisfies S = Σ_k α_k (S^{1/2} Σ_k S^{1/2})^{1/2}. W2 between Gaussians is
closed form, and BW2-UVP (seed 001 eq. 11) = 100 · W2²(fitted, true) / Var(true) %, with the
fitted side a Gaussian fitted to generated samples.

Non-Gaussian inputs with a known barycenter (location-scatter family, seed 004 §5/App. C.2 and
its reference ``LocationScatterBenchmark``): take a base law U with mean 0 and covariance I
(here a centred uniform cube), and P_k = law(Σ_k^{1/2} U + m_k). All P_k are linear images of
one base, the linear maps between them are gradients of convex quadratics, and the
barycenter is law(S^{1/2} U + mean) with (mean, S) the Gaussian barycenter of (m_k, Σ_k).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch

from edgegan.data.synthetic import Sampler, gaussian_sampler, random_rotation, random_spd
from edgegan.errors import EdgeganError, require

__all__ = [
    "check_weights", "sqrtm_spd", "exact_gaussian_barycenter", "gaussian_w2_squared",
    "fit_gaussian", "bw2_uvp", "fixed_point_residual", "linear_ot_map",
    "gaussian_benchmark", "hard_gaussian_benchmark", "gaussian_samplers", "uniform_cube_sampler", "location_scatter_samplers",
]


def check_weights(weights: Sequence[float] | torch.Tensor, n: int, normalize: bool = False,
                  field: str = "weights") -> torch.Tensor:
    """Barycentric weights as a float64 tensor: ``n`` entries, ≥ 0, summing to 1.

    A sum ≠ 1 is an error unless ``normalize=True``, which rescales with a warning.
    """
    w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
    require(w.numel() == n, field, f"got {w.numel()} weights for {n} inputs", "give one weight per input")
    require(bool(torch.isfinite(w).all()), field, "weights must be finite numbers")
    require(bool((w >= 0).all()), field, f"weights must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    require(total > 0, field, "weights sum to 0", "give at least one positive weight")
    if abs(total - 1.0) > 1e-6:
        if not normalize:
            raise EdgeganError(field, f"weights sum to {total:.6g}, not 1",
                               "rescale them or pass normalize=True")
        warnings.warn(f"{field}: weights summed to {total:.6g}; normalised to 1", stacklevel=3)
        w = w / total
    return w


def _check_spd(covs: torch.Tensor, field: str = "covs") -> None:
    require(covs.dim() == 3 and covs.shape[1] == covs.shape[2], field,
            f"expected shape (k, d, d), got {tuple(covs.shape)}")
    asym = (covs - covs.transpose(1, 2)).abs().amax()
    scale = covs.abs().amax().clamp_min(1e-300)
    require(float(asym / scale) < 1e-6, field, "covariance matrices must be symmetric")
    eig = torch.linalg.eigvalsh(covs.double())
    require(bool((eig > 0).all()), field,
            f"covariance matrices must be positive definite (smallest eigenvalue {float(eig.min()):.3g})")


def sqrtm_spd(s: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Symmetric square root (or inverse square root) of SPD matrices ``(..., d, d)`` via eigh."""
    eig, vec = torch.linalg.eigh(s)
    eig = eig.clamp_min(0.0)
    root = eig.rsqrt() if inverse else eig.sqrt()
    return (vec * root.unsqueeze(-2)) @ vec.transpose(-1, -2)


def exact_gaussian_barycenter(means: torch.Tensor, covs: torch.Tensor,
                              weights: Sequence[float] | torch.Tensor, tol: float = 1e-10,
                              max_iter: int = 1000, log: bool = False, normalize: bool = False):
    """W2 barycenter of Gaussians N(m_k, Σ_k) by the fixed point of Álvarez-Esteban et al.

    mean = Σ α_k m_k;  S ← S^{-1/2} (Σ_k α_k (S^{1/2} Σ_k S^{1/2})^{1/2})² S^{-1/2}.

    Parameters
    ----------
    means : (k, d)
    covs : (k, d, d), symmetric positive definite
    weights : (k,), non-negative, summing to 1 (``normalize=True`` rescales with a warning)
    tol : stop when max |S_new − S| < tol (float64 arithmetic)

    Returns
    -------
    mean (d,), cov (d, d) in the inputs' dtype and device, and with ``log=True`` a dict
    ``{"n_iter", "delta", "residual"}`` (residual: max-abs fixed-point residual).

    References: seed 004 §4.1 (fixed point H), Álvarez-Esteban et al. 2016 Thm 4.2.
    """
    means = torch.as_tensor(means)
    covs = torch.as_tensor(covs)
    require(means.dim() == 2, "means", f"expected shape (k, d), got {tuple(means.shape)}")
    _check_spd(covs)
    require(means.shape[0] == covs.shape[0] and means.shape[1] == covs.shape[1], "covs",
            f"shape {tuple(covs.shape)} does not match means {tuple(means.shape)}",
            "give one (d, d) covariance per (d,) mean")
    dtype, device = covs.dtype, covs.device
    w = check_weights(weights, means.shape[0], normalize).to(device)
    m64, c64 = means.double(), covs.double()
    mean = (w[:, None] * m64).sum(0)
    s = (w[:, None, None] * c64).sum(0)  # start from the weighted arithmetic mean
    delta = math.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        root, inv_root = sqrtm_spd(s), sqrtm_spd(s, inverse=True)
        inner = (w[:, None, None] * sqrtm_spd(root @ c64 @ root)).sum(0)
        s_new = inv_root @ inner @ inner @ inv_root
        s_new = 0.5 * (s_new + s_new.T)
        delta = float((s_new - s).abs().amax())
        s = s_new
        if delta < tol:
            break
    out = mean.to(dtype=means.dtype), s.to(dtype=dtype)
    if log:
        return (*out, {"n_iter": n_iter, "delta": delta,
                       "residual": fixed_point_residual(s, c64, w)})
    return out


def fixed_point_residual(cov: torch.Tensor, covs: torch.Tensor,
                         weights: Sequence[float] | torch.Tensor) -> float:
    """max |S − Σ_k α_k (S^{1/2} Σ_k S^{1/2})^{1/2}| — zero exactly at the Gaussian barycenter."""
    s = torch.as_tensor(cov).double()
    c = torch.as_tensor(covs).double().to(s.device)
    w = torch.as_tensor(weights, dtype=torch.float64, device=s.device)
    root = sqrtm_spd(s)
    rhs = (w[:, None, None] * sqrtm_spd(root @ c @ root)).sum(0)
    return float((s - rhs).abs().amax())


def gaussian_w2_squared(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor,
                        s2: torch.Tensor) -> float:
    """W2²(N(m1, S1), N(m2, S2)) = |m1 − m2|² + tr S1 + tr S2 − 2 tr (S2^{1/2} S1 S2^{1/2})^{1/2}."""
    m1, s1, m2, s2 = (torch.as_tensor(t).double().cpu() for t in (m1, s1, m2, s2))
    r2 = sqrtm_spd(s2)
    cross = torch.linalg.eigvalsh(r2 @ s1 @ r2).clamp_min(0).sqrt().sum()
    val = (m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return max(float(val), 0.0)


def fit_gaussian(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical mean (d,) and unbiased covariance (d, d) of ``samples`` (n, d), in float64."""
    x = torch.as_tensor(samples).detach().double().flatten(1)
    require(x.shape[0] >= 2, "samples", "need at least 2 samples to fit a covariance")
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / (x.shape[0] - 1)


def bw2_uvp(fitted: torch.Tensor | tuple[torch.Tensor, torch.Tensor], true_mean: torch.Tensor,
            true_cov: torch.Tensor) -> float:
    """BW2-UVP (seed 001 eq. 11) in %: 100 · W2²(N(m̂, Σ̂), N(m, Σ)) / tr Σ.

    ``fitted`` is either samples (n, d) — a Gaussian is fitted to them (use ≥ 100k) — or a
    ``(mean, cov)`` pair.
    """
    if isinstance(fitted, (tuple, list)):
        mean, cov = fitted
    else:
        mean, cov = fit_gaussian(fitted)
    true_cov = torch.as_tensor(true_cov).double().cpu()
    require(torch.as_tensor(mean).numel() == true_cov.shape[0], "fitted",
            f"dimension {torch.as_tensor(mean).numel()} does not match the true barycenter's {true_cov.shape[0]}")
    return 100.0 * gaussian_w2_squared(mean, cov, true_mean, true_cov) / float(torch.trace(true_cov))


def linear_ot_map(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor,
                  s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OT map x ↦ A x + b from N(m1, S1) to N(m2, S2): A = S1^{-1/2}(S1^{1/2} S2 S1^{1/2})^{1/2}S1^{-1/2}."""
    r1, ir1 = sqrtm_spd(s1), sqrtm_spd(s1, inverse=True)
    a = ir1 @ sqrtm_spd(r1 @ s2 @ r1) @ ir1
    a = 0.5 * (a + a.transpose(-1, -2))
    return a, m2 - a @ m1


def gaussian_benchmark(dim: int, n_inputs: int = 3, seed: int = 0, min_eig: float = 0.5,
                       max_eig: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeds 001/004 benchmark inputs: zero means, Σ_k = R_k diag(exp(linspace(log .5, log 2))) R_kᵀ.

    Returns means (k, d) and covs (k, d, d) in float64.
    """
    g = torch.Generator().manual_seed(seed)
    covs = torch.stack([random_spd(dim, g, min_eig, max_eig) for _ in range(n_inputs)])
    return torch.zeros(n_inputs, dim, dtype=torch.float64), covs


def hard_gaussian_benchmark(dim: int, n_inputs: int = 5, seed: int = 0, min_eig: float = 0.05,
                            max_eig: float = 5.0, mean_scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ill-conditioned off-centre inputs: m_k ~ N(0, mean_scale² I), Σ_k = R_k Λ_k R_kᵀ
    with Haar R_k and each input's own eigenvalues log-uniform in [min_eig, max_eig], the two
    ends included (condition number max_eig/min_eig, 100 by default). float64."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(min_eig), math.log(max_eig)
    means, covs = [], []
    for _ in range(n_inputs):
        logs = lo + (hi - lo) * torch.rand(dim, generator=g, dtype=torch.float64)
        logs[0], logs[-1] = lo, hi
        r = random_rotation(dim, g)
        c = r @ torch.diag(logs.exp()) @ r.T
        covs.append(0.5 * (c + c.T))
        means.append(mean_scale * torch.randn(dim, generator=g, dtype=torch.float64))
    return torch.stack(means), torch.stack(covs)


def gaussian_samplers(means: torch.Tensor, covs: torch.Tensor, seed: int = 0) -> list[Sampler]:
    """One float32 sampler per N(m_k, Σ_k), each with its own seeded generator."""
    return [gaussian_sampler(m, c, torch.Generator().manual_seed(seed + k))
            for k, (m, c) in enumerate(zip(means, covs))]


def uniform_cube_sampler(dim: int, generator: torch.Generator | None = None) -> Sampler:
    """Uniform law on the cube [−√3, √3]^d: mean 0, covariance I (the base of the family)."""
    half = math.sqrt(3.0)

    def sample(m: int) -> torch.Tensor:
        return ((torch.rand(m, dim, generator=generator) * 2 - 1) * half).float()

    return sample


def location_scatter_samplers(base: Callable[[int], torch.Tensor], means: torch.Tensor,
                              covs: torch.Tensor, weights: Sequence[float] | torch.Tensor
                              ) -> tuple[list[Sampler], Sampler, torch.Tensor, torch.Tensor]:
    """Inputs P_k = law(Σ_k^{1/2} U + m_k) for a base U (mean 0, cov I) and their known barycenter.

    Returns ``(samplers, barycenter_sampler, bar_mean, bar_cov)``; the barycenter is
    law(S^{1/2} U + mean) with (mean, S) = :func:`exact_gaussian_barycenter` (module docstring).
    """
    bar_mean, bar_cov = exact_gaussian_barycenter(means, covs, weights)

    def pushed(mean: torch.Tensor, cov: torch.Tensor) -> Sampler:
        root = sqrtm_spd(cov.double()).float()
        mu = mean.float()

        def sample(m: int) -> torch.Tensor:
            return base(m) @ root.T + mu

        return sample

    samplers = [pushed(m, c) for m, c in zip(means, covs)]
    return samplers, pushed(bar_mean, bar_cov), bar_mean, bar_cov
