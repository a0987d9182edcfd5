"""Stage II of two-stage adaptive coalescence: fast adaptation at the target node (seed 000, Alg. 2).

Starting from the Stage I barycenter (G_0 ← G*_K, ψ̃_0 ← ψ̃*_K, ψ_0 ← ψ*_K), a 2-critic WGAN
finds the barycenter between the node's local data µ̂_0 and ν*_K (seed 000 eq. 9):

    min_{G_0} max_{ψ_0, ψ̃_0}  λ  (E_{x∼µ̂_0}[ψ_0(x)]  − E_z[ψ_0(G_0(z))])
                             + λ̃ (E_{x∼ν*_K}[ψ̃_0(x)] − E_z[ψ̃_0(G_0(z))])

ν*_K is sampled from a frozen copy of G*_K (generative replay); (λ̃, λ) = (1/η̃, 1/η) from the
node's radii ``eta0``, equal by default (Alg. 2 sums ψ_0 and ψ̃_0 with equal weight). The
ablation knob ``replay_share`` = ρ replaces the two critics by one whose real batches hold ρ·m
replay and (1−ρ)·m local samples (W1 to the mixture ρν*_K + (1−ρ)µ̂_0, Ensemble-style). With ``ternary=True`` G_0, ψ̃_0 and ψ_0 are ternary
(:mod:`edgegan.adapt.ternary`) and each iteration a) ternarizes the weights with the current
thresholds, b) runs the losses forward on the ternary weights, c) updates full-precision
weights and thresholds together by back-propagation.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgegan.adapt.ternary import to_ternary
from edgegan.barycenter.recursive import generator_sampler
from edgegan.barycenter.weights import relevance_weights
from edgegan.errors import require
from edgegan.gan import MultiCriticWGAN, WGANConfig
from edgegan.gan.train import BatchSampler
from edgegan.nn import Generator

#: ``callback(stats, generator)``: stats of the iteration (``{"step": 0}`` before training).
Callback = Callable[[dict[str, float], Generator], Any]


@dataclass
class FastAdaptResult:
    """The adapted generator G*_0 (the weight average when ``cfg.ema_decay`` > 0), its critics
    ψ̃_0 / ψ_0, per-iteration stats and wall time."""

    generator: Generator
    critic_prev: nn.Module
    critic_new: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    ternary: bool = False
    seconds: float = 0.0


def tensor_sampler(x: torch.Tensor, field_name: str = "local_data") -> BatchSampler:
    """``m ↦`` m rows of ``x`` drawn uniformly with replacement (one-line error when empty)."""
    require(isinstance(x, torch.Tensor), field_name, f"must be a tensor, got {type(x).__name__}")
    n = int(x.shape[0]) if x.dim() > 0 else 0
    require(n > 0, field_name, "has 0 samples", "the node needs at least one local sample")

    def sample(m: int) -> torch.Tensor:
        return x[torch.randint(0, n, (m,)).to(x.device)]

    return sample


def train_critics(generator: Generator, critics: Sequence[nn.Module], samplers: Sequence[BatchSampler],
                  lambdas: Sequence[float] | None, steps: int, cfg: WGANConfig | None,
                  callback: Callback | None, every: int) -> tuple[Generator, list[dict[str, float]], float]:
    """Run a :class:`MultiCriticWGAN` for ``steps`` iterations; returns (G, history, seconds).

    G is the trainer's :attr:`~MultiCriticWGAN.generator` (the weight average of ``generator`` when
    ``cfg.ema_decay`` > 0), the model ``callback(stats, G)`` sees once before training
    (``{"step": 0}``) and every ``every`` iterations. Shared by fast adaptation and the baselines
    so budgets match.
    """
    require(isinstance(steps, int) and steps >= 0, "steps", f"must be an integer >= 0, got {steps!r}")
    require(isinstance(every, int) and every >= 1, "every", f"must be an integer >= 1, got {every!r}")
    trainer = MultiCriticWGAN(generator, critics, samplers, lambdas, cfg)
    if callback is not None:
        callback({"step": 0}, trainer.generator)
    t0 = time.perf_counter()
    history = trainer.train(steps, (lambda s: callback(s, trainer.generator)) if callback else None, every)
    return trainer.generator, history, time.perf_counter() - t0


def _check_local(generator: Generator, local_data: torch.Tensor) -> torch.Tensor:
    require(isinstance(generator, Generator), "generator", f"is a {type(generator).__name__}, not a Generator")
    require(generator.num_classes == 0, "generator", "is conditional",
            "fast adaptation takes an unconditional generator (local data has no labels)")
    tensor_sampler(local_data)  # validates type and size
    was = generator.training
    probe = generator.eval().sample(2)
    generator.train(was)
    require(tuple(local_data.shape[1:]) == tuple(probe.shape[1:]), "local_data",
            f"samples have shape {tuple(local_data.shape[1:])} but the generator makes {tuple(probe.shape[1:])}",
            "use data of the shape the models were trained on")
    return local_data.to(probe.device)


def mixed_sampler(replay: BatchSampler, local: BatchSampler, replay_share: float) -> BatchSampler:
    """``m ↦`` round(ρ·m) replay samples followed by m − round(ρ·m) local ones (ρ = ``replay_share``)."""
    require(0.0 <= replay_share <= 1.0, "replay_share", f"must be in [0, 1], got {replay_share}")

    def sample(m: int) -> torch.Tensor:
        k = round(replay_share * m)
        return torch.cat([replay(k), local(m - k)]) if 0 < k < m else (replay(m) if k else local(m))

    return sample


def fast_adapt(generator: Generator, critic_prev: nn.Module, critic_new: nn.Module,
               local_data: torch.Tensor, steps: int, eta0: Sequence[float] = (1.0, 1.0),
               ternary: bool = False, cfg: WGANConfig | None = None,
               callback: Callback | None = None, every: int = 1,
               replay_share: float | None = None) -> FastAdaptResult:
    """Fast adaptation of the barycenter G*_K to a node's local data (seed 000, Alg. 2, eq. 9).

    Parameters
    ----------
    generator, critic_prev, critic_new : Stage I outputs G*_K, ψ̃*_K, ψ*_K (not modified).
    local_data : (N, *shape) samples of the target node, N >= 1, on any device.
    steps : generator iterations.
    eta0 : (η̃, η) radii of the barycenter replay and of the local data; λ = 1/η.
    ternary : train ternary G_0, ψ̃_0, ψ_0 (weights and thresholds jointly).
    callback : ``callback(stats, G_0)`` before training and every ``every`` iterations.
    replay_share : None (the paper: two critics weighted by ``eta0``) or ρ ∈ [0, 1]: one critic ψ_0
        on batches that are a share ρ replay, 1 − ρ local (``eta0`` then unused).

    Returns
    -------
    FastAdaptResult with G*_0 (ternary layers when ``ternary``), the critics and the history.
    """
    require(len(eta0) == 2, "eta0", f"needs 2 radii (barycenter, local data), got {len(eta0)}")
    require(isinstance(steps, int) and steps >= 0, "steps", f"must be an integer >= 0, got {steps!r}")
    lambdas = relevance_weights(eta0, "eta0")
    local = _check_local(generator, local_data)
    replay = generator_sampler(generator)
    G, psi_tilde, psi = (copy.deepcopy(m) for m in (generator, critic_prev, critic_new))
    if ternary:
        G, psi_tilde, psi = to_ternary(G), to_ternary(psi_tilde), to_ternary(psi)
    G.train()
    if replay_share is None:
        critics, samplers = [psi_tilde, psi], [replay, tensor_sampler(local)]
    else:
        critics, samplers, lambdas = [psi], [mixed_sampler(replay, tensor_sampler(local), replay_share)], None
    G, history, seconds = train_critics(G, critics, samplers, lambdas, steps, cfg, callback, every)
    return FastAdaptResult(G, psi_tilde, psi, history, ternary, seconds)
