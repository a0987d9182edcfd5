"""WGAN-GP losses and the weighted multi-critic objective.

Seed 000 eqs. 6–7 (the W1 barycenter as a multi-critic WGAN):

    min_G  max_{ψ_1..ψ_K}  Σ_k λ_k ( E_{x∼μ_k}[ψ_k(x)] − E_{z}[ψ_k(G(z))] )

with each ψ_k kept 1-Lipschitz by the gradient penalty of Gulrajani et al. (2017):
    GP = w · E_{x̂}[(‖∇ψ(x̂)‖₂ − 1)²],  x̂ = εx + (1−ε)G(z), ε ∼ U[0,1].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgegan.errors import require


def _score(critic: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return critic(x) if labels is None else critic(x, labels)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """w · E[(‖∇ψ(x̂)‖ − 1)²] on random interpolates x̂ of ``real`` and ``fake`` (same shape)."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    xhat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = _score(critic, xhat, labels)
    (grad,) = torch.autograd.grad(out.sum(), xhat, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                gp_weight: float = 10.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """E[ψ(G(z))] − E[ψ(x)] + GP — minimised by the critic (negated W1 estimate + penalty)."""
    fake = fake.detach()
    loss = _score(critic, fake, labels).mean() - _score(critic, real, labels).mean()
    if gp_weight > 0:
        loss = loss + gradient_penalty(critic, real, fake, gp_weight, labels)
    return loss


def generator_loss(critic: nn.Module, fake: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """−E[ψ(G(z))] — minimised by the generator."""
    return -_score(critic, fake, labels).mean()


def normalize_weights(lambdas: Sequence[float], field: str = "lambdas") -> list[float]:
    """λ_k / Σλ after checking every λ_k > 0."""
    require(len(lambdas) > 0, field, "no weights given", "give one weight per critic")
    for k, lam in enumerate(lambdas):
        require(float(lam) > 0, f"{field}[{k}]", f"must be > 0, got {lam}")
    s = float(sum(lambdas))
    return [float(lam) / s for lam in lambdas]


def weighted_critic_loss(critics: Sequence[nn.Module], reals: Sequence[torch.Tensor],
                         fake: torch.Tensor, lambdas: Sequence[float],
                         gp_weight: float = 10.0) -> torch.Tensor:
    """Σ_k λ_k · critic_loss(ψ_k, x_k, G(z)) — seed 000 eq. 7, critics' side."""
    return sum(lam * critic_loss(c, r, fake, gp_weight) for c, r, lam in zip(critics, reals, lambdas))


def weighted_generator_loss(critics: Sequence[nn.Module], fake: torch.Tensor,
                            lambdas: Sequence[float]) -> torch.Tensor:
    """−Σ_k λ_k E[ψ_k(G(z))] — seed 000 eq. 7, generator's side."""
    return sum(lam * generator_loss(c, fake) for c, lam in zip(critics, lambdas))
