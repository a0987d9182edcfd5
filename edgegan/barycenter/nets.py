"""Networks for continuous W2 barycenters: identity-started maps, potentials, ICNNs.

* :class:`ResidualMap` — T(x) = x + W x + MLP(x) with W and the MLP's last layer zero at start,
  so T starts as the identity (the warm start the WIN generator and maps use).
* :class:`MapGenerator` — a :class:`~edgegan.nn.Generator` G(z) = ResidualMap(z) when the
  latent and data dimensions agree (G#N(0, I) starts at N(0, I)), else a plain MLP.
* :class:`Potential` — v: R^d → R, an MLP (seed 004's reference potentials, ReLU).
* :class:`ICNN` — fully input-convex network (seed 001 eq. 4) with CELU activations plus a
  convex quadratic ½|L x|²; convex when the hidden-to-hidden weights W_l are ≥ 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgegan.nn.base import EdgeganModule, Generator


def _relu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def default_width(dim: int) -> int:
    """Hidden width of seed 004's reference code: max(100, 2·d)."""
    return max(100, 2 * dim)


class ResidualMap(EdgeganModule):
    """T(x) = x + W x + MLP(x): R^d → R^d, exactly the identity at initialisation."""

    def __init__(self, dim: int, hidden: int = 0, depth: int = 3) -> None:
        super().__init__()
        self._remember(locals())
        hidden = hidden or default_width(dim)
        self.linear = nn.Linear(dim, dim, bias=False)
        self.mlp = _relu_mlp([dim] + [hidden] * depth + [dim])
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) + self.mlp(x)  # (B, d)

    @torch.no_grad()
    def warm_start_linear(self, a: torch.Tensor) -> None:
        """Make the linear part x ↦ A x (W = A − I), e.g. a closed-form Gaussian OT map."""
        self.linear.weight.copy_(a.to(self.linear.weight) - torch.eye(a.shape[0]).to(self.linear.weight))


class MapGenerator(Generator):
    """Barycenter generator z (B, latent_dim) → x (B, *out_shape): x = shift + scale · net(z).

    ``net`` is an identity-started :class:`ResidualMap` when ``latent_dim == prod(out_shape)``;
    the output affine (buffers, default shift 0 and scale 1) lets a W2 solver train ``net`` on
    standardised samples (see :mod:`edgegan.barycenter._w2_solver`).
    """

    def __init__(self, latent_dim: int, out_shape: Sequence[int], hidden: int = 0,
                 depth: int = 3) -> None:
        super().__init__()
        self._remember(locals())
        self.latent_dim, self.num_classes = latent_dim, 0
        self.out_shape = tuple(out_shape)
        dim = math.prod(self.out_shape)
        if latent_dim == dim:
            self.net: nn.Module = ResidualMap(dim, hidden, depth)
        else:
            self.net = _relu_mlp([latent_dim] + [hidden or default_width(dim)] * depth + [dim])
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return (self.shift + self.scale * self.net(z)).view(-1, *self.out_shape)

    @torch.no_grad()
    def set_output_affine(self, shift: torch.Tensor, scale: float) -> None:
        self.shift.copy_(shift)
        self.scale.fill_(scale)

    def warm_start_linear(self, a: torch.Tensor) -> None:
        """Start ``net`` at z ↦ A z (needs the residual form, latent_dim = d)."""
        self.net.warm_start_linear(a)


class Potential(EdgeganModule):
    """v: R^d → R, an MLP with ReLU (the potential of the reversed maximin solver, seed 004 eq. 7)."""

    def __init__(self, dim: int, hidden: int = 0, depth: int = 3) -> None:
        super().__init__()
        self._remember(locals())
        self.net = _relu_mlp([dim] + [hidden or default_width(dim)] * depth + [1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,)


class ICNN(EdgeganModule):
    """Fully input-convex network (seed 001 eq. 4) plus a convex quadratic:

    z_1 = σ(A_0 x + b_0),  z_{l+1} = σ(W_l z_l + A_l x + b_l),  f(x) = w_L·z_L + a·x + ½|L x|²,

    σ = CELU (convex, non-decreasing). f is convex when every W_l and w_L is ≥ 0; call
    :meth:`clamp_` after an optimizer step for a hard constraint or add
    :meth:`negativity_penalty` to the loss for a soft one. L starts at I so ∇f ≈ identity.
    """

    def __init__(self, dim: int, hidden: int = 0, depth: int = 3) -> None:
        super().__init__()
        self._remember(locals())
        hidden = hidden or default_width(dim)
        self.a = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(depth)])
        self.w = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(depth - 1)])
        self.out = nn.Linear(hidden, 1, bias=False)
        self.lin = nn.Linear(dim, 1)
        self.quad = nn.Parameter(torch.eye(dim))
        for layer in list(self.w) + [self.out]:  # small non-negative start: f ≈ ½|x|²
            nn.init.uniform_(layer.weight, 0.0, 1e-3)
        for layer in self.a:
            layer.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.celu(self.a[0](x))  # (B, hidden)
        for a, w in zip(self.a[1:], self.w):
            z = F.celu(w(z) + a(x))
        return self.out(z).squeeze(1) + self.lin(x).squeeze(1) + 0.5 * (x @ self.quad.T).pow(2).sum(1)

    def grad(self, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """∇f(x) (B, d) by autograd; ``create_graph`` keeps it differentiable for training."""
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self(x).sum(), x, create_graph=create_graph)
        return g

    def convex_weights(self) -> list[torch.Tensor]:
        return [w.weight for w in self.w] + [self.out.weight]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project onto the convex set: W_l ← max(W_l, 0) (seed 001 Alg. 1 'Clip')."""
        for w in self.convex_weights():
            w.clamp_(min=0.0)

    def negativity_penalty(self) -> torch.Tensor:
        """Σ_l |min(W_l, 0)|² — seed 001's convexity penalty for g."""
        return sum(F.relu(-w).pow(2).sum() for w in self.convex_weights())
