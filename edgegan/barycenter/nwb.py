"""Neural Wasserstein Barycenter (NWB) with input-convex networks (seed 001, Alg. 1, eq. 9–10).

    min_h  max_{f_i convex}  min_{g_i convex}
        ½ E_z |h(z)|² + Σ_i a_i ( E_{Y∼μ_i}[ f_i(∇g_i(Y)) − ⟨Y, ∇g_i(Y)⟩ ] − E_z[ f_i(h(z)) ] )

f_i, g_i are ICNNs (CELU, non-negative hidden weights: clipped for f_i, penalised for g_i as
in seed 001 §3.2); h is the barycenter generator. Loops: K_3 generator steps, each after
K_2 f-steps, each after K_1 g-steps, all on one batch (seed 001 Alg. 1). At the optimum
∇g_i maps μ_i to the barycenter and ∇f_i maps the barycenter to μ_i.
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
from edgegan.barycenter.nets import ICNN, MapGenerator
from edgegan.config import check_fields, to_dict
from edgegan.nn.base import Generator


@dataclass
class NWBConfig:
    """Knobs of seed 001 Alg. 1; defaults from its reference code (``cfg.py``)."""

    k1: int = field(default=6, metadata={"unit": "g_i (inner min) steps per f step"})
    k2: int = field(default=4, metadata={"unit": "f_i (max) steps per generator step"})
    k3: int = field(default=2000, metadata={"unit": "generator h steps (outer iterations)"})
    batch_size: int = field(default=100, metadata={"unit": "samples per mini-batch"})
    lr_h: float = field(default=1e-3, metadata={"unit": "Adam learning rate of h"})
    lr_f: float = field(default=1e-3, metadata={"unit": "Adam learning rate of f_i"})
    lr_g: float = field(default=1e-3, metadata={"unit": "Adam learning rate of g_i"})
    lambda_cvx: float = field(default=0.1, metadata={"unit": "weight of g_i's negative-weight penalty"})
    hidden: int = field(default=0, metadata={"unit": "ICNN / generator width; 0 = max(100, 2·d)"})
    depth: int = field(default=3, metadata={"unit": "hidden layers per network"})
    log_every: int = field(default=50, metadata={"unit": "generator steps between log entries / callbacks"})
    checkpoint_every: int = field(default=500, metadata={"unit": "generator steps between checkpoints"})
    seed: int = field(default=0, metadata={"unit": "seed for network init and latent draws"})

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix, ("k1", "k2", "k3", "batch_size", "depth", "log_every", "checkpoint_every"), 1)
        check_fields(self, prefix, ("lr_h", "lr_f", "lr_g"), 0, strict_low=True)
        check_fields(self, prefix, ("lambda_cvx", "hidden"), 0)


def nwb_barycenter(samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor,
                   generator: Generator | None = None, latent_dim: int | None = None,
                   cfg: NWBConfig | None = None, normalize: bool = False,
                   checkpoint_dir: str | Path | None = None,
                   callback: Callable[[int, W2BarycenterResult], Any] | None = None,
                   log: bool = False, **overrides: Any) -> W2BarycenterResult:
    """W2 barycenter by NWB (seed 001, Alg. 1) from samplers; same interface as ``win_barycenter``.

    ``overrides`` replace fields of ``cfg`` (e.g. ``k3=500``). ``callback(step, result)`` runs
    every ``cfg.log_every`` generator steps. Returns :class:`W2BarycenterResult` with
    ``maps`` = g_i (∇g_i: input i → barycenter) and ``potentials`` = f_i.
    """
    cfg = dataclasses.replace(copy.deepcopy(cfg) if cfg is not None else NWBConfig(), **overrides)
    cfg.validate("nwb")
    dim, shape, device = check_samplers(samplers)
    alphas = check_weights(weights, len(samplers), normalize)
    samplers = [flat(s) for s in samplers]
    n = len(samplers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if generator is None:
            generator = MapGenerator(latent_dim or dim, shape, cfg.hidden, cfg.depth).to(device)
        fs = [ICNN(dim, cfg.hidden, cfg.depth).to(device) for _ in range(n)]
        gs = [ICNN(dim, cfg.hidden, cfg.depth).to(device) for _ in range(n)]
    device = next(generator.parameters()).device
    h_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr_h)
    f_opts = [torch.optim.Adam(f.parameters(), lr=cfg.lr_f) for f in fs]
    g_opts = [torch.optim.Adam(g.parameters(), lr=cfg.lr_g) for g in gs]
    models = {"generator": generator, **{f"f{i}": f for i, f in enumerate(fs)},
              **{f"g{i}": g for i, g in enumerate(gs)}}
    optims = {"generator": h_opt, **{f"f{i}": o for i, o in enumerate(f_opts)},
              **{f"g{i}": o for i, o in enumerate(g_opts)}}
    ckpt = Checkpointer(checkpoint_dir, "nwb")
    history: dict[str, list] = {"step": [], "h_loss": [], "objective": [], "seconds": []}
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    start = 0
    state = ckpt.load(models, optims, {"weights": alphas.tolist(), "dim": dim, "algorithm": "nwb"})
    if state is not None:
        start, history = state["step"], state["log"]
        rng.set_state(state["rng"])
        log = True
    result = W2BarycenterResult(generator, gs, fs, alphas.tolist(), history if log else {})
    a = alphas.tolist()
    bs = cfg.batch_size
    t0 = time.perf_counter()

    def gen(z: torch.Tensor) -> torch.Tensor:
        return generator(z).flatten(1)  # (B, d)

    for step in range(start, cfg.k3):
        z = torch.randn(bs, generator.latent_dim, device=device, generator=rng)
        ys = [s(bs).to(device) for s in samplers]
        with torch.no_grad():
            x = gen(z)
        objective = 0.0
        for i in range(n):
            f, g, f_opt, g_opt, y = fs[i], gs[i], f_opts[i], g_opts[i], ys[i]
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
            objective += a[i] * -f_loss.item()
        for f in fs:
            f.requires_grad_(False)
        hz = gen(z)  # h decreases ½|h|² − Σ a_i f_i(h)
        h_loss = 0.5 * hz.pow(2).sum(1).mean() - sum(a[i] * fs[i](hz).mean() for i in range(n))
        h_opt.zero_grad(set_to_none=True)
        h_loss.backward()
        h_opt.step()
        for f in fs:
            f.requires_grad_(True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.k3:
            history["step"].append(step + 1)
            history["h_loss"].append(h_loss.item())
            history["objective"].append(objective)
            history["seconds"].append(time.perf_counter() - t0)
            if callback is not None:
                callback(step + 1, result)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.k3:
            ckpt.save(step + 1, models, optims, {"log": history, "rng": rng.get_state(),
                                                 "weights": alphas.tolist(), "dim": dim,
                                                 "algorithm": "nwb", "config": to_dict(cfg)})
    generator.eval()
    return result
