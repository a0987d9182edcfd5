"""The D_k passes of seed 003's edge step (eq. 1, Alg. 1 lines 3–8): K stacked critics updated and
asked for feedback at once, node k's numbers from node k's rows only.

:func:`logloss_pass` is the vectorised exact step (real and fake batches in one forward);
:func:`autograd_pass` takes the same step node by node where one pass cannot (wgan-gp, D_k with
buffers). With
``tdgan.lookahead``, :func:`lookahead_pass` takes the same step as a real half (:func:`real_half`,
computable once the next labels are known, before the fakes arrive) plus a fake half: the same
gradient, summed in another order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from edgegan.gan.losses import critic_loss, generator_loss
from edgegan.nn.mlp import MLPCritic
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.dk_state import Slab, shape_free

#: A critic as a function of (images, labels) → scores.
Critic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["RealHalf", "Stacked", "VmapCritic", "autograd_pass", "d_loss_logloss", "g_loss_logloss", "logloss_pass",
           "logloss_terms", "lookahead_pass", "real_half", "stacked_critic"]


def d_loss_logloss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−E log D(x, y) − E log(1 − D(x̂, y)) with D = sigmoid(logit) (seed 003 Alg. 1 line 8)."""
    s_real, s_fake = D(real, y), D(fake.detach(), y)
    return (F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real))
            + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))


