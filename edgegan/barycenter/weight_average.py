"""Parameter averaging of same-architecture models: the Weight-Average baseline of seed 000 §5.

    θ̄ = Σ_k w_k θ_k   (w uniform unless given; float parameters and buffers alike)
"""

from __future__ import annotations

import copy
from typing import Sequence, TypeVar

import torch
from torch import nn

from edgegan.errors import require
from edgegan.gan import normalize_weights
from edgegan.nn import Generator, same_architecture

M = TypeVar("M", bound=nn.Module)


def average_models(models: Sequence[M], weights: Sequence[float] | None = None) -> M:
    """A new model whose float parameters/buffers are the weighted average of ``models``.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are taken from the first model.
    The inputs are left untouched; the result lives on the first model's device.
    """
    require(len(models) > 0, "models", "nothing to average (K = 0)", "give at least one model")
    for k, m in enumerate(models[1:], start=1):
        require(type(m) is type(models[0]) and same_architecture(models[0], m), f"models[{k}]",
                f"architecture differs from models[0] ({type(m).__name__} vs {type(models[0]).__name__})",
                "average only models built with the same spec")
    w = normalize_weights(weights if weights is not None else [1.0] * len(models), "weights")
    require(len(w) == len(models), "weights", f"{len(w)} weights for {len(models)} models")
    states = [m.state_dict() for m in models]
    out = copy.deepcopy(models[0])
    avg = {}
    for key, ref in states[0].items():
        if torch.is_floating_point(ref):
            avg[key] = sum(wk * s[key].to(ref.device, ref.dtype) for wk, s in zip(w, states))
        else:
            avg[key] = ref.clone()
    out.load_state_dict(avg)
    return out


def average_generators(generators: Sequence[Generator], weights: Sequence[float] | None = None) -> Generator:
    """Average of same-architecture generators' parameters and buffers (seed 000 §5 baseline)."""
    for k, g in enumerate(generators):
        require(isinstance(g, Generator), f"generators[{k}]", f"is a {type(g).__name__}, not a Generator")
    return average_models(generators, weights)
