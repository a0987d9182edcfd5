"""Wasserstein Iterative Networks (WIN): fixed-point W2 barycenter with a generator (seed 004, Alg. 1).

Each outer iteration applies the fixed-point operator H(P) = [Σ_k α_k T_{P→P_k}]#P to the
generated measure P_ξ = G_ξ#S in two steps:

1. OT maps by the reversed maximin solver (seed 004 eq. 7), per input k, warm-started:
   max_v min_T  E_x∼P_ξ [½|x − T(x)|² − v(T(x))] + E_y∼P_k [v(y)]
   (K_v potential steps, each after K_T map steps);
2. regression of G onto the averaged maps: min_ξ E_z ½|G_ξ(z) − Σ_k α_k T_k(G_ξ0(z))|²
   with G_ξ0 a frozen copy (K_G steps).

Inputs are samplers, so they may be data sets, Gaussians or pre-trained generators.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from edgegan.barycenter.continuous import (Checkpointer, Sampler, W2BarycenterResult,
                                           check_samplers, flat)
from edgegan.barycenter.gaussian import check_weights
from edgegan.barycenter.nets import MapGenerator, Potential, ResidualMap
from edgegan.config import check_fields, to_dict
from edgegan.nn.base import Generator


@dataclass
class WINConfig:
    """Every knob of seed 004 Alg. 1; defaults from the paper and its reference code."""

    k_g: int = field(default=50, metadata={"unit": "generator regression steps per outer iteration"})
    k_t: int = field(default=10, metadata={"unit": "map (T_k) steps per potential step"})
    k_v: int = field(default=50, metadata={"unit": "potential (v_k) steps per input per outer iteration"})
    outer_iters: int = field(default=50, metadata={"unit": "outer iterations (applications of H)"})
    batch_size: int = field(default=1024, metadata={"unit": "samples per mini-batch"})
    lr_g: float = field(default=1e-4, metadata={"unit": "Adam learning rate of G"})
    lr_t: float = field(default=1e-3, metadata={"unit": "Adam learning rate of T_k"})
    lr_v: float = field(default=1e-3, metadata={"unit": "Adam learning rate of v_k"})
    hidden: int = field(default=0, metadata={"unit": "hidden width; 0 = max(100, 2·d)"})
    depth: int = field(default=3, metadata={"unit": "hidden layers per network"})
    checkpoint_every: int = field(default=1, metadata={"unit": "outer iterations between checkpoints"})
    seed: int = field(default=0, metadata={"unit": "seed for network init and latent draws"})

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix, ("k_g", "k_t", "k_v", "outer_iters", "batch_size", "depth", "checkpoint_every"), 1)
        check_fields(self, prefix, ("lr_g", "lr_t", "lr_v"), 0, strict_low=True)
        check_fields(self, prefix, ("hidden",), 0)


def win_barycenter(samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor,
                   generator: Generator | None = None, latent_dim: int | None = None,
                   k_g: int | None = None, k_t: int | None = None, k_v: int | None = None,
                   cfg: WINConfig | None = None, normalize: bool = False,
                   checkpoint_dir: str | Path | None = None,
                   callback: Callable[[int, W2BarycenterResult], Any] | None = None,
                   log: bool = False) -> W2BarycenterResult:
    """W2 barycenter of the measures behind ``samplers`` with weights α (seed 004, Alg. 1).

    Parameters
    ----------
    samplers : N callables ``sample(m) -> (m, ...)``; samples are flattened to d-vectors.
    weights : (N,) α ≥ 0 summing to 1 (``normalize=True`` rescales with a warning).
    generator : barycenter generator G (latent → (B, d) or (B, *shape)); default
        :class:`MapGenerator` with ``latent_dim`` (default d), the identity when it equals d.
    k_g, k_t, k_v : override ``cfg``'s step counts (paper: 50, 10, 50).
    checkpoint_dir : save ``win.pt`` every ``cfg.checkpoint_every`` outer iterations and
        resume from it when present.
    callback : ``callback(outer_iter, result)`` after each outer iteration.
    log : keep per-iteration losses/timings in ``result.log`` (always kept when resuming).

    Returns
    -------
    :class:`W2BarycenterResult` with ``maps`` = T_k (barycenter → input k), ``potentials`` = v_k.
    """
    cfg = copy.deepcopy(cfg) if cfg is not None else WINConfig()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("k_g", k_g), ("k_t", k_t), ("k_v", k_v))
                                      if v is not None})
    cfg.validate("win")
    dim, shape, device = check_samplers(samplers)
    alphas = check_weights(weights, len(samplers), normalize)
    samplers = [flat(s) for s in samplers]
    n = len(samplers)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if generator is None:
            generator = MapGenerator(latent_dim or dim, shape, cfg.hidden, cfg.depth).to(device)
        maps = [ResidualMap(dim, cfg.hidden, cfg.depth).to(device) for _ in range(n)]
        pots = [Potential(dim, cfg.hidden, cfg.depth).to(device) for _ in range(n)]
    device = next(generator.parameters()).device
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g)
    t_opts = [torch.optim.Adam(t.parameters(), lr=cfg.lr_t) for t in maps]
    v_opts = [torch.optim.Adam(v.parameters(), lr=cfg.lr_v) for v in pots]

    models = {"generator": generator, **{f"map{k}": t for k, t in enumerate(maps)},
              **{f"potential{k}": v for k, v in enumerate(pots)}}
    optims = {"generator": g_opt, **{f"map{k}": o for k, o in enumerate(t_opts)},
              **{f"potential{k}": o for k, o in enumerate(v_opts)}}
    ckpt = Checkpointer(checkpoint_dir, "win")
    history: dict[str, list] = {"outer_iter": [], "g_loss": [], "t_loss": [], "v_loss": [], "seconds": []}
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    start = 0
    state = ckpt.load(models, optims, {"weights": alphas.tolist(), "dim": dim, "algorithm": "win"})
    if state is not None:
        start, history = state["step"], state["log"]
        rng.set_state(state["rng"])
        log = True
    result = W2BarycenterResult(generator, maps, pots, alphas.tolist(), history if log else {})
    w = alphas.to(device=device, dtype=torch.float32)
    bs = cfg.batch_size

    def latent() -> torch.Tensor:
        return torch.randn(bs, generator.latent_dim, device=device, generator=rng)

    def gen(z: torch.Tensor, g: Generator = generator) -> torch.Tensor:
        return g(z).flatten(1)  # (B, d)

    for it in range(start, cfg.outer_iters):
        t0 = time.perf_counter()
        generator.eval()
        t_losses, v_losses = [], []
        for k in range(n):  # 1. OT maps P_ξ → P_k by the reversed maximin solver (eq. 7)
            t_map, v, t_opt, v_opt = maps[k], pots[k], t_opts[k], v_opts[k]
            for _ in range(cfg.k_v):
                v.requires_grad_(False)
                for _ in range(cfg.k_t):
                    with torch.no_grad():
                        x = gen(latent())
                    tx = t_map(x)
                    t_loss = 0.5 * (x - tx).pow(2).sum(1).mean() - v(tx).mean()
                    t_opt.zero_grad(set_to_none=True)
                    t_loss.backward()
                    t_opt.step()
                v.requires_grad_(True)
                with torch.no_grad():
                    tx = t_map(gen(latent()))
                y = samplers[k](bs).to(device)
                v_loss = v(tx).mean() - v(y).mean()
                v_opt.zero_grad(set_to_none=True)
                v_loss.backward()
                v_opt.step()
            t_losses.append(t_loss.item())
            v_losses.append(v_loss.item())
        # 2. regression G ← Σ_k α_k T_k(G_ξ0(·))
        generator.train()
        frozen = copy.deepcopy(generator).eval()
        for _ in range(cfg.k_g):
            z = latent()
            with torch.no_grad():
                x0 = gen(z, frozen)
                target = sum(w[k] * maps[k](x0) for k in range(n))
            g_loss = 0.5 * (gen(z) - target).pow(2).sum(1).mean()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
        generator.eval()
        history["outer_iter"].append(it + 1)
        history["g_loss"].append(g_loss.item())
        history["t_loss"].append(t_losses)
        history["v_loss"].append(v_losses)
        history["seconds"].append(time.perf_counter() - t0)
        if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.outer_iters:
            ckpt.save(it + 1, models, optims, {"log": history, "rng": rng.get_state(),
                                               "weights": alphas.tolist(), "dim": dim,
                                               "algorithm": "win", "config": to_dict(cfg)})
        if callback is not None:
            callback(it + 1, result)
    generator.eval()
    return result