def g_loss_logloss(D: nn.Module, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−E log D(x̂, y): the non-saturating form of seed 003's E log(1 − D(x̂, y))."""
    s = D(fake, y)
    return F.binary_cross_entropy_with_logits(s, torch.ones_like(s))


class Stacked(Protocol):
    """K critics of one shape at once (parameters W: name → (K, …)): :meth:`MLPCritic.stacked` and
    :meth:`MLPCritic.stacked_backward`'s interface."""

    def stacked(self, W: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def stacked_backward(self, W: dict[str, torch.Tensor], tape: Any, ds: torch.Tensor, weights: bool = True,
                         inputs: bool = False) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]: ...


class VmapCritic:
    """:class:`Stacked` for any critic module: ``vmap`` of ``functional_call`` forward, autograd backward."""

    def __init__(self, D: nn.Module) -> None:
        self.score = vmap(lambda w, a, b: functional_call(D, w, (a, b)))

    def stacked(self, W: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if not torch.is_grad_enabled():
            return self.score(W, x, y), None
        W = {n: t.detach().requires_grad_(True) for n, t in W.items()}
        x = x.detach().requires_grad_(True)
        s = self.score(W, x, y)
        return s.detach(), (s, W, x)

    def stacked_backward(self, W: dict[str, torch.Tensor], tape: Any, ds: torch.Tensor, weights: bool = True,
                         inputs: bool = False) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        s, Wg, x = tape
        grads = torch.autograd.grad(s, (list(Wg.values()) if weights else []) + ([x] if inputs else []), ds)
        return (list(grads[:len(Wg)]) if weights else None), (grads[-1] if inputs else None)


def stacked_critic(D: nn.Module) -> Stacked:
    """K critics shaped like ``D`` at once: ``D`` itself for MLP critics (one batched matmul per layer,
    a hand-written backward), :class:`VmapCritic` for any other D."""
    return D if isinstance(D, MLPCritic) else VmapCritic(D)


def logloss_terms(s: torch.Tensor, sign: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per score s the log-loss −log σ(sign · s) of seed 003 eq. 1 (sign +1: scored as real, −1: as
    fake) and its derivative −sign · σ(−sign · s), both :func:`shape_free` (exact whatever K)."""
    z = -sign * s
    return shape_free(F.softplus, z), -sign * shape_free(torch.sigmoid, z)


def logloss_pass(critic: Stacked, cfg: TDGANConfig, slab: Slab, reals: list[torch.Tensor], fake: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, list[list[float]]]:
    """Seed 003's logloss node step on K stacked D_k (``slab``) in one pass: per critic step in
    ``reals`` one :meth:`Slab.adam` update of each D_k on −log D_k(x, y) − log(1 − D_k(x̂_k, y))
    (real and fake batches in one forward), then, with the updated D_k, the replies
    ∂(−log D_k(x̂_k, y))/∂x̂_k (K, B, C, H, W) and per node [d_loss, d_real, d_fake, g_loss].
    Gradients flow back from ∂loss/∂s of every score at once (:meth:`Stacked.stacked_backward`):
    node k's only reach its own D_k and fakes, so a node's numbers do not depend on the others in K."""
    B = fake.shape[1]
    sign = torch.cat([torch.ones(B), -torch.ones(B)]).to(fake.device)
    yy = torch.cat([y, y], 1)
    for real in reals:
        W = slab.named()
        s, tape = critic.stacked(W, torch.cat([real, fake], 1), yy)
        loss, ds = logloss_terms(s, sign)
        grads, _ = critic.stacked_backward(W, tape, ds / B)
        slab.adam(grads, cfg.lr, (cfg.beta1, cfg.beta2))  # type: ignore[arg-type]
    with torch.no_grad():
        d_real = critic.stacked(slab.named(), reals[-1], y)[0].mean(1)
    return _reply(critic, slab, fake, y, loss[:, :B].mean(1) + loss[:, B:].mean(1), d_real)


def _reply(critic: Stacked, slab: Slab, fake: torch.Tensor, y: torch.Tensor, d_loss: torch.Tensor,
           d_real: torch.Tensor) -> tuple[torch.Tensor, list[list[float]]]:
    """With the updated D_k: the replies ∂(−log D_k(x̂_k, y))/∂x̂_k and per node [d_loss, d_real,
    d_fake, g_loss]."""
    W = slab.named()
    s, tape = critic.stacked(W, fake, y)
    g, ds = logloss_terms(s, 1.0)
    _, feedback = critic.stacked_backward(W, tape, ds / fake.shape[1], weights=False, inputs=True)
    return feedback, torch.stack([d_loss, d_real, s.mean(1), g.mean(1)], 1).tolist()  # type: ignore[return-value]


@dataclass
class RealHalf:
    """The real half of K D_k updates, −log D_k(x, y) over real batches x with W as it stood: per
    sample the loss and the score (K, B), per parameter its weight gradient (K, *shape)."""

    loss: torch.Tensor
    score: torch.Tensor
    grads: list[torch.Tensor]

    def row(self, k: int) -> RealHalf:
        """Row k alone (views)."""
        return RealHalf(self.loss[k:k + 1], self.score[k:k + 1], [g[k:k + 1] for g in self.grads])

    @staticmethod
    def cat(parts: Sequence[RealHalf]) -> RealHalf:
        """Rows of ``parts`` stacked in order."""
        return RealHalf(torch.cat([p.loss for p in parts]), torch.cat([p.score for p in parts]),
                        [torch.cat(g) for g in zip(*(p.grads for p in parts))])


def real_half(critic: Stacked, W: dict[str, torch.Tensor], real: torch.Tensor, y: torch.Tensor) -> RealHalf:
    """D_k's real half on real batches (K, B, …): scores s, −log σ(s) and ∂/∂W of its batch mean."""
    s, tape = critic.stacked(W, real, y)
    loss, ds = logloss_terms(s, 1.0)
    grads, _ = critic.stacked_backward(W, tape, ds / real.shape[1])
    return RealHalf(loss, s, grads)  # type: ignore[arg-type]


def lookahead_pass(critic: Stacked, cfg: TDGANConfig, slab: Slab, reals: list[torch.Tensor], fake: torch.Tensor,
                   y: torch.Tensor, first: RealHalf | None) -> tuple[torch.Tensor, list[list[float]]]:
    """:func:`logloss_pass` as ``tdgan.lookahead`` takes it: each update's gradient is the real half
    (``first``, computed ahead, for the first update; else :func:`real_half` now) plus the fake
    half −log(1 − D_k(x̂, y)); d_real is the real batch's mean score before the last update."""
    for i, real in enumerate(reals):
        W = slab.named()
        r = first if i == 0 and first is not None else real_half(critic, W, real, y)
        s, tape = critic.stacked(W, fake, y)
        loss, ds = logloss_terms(s, -1.0)
        grads, _ = critic.stacked_backward(W, tape, ds / fake.shape[1])
        slab.adam(r.grads, cfg.lr, (cfg.beta1, cfg.beta2), plus=grads)  # type: ignore[arg-type]
    return _reply(critic, slab, fake, y, r.loss.mean(1) + loss.mean(1), r.score.mean(1))


def _critic_steps(D: nn.Module, cfg: TDGANConfig, slab: Slab, b: dict[str, torch.Tensor], reals: list[torch.Tensor],
                  fake: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Row k's ``critic_steps`` autograd updates of D_k (:meth:`Slab.adam`); the last critic loss."""
    for real in reals:
        w = {n: t[k].detach().requires_grad_(True) for n, t in slab.named().items()}
        critic: Critic = lambda a, lab, w=w: functional_call(D, {**w, **b}, (a, lab))  # noqa: E731
        loss = (critic_loss(critic, real, fake, cfg.gp_weight, y) if cfg.loss == "wgan-gp"  # type: ignore[arg-type]
                else d_loss_logloss(critic, real, fake, y))  # type: ignore[arg-type]
        grads = torch.autograd.grad(loss, list(w.values()))
        slab.adam([g.unsqueeze(0) for g in grads], cfg.lr, (cfg.beta1, cfg.beta2), slice(k, k + 1))
    return loss


def autograd_pass(D: nn.Module, cfg: TDGANConfig, slab: Slab, buffers: dict[str, torch.Tensor],
                   reals: list[torch.Tensor], fake: torch.Tensor, y: torch.Tensor, seeds: list[int],
                   ) -> tuple[torch.Tensor, list[list[float]]]:
    """The same node step, node by node with autograd, where one pass cannot hold it: the wgan-gp
    loss (critic loss + gradient penalty, whose input gradient needs a second backward) and D_k with
    buffers (BatchNorm statistics updated in place). Same outputs as :func:`~edgegan.tdgan.dk_pass.logloss_pass`; node k's
    gradient-penalty draws come from ``seeds[k]`` (its own RNG), not from whoever ran before it."""
    wgan = cfg.loss == "wgan-gp"
    out, stats = [], []
    cuda = [fake.device] if fake.device.type == "cuda" else []
    for k in range(len(fake)):
        b = {n: t[k] for n, t in buffers.items()}
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seeds[k])
            for d in cuda:
                torch.cuda.default_generators[d.index or 0].manual_seed(seeds[k])
            loss = _critic_steps(D, cfg, slab, b, [real[k] for real in reals], fake[k], y[k], k)
        w = {n: t[k] for n, t in slab.named().items()}
        critic = lambda a, lab: functional_call(D, {**w, **b}, (a, lab))  # noqa: E731
        with torch.no_grad():
            d_real, d_fake = critic(reals[-1][k], y[k]).mean(), critic(fake[k], y[k]).mean()
        x = fake[k].clone().requires_grad_(True)
        g_loss = g_loss_logloss(critic, x, y[k]) if not wgan else generator_loss(critic, x, y[k])  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(g_loss, x)
        out.append(grad.detach())
        stats.append([float(loss.detach()), float(d_real), float(d_fake), float(g_loss.detach())])
    return torch.stack(out), stats
