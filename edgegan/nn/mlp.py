"""MLP generator and critic for vectors (2-D mixtures, Gaussians) and small images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgegan.nn.base import Generator, ProjectionCritic


def _mlp(sizes: Sequence[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLPGenerator(Generator):
    """z (B, latent_dim) [+ label embedding] → x (B, *out_shape); ``tanh`` output for images."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], hidden: int = 256,
                 depth: int = 3, num_classes: int = 0, embed_dim: int = 16,
                 tanh: bool = False) -> None:
        super().__init__()
        self._remember(locals())
        self.latent_dim, self.num_classes, self.out_shape = latent_dim, num_classes, tuple(out_shape)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        d_in = latent_dim + (embed_dim if num_classes else 0)
        self.net = _mlp([d_in] + [hidden] * depth + [math.prod(self.out_shape)])
        self.tanh = tanh

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], 1)  # (B, latent + embed)
        x = self.net(z)
        x = torch.tanh(x) if self.tanh else x
        return x.view(-1, *self.out_shape)


class MLPCritic(ProjectionCritic):
    """x (B, *in_shape) [+ label] → score (B,). Conditional by projection (Miyato 2018)."""

    def __init__(self, in_shape: Sequence[int], hidden: int = 256, depth: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self._remember(locals())
        self.num_classes = num_classes
        self.body = _mlp([math.prod(in_shape)] + [hidden] * depth, act=lambda: nn.LeakyReLU(0.2))
        self.act = nn.LeakyReLU(0.2)
        self.out = nn.Linear(hidden, 1)
        self.proj = nn.Embedding(num_classes, hidden) if num_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x.flatten(1)))  # (B, hidden)

    def stacked(self, W: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Tape]:
        """Scores (K, B) of K critics of this shape at once, and the :class:`Tape` that
        :meth:`stacked_backward` reads: critic k has the parameters ``W[name][k]`` (names as in
        ``named_parameters``) and scores x[k] (B, *in_shape) with labels y[k]. One batched matmul
        per layer (h_l = LeakyReLU(h_{l−1} W_lᵀ + b_l)), so K critics cost the per-op dispatch of
        one; row k's numbers come from row k's weights and inputs only."""
        h, layers = x.flatten(2), []
        for i, layer in enumerate(self.body):
            if isinstance(layer, nn.Linear):
                pre = torch.baddbmm(W[f"body.{i}.bias"].unsqueeze(1), h, W[f"body.{i}.weight"].transpose(1, 2))
                layers.append((i, h, pre))
                h = F.leaky_relu(pre, self.act.negative_slope)
        w = W["out.weight"]                                                    # (K, 1, hidden)
        if self.proj is not None:  # ⟨w, h⟩ + ⟨embed(y), h⟩ as one product: a (B, 1) matmul's kernel depends on K
            w = w + W["proj.weight"].gather(1, y.unsqueeze(2).expand(-1, -1, h.shape[2]))
        return (h * w).sum(2) + W["out.bias"], Tape(layers, h, w, y, x.shape)

    def stacked_backward(self, W: dict[str, torch.Tensor], tape: Tape, ds: torch.Tensor, weights: bool = True,
                         inputs: bool = False) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """The chain rule through :meth:`stacked` for ∂(Σ ds ⊙ s): per critic, the gradients of its
        parameters (in ``W``'s order) if ``weights`` and of its inputs x if ``inputs``. With
        δ_l = ∂/∂(h_{l−1} W_lᵀ + b_l): ∂W_l = δ_lᵀ h_{l−1}, ∂b_l = Σ_i δ_l, ∂h_{l−1} = δ_l W_l."""
        g: dict[str, torch.Tensor] = {}
        d = ds.unsqueeze(2)                                                    # (K, B, 1)
        if weights:
            dw = d * tape.h
            g["out.weight"], g["out.bias"] = dw.sum(1, keepdim=True), ds.sum(1, keepdim=True)
            if self.proj is not None:
                index = tape.y.unsqueeze(2).expand_as(dw)
                g["proj.weight"] = torch.zeros_like(W["proj.weight"]).scatter_add_(1, index, dw)
        dh = d * tape.w
        for n, (i, h, pre) in enumerate(reversed(tape.layers)):
            delta = torch.ops.aten.leaky_relu_backward(dh, pre, self.act.negative_slope, False)
            if weights:
                g[f"body.{i}.weight"], g[f"body.{i}.bias"] = torch.bmm(delta.transpose(1, 2), h), delta.sum(1)
            if inputs or n < len(tape.layers) - 1:
                dh = torch.bmm(delta, W[f"body.{i}.weight"])
        return ([g[name] for name in W] if weights else None), (dh.view(tape.x_shape) if inputs else None)


@dataclass
class Tape:
    """What :meth:`MLPCritic.stacked` keeps for its backward: per linear layer of the body (index,
    input, pre-activation), the last features h, the score weights w (per sample), labels, x's shape."""

    layers: list[tuple[int, torch.Tensor, torch.Tensor]]
    h: torch.Tensor
    w: torch.Tensor
    y: torch.Tensor
    x_shape: torch.Size
