"""Neural Wasserstein Barycenter (NWB) with input-convex networks (seed 001, Alg. 1, eq. 9–10).

    min_h  max_{f_i convex}  min_{g_i convex}
        ½ E_z |h(z)|² + Σ_i a_i ( E_{Y∼μ_i}[ f_i(∇g_i(Y)) − ⟨Y, ∇g_i(Y)⟩ ] − E_z[ f_i(h(z)) ] )

f_i, g_i are ICNNs (CELU, non-negative hidden weights: clipped for f_i, penalised for g_i as
in seed 001 §3.2); h is the barycenter generator. Loops: K_3 generator steps, each after
K_2 f-steps, each after K_1 g-steps, all on one batch (seed 001 Alg. 1). At the optimum
∇g_i maps μ_i to the barycenter and ∇f_i maps the barycenter to μ_i. By default everything
runs on standardised samples (per-input centred, uniformly rescaled — exact for W2, see
:mod:`edgegan.barycenter._w2_solver`); ``centre=False, rescale=False`` is the paper's setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from edgegan.barycenter._w2_solver import (Schedule, SolveOptions, SolverParts, W2Run, W2SolverConfig,
                                           resolve_config, sample_residual, solve)
from edgegan.barycenter.continuous import Sampler, W2BarycenterResult
from edgegan.barycenter.gaussian import sqrtm_spd
from edgegan.barycenter.nets import ICNN
from edgegan.config import check_fields
from edgegan.nn.base import Generator


@dataclass
class NWBConfig(W2SolverConfig):
    """Knobs of seed 001 Alg. 1 (defaults from its reference code, ``cfg.py``) plus the shared
    standardisation / warm start / stopping knobs of :class:`W2SolverConfig`."""

    k1: int = field(default=6, metadata={"unit": "g_i (inner min) steps per f step"})
    k2: int = field(default=4, metadata={"unit": "f_i (max) steps per generator step"})
    k3: int = field(default=2000, metadata={"unit": "generator h steps (outer iterations)"})
    batch_size: int = field(default=100, metadata={"unit": "samples per mini-batch"})
    lr_h: float = field(default=1e-3, metadata={"unit": "Adam learning rate of h"})
    lr_f: float = field(default=1e-3, metadata={"unit": "Adam learning rate of f_i"})
    lr_g: float = field(default=1e-3, metadata={"unit": "Adam learning rate of g_i"})
    lambda_cvx: float = field(default=0.1, metadata={"unit": "weight of g_i's negative-weight penalty"})
    log_every: int = field(default=50, metadata={"unit": "generator steps per round (log entry, callback, stopping check)"})
    checkpoint_every: int = field(default=500, metadata={"unit": "generator steps between checkpoints"})

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        check_fields(self, prefix, ("k1", "k2", "k3", "batch_size", "log_every", "checkpoint_every"), 1)
        check_fields(self, prefix, ("lr_h", "lr_f", "lr_g"), 0, strict_low=True)
        check_fields(self, prefix, ("lambda_cvx",), 0)


def nwb_barycenter(samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor,
                   generator: Generator | None = None, latent_dim: int | None = None,
                   cfg: NWBConfig | None = None, normalize: bool = False,
                   checkpoint_dir: str | Path | None = None,
                   callback: Callable[[int, W2BarycenterResult], Any] | None = None,
                   log: bool = False, **overrides: Any) -> W2BarycenterResult:
    """W2 barycenter by NWB (seed 001, Alg. 1) from samplers; the interface of ``win_barycenter``.

    Solved on standardised inputs and shifted back (bary(μ_1..μ_N) = Σ α_k m_k +
    bary(μ̄_1..μ̄_N); uniform scaling is exact). ``cfg`` an :class:`NWBConfig`, keyword
    ``overrides`` replace its fields (``k3=500``). A round is ``cfg.log_every`` generator
    steps: ``callback(step, result)``, the stopping rule of
    :class:`~edgegan.barycenter._w2_solver.StopRule` (the same as WIN's, on G's moments per
    round) and (with ``log=True``) a history entry follow each. Returns :class:`W2BarycenterResult` with ``maps`` = g_i (∇g_i: input
    i → barycenter, standardised coordinates), ``potentials`` = f_i, ``log`` as WIN's.
    """
    cfg = resolve_config(NWBConfig, cfg, overrides, "nwb")
    opts = SolveOptions(generator, latent_dim, normalize, checkpoint_dir, callback, log)
    return solve("nwb", samplers, weights, cfg, opts, Schedule(lambda run: _nwb_parts(run, cfg), cfg.k3, cfg.log_every))


def _nwb_parts(run: W2Run, cfg: NWBConfig) -> SolverParts:
    n, generator = len(run.samplers), run.generator
    fs = [ICNN(run.dim, cfg.hidden, cfg.depth).to(run.device) for _ in range(n)]
    gs = [ICNN(run.dim, cfg.hidden, cfg.depth).to(run.device) for _ in range(n)]
    if run.init_gaussian:  # ∇f_i ≈ A_i (barycenter → input i), ∇g_i ≈ A_i^{-1}: ½|L x|² with LᵀL = A
        for f, g, a in zip(fs, gs, run.gaussian_barycenter()[1]):
            with torch.no_grad():
                f.quad.copy_(sqrtm_spd(a).to(f.quad))
                g.quad.copy_(sqrtm_spd(a, inverse=True).to(g.quad))
    h_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr_h)
    f_opts = [torch.optim.Adam(f.parameters(), lr=cfg.lr_f) for f in fs]
    g_opts = [torch.optim.Adam(g.parameters(), lr=cfg.lr_g) for g in gs]
    models = {"generator": generator, **{f"f{i}": f for i, f in enumerate(fs)},
              **{f"g{i}": g for i, g in enumerate(gs)}}
    optims = {"generator": h_opt, **{f"f{i}": o for i, o in enumerate(f_opts)},
              **{f"g{i}": o for i, o in enumerate(g_opts)}}
    a = run.alphas.tolist()

    def generator_steps(start: int, stop: int) -> dict[str, Any]:
        generator.train()
        for _ in range(start, stop):
            z = run.latent(cfg.batch_size)
            with torch.no_grad():
                x = run.gen(z)
            objective = sum(a[i] * _potential_steps(fs[i], gs[i], f_opts[i], g_opts[i], x,
                                                    run.samplers[i](cfg.batch_size).to(run.device), cfg)
                            for i in range(n))
            for f in fs:
                f.requires_grad_(False)
            hz = run.gen(z)  # h decreases ½|h|² − Σ a_i f_i(h)
            h_loss = 0.5 * hz.pow(2).sum(1).mean() - sum(a[i] * fs[i](hz).mean() for i in range(n))
            h_opt.zero_grad(set_to_none=True)
            h_loss.backward()
            h_opt.step()
            for f in fs:
                f.requires_grad_(True)
        generator.eval()
        # fixed point of the barycenter: Σ a_i ∇f_i(x) = x on its support (∇f_i: barycenter → input i)
        x = run.gen(run.latent(cfg.batch_size)).detach()
        residual, residual_se = sample_residual(x, sum(a[i] * fs[i].grad(x, create_graph=False) for i in range(n)))
        return {"residual": residual, "residual_se": residual_se, "h_loss": h_loss.item(), "objective": objective}

    return SolverParts(gs, fs, models, optims, generator_steps)


def _potential_steps(f: ICNN, g: ICNN, f_opt: torch.optim.Optimizer, g_opt: torch.optim.Optimizer,
                     x: torch.Tensor, y: torch.Tensor, cfg: NWBConfig) -> float:
    """K_2 steps of f_i, each after K_1 steps of g_i, on one batch (seed 001 Alg. 1, eq. 10);
    returns f_i's last objective E f(∇g(Y)) − E f(h(Z))."""
    for _ in range(cfg.k2):
        f.requires_grad_(False)
        for _ in range(cfg.k1):  # g_i decreases E[f(∇g(Y)) − ⟨Y, ∇g(Y)⟩] + penalty
            grad_g = g.grad(y)
            g_loss = (f(grad_g) - (y * grad_g).sum(1)).mean() + cfg.lambda_cvx * g.negativity_penalty()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
        f.requires_grad_(True)
        grad_g = g.grad(y, create_graph=False).detach()
        f_loss = f(x).mean() - f(grad_g).mean()  # f_i increases E f(∇g(Y)) − E f(h(Z))
        f_opt.zero_grad(set_to_none=True)
        f_loss.backward()
        f_opt.step()
        f.clamp_()
    return -f_loss.item()
