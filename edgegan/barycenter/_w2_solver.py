"""Scaffolding every continuous W2 barycenter solver (WIN, NWB) shares.

One override interface (``solver(samplers, weights, cfg=..., **overrides)``), one meaning of
``log=`` (``result.log`` always holds the run summary; ``log=True`` adds the per-round
history), checkpoint/resume, the stopping rule, and the standardisation of the inputs.

Standardisation is exact for the quadratic cost (seed 004 §6.1 uses the first half: the
barycenter's mean is Σ α_n µ_n):

    W2²(μ, ν) = |m_μ − m_ν|² + W2²(μ̄, ν̄)   (μ̄ = μ centred)   ⇒
    bary(μ_1..μ_N; α) = Σ_k α_k m_k + bary(μ̄_1..μ̄_N; α),

and a uniform rescale x ↦ x/c multiplies every cost by 1/c², so it maps the barycenter of the
rescaled inputs to the rescaled barycenter. The solvers therefore run on ȳ = (y − m̂_k)/c with
per-input means m̂_k and c² = Σ α_k tr Σ̂_k / d estimated from samples, and the generator
outputs Σ α_k m̂_k + c·(its standardised sample). A general whitening is *not* exact: the
quadratic cost is invariant only under rigid motions and uniform scaling.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgegan.barycenter.continuous import (Checkpointer, Sampler, W2BarycenterResult,
                                           check_samplers, flat)
from edgegan.barycenter.gaussian import (check_weights, exact_gaussian_barycenter, fit_gaussian,
                                         gaussian_w2_squared, linear_ot_map, sqrtm_spd)
from edgegan.barycenter.nets import MapGenerator
from edgegan.config import check_fields, to_dict
from edgegan.errors import EdgeganError, require
from edgegan.nn.base import Generator

INITS = ("identity", "gaussian")


@dataclass
class W2SolverConfig:
    """Knobs every W2 solver shares (beyond the papers: standardisation, warm start, stopping).

    ``centre=False, rescale=False, init="identity", tol=0`` is the papers' setting.
    """

    centre: bool = field(default=True, metadata={"unit": "solve on per-input-centred samples, shift by Σ α_k m_k (exact)"})
    rescale: bool = field(default=True, metadata={"unit": "divide centred samples by c, c² = Σ α_k tr Σ_k / d (exact)"})
    init: str = field(default="identity", metadata={"unit": "generator start: identity (papers) | gaussian (Bures–Wasserstein barycenter of sample moments)"})
    tol: float = field(default=0.0, metadata={"unit": "stop when the generated moments move < tol (BW2-UVP %) in one round; 0 = never"})
    moment_samples: int = field(default=10_000, metadata={"unit": "samples per input for the means/scale and per moment check"})
    hidden: int = field(default=0, metadata={"unit": "hidden width of every network; 0 = max(100, 2·d)"})
    depth: int = field(default=3, metadata={"unit": "hidden layers per network"})
    seed: int = field(default=0, metadata={"unit": "seed for network init and latent draws"})

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix, ("moment_samples",), 2)
        check_fields(self, prefix, ("depth",), 1)
        check_fields(self, prefix, ("hidden",), 0)
        check_fields(self, prefix, ("tol",), 0)
        if self.init not in INITS:
            raise EdgeganError(f"{prefix}.init" if prefix else "init", f"unknown init '{self.init}'",
                               "choose one of " + ", ".join(INITS))


def resolve_config(cls: type, cfg: Any, overrides: dict[str, Any], prefix: str) -> Any:
    """``cfg`` (default ``cls()``) with ``overrides`` replacing fields, validated: the one override interface."""
    base = copy.deepcopy(cfg) if cfg is not None else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        require(key in names, f"{prefix}.{key}", "is not a setting of this solver",
                "known: " + ", ".join(sorted(names)))
    out = dataclasses.replace(base, **overrides)
    out.validate(prefix)
    return out


class Standardizer:
    """ȳ = (y − m_k)/c for input k; the generator's x ↦ (x − shift)/c, shift = Σ α_k m_k."""

    def __init__(self, means: torch.Tensor, scale: float, alphas: torch.Tensor) -> None:
        self.means, self.scale = means, float(scale)  # (N, d), c
        self.shift = (alphas.to(means)[:, None] * means).sum(0)  # (d,)

    @classmethod
    def estimate(cls, samplers: Sequence[Sampler], alphas: torch.Tensor, cfg: W2SolverConfig,
                 device: torch.device) -> tuple["Standardizer", list[torch.Tensor]]:
        """Sample means/covariances of every input (float64); returns the standardiser and the covariances."""
        fits = [fit_gaussian(s(cfg.moment_samples)) for s in samplers]
        means = torch.stack([m for m, _ in fits])
        covs = [c for _, c in fits]
        if not cfg.centre:
            means = torch.zeros_like(means)
        scale = 1.0
        if cfg.rescale:
            a = alphas.double()
            scale = float(sum(a[k] * (covs[k].trace() + (fits[k][0] - means[k]).pow(2).sum())
                              for k in range(len(covs))) / means.shape[1]) ** 0.5
        return cls(means.to(device, torch.float32), scale, alphas), covs

    def input(self, k: int, sampler: Sampler) -> Sampler:
        m, c = self.means[k], self.scale
        return lambda n: (sampler(n) - m) / c

    def to_solver(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def state(self) -> dict[str, Any]:
        return {"means": self.means.cpu(), "scale": self.scale}


@dataclass
class W2Run:
    """What a solver's inner loop uses: the standardised problem, the models and the latent stream."""

    samplers: list[Sampler]  # standardised inputs ȳ_k
    alphas: torch.Tensor  # (N,) float32 on device
    generator: Generator
    std: Standardizer
    dim: int
    device: torch.device
    rng: torch.Generator
    input_covs: list[torch.Tensor]  # standardised sample covariances (float64, CPU)
    init_gaussian: bool

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.generator.latent_dim, device=self.device, generator=self.rng)

    def gen(self, z: torch.Tensor, g: nn.Module | None = None) -> torch.Tensor:
        """Standardised generated samples (B, d) = (G(z) − shift)/c."""
        return self.std.to_solver((g or self.generator)(z).flatten(1))

    def gaussian_barycenter(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """S̄ = Bures–Wasserstein barycenter of the standardised input covariances and the linear
        OT maps A_k (N(0, S̄) → N(0, Σ̄_k)); used by ``init="gaussian"``."""
        covs = torch.stack(self.input_covs)
        zeros = torch.zeros(covs.shape[:2], dtype=covs.dtype)
        _, s = exact_gaussian_barycenter(zeros, covs, self.alphas.double().cpu())
        maps = [linear_ot_map(zeros[0], s, zeros[0], c)[0] for c in covs]
        return s, maps


@dataclass
class SolverParts:
    """A solver's networks (``maps[k]``, ``potentials[k]`` as in :class:`W2BarycenterResult`),
    everything to checkpoint by name, and ``step(start, stop) -> round statistics``."""

    maps: list[nn.Module]
    potentials: list[nn.Module]
    models: dict[str, nn.Module]
    optims: dict[str, torch.optim.Optimizer]
    step: Callable[[int, int], dict[str, Any]]


def _moments(run: W2Run, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return fit_gaussian(run.gen(z).cpu())


def solve(name: str, samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor,
          generator: Generator | None, latent_dim: int | None, cfg: Any, normalize: bool,
          checkpoint_dir: str | Path | None, callback: Callable[[int, W2BarycenterResult], Any] | None,
          log: bool, build: Callable[[W2Run], "SolverParts"], total: int, round_len: int) -> W2BarycenterResult:
    """Run a W2 solver: setup, resume, ``total`` units of ``step`` in rounds of ``round_len``.

    ``build(run)`` creates the :class:`SolverParts` (models/optimizers by name, the generator's
    included); their ``step(start, stop)`` trains units [start, stop) and returns round statistics, which must include ``residual`` (fixed-point residual,
    E|Σ α_k T_k(x) − x|² / E|x − E x|² on standardised generated samples). After each round:
    moments of G on a fixed latent probe, stopping when they moved < ``cfg.tol`` % (BW2-UVP
    units), checkpoint every ``cfg.checkpoint_every`` units, ``callback(units_done, result)``.
    """
    dim, shape, device = check_samplers(samplers)
    alphas = check_weights(weights, len(samplers), normalize)
    flat_samplers = [flat(s) for s in samplers]
    if cfg.init == "gaussian":
        require(generator is None and (latent_dim or dim) == dim, f"{name}.init",
                "'gaussian' warm-starts the built-in generator with latent_dim = d",
                "leave generator/latent_dim unset or use init='identity'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        std, covs = Standardizer.estimate(flat_samplers, alphas, cfg, device)
        if generator is None:
            generator = MapGenerator(latent_dim or dim, shape, cfg.hidden, cfg.depth).to(device)
            generator.set_output_affine(std.shift, std.scale)
        device = next(generator.parameters()).device
        std = Standardizer(std.means.to(device), std.scale, alphas)
        centred = [c / std.scale ** 2 for c in covs]
        run = W2Run([std.input(k, s) for k, s in enumerate(flat_samplers)], alphas.to(device, torch.float32),
                    generator, std, dim, device, torch.Generator(device=device).manual_seed(cfg.seed),
                    centred, cfg.init == "gaussian")
        parts = build(run)
    if run.init_gaussian:
        s, _ = run.gaussian_barycenter()
        generator.warm_start_linear(sqrtm_spd(s))
    ckpt = Checkpointer(checkpoint_dir, name)
    history: dict[str, list] = {}
    summary: dict[str, Any] = {"iterations": 0, "converged": False}
    start = 0
    expect = {"weights": alphas.tolist(), "dim": dim, "algorithm": name}
    state = ckpt.load(parts.models, parts.optims, expect)
    if state is not None:
        start, history = state["step"], state["history"]
        summary.update(state["summary"])
        run.rng.set_state(state["rng"])
        std.means, std.scale = state["standardizer"]["means"].to(device), state["standardizer"]["scale"]
        std.shift = (run.alphas[:, None] * std.means).sum(0)
    result = W2BarycenterResult(generator, parts.maps, parts.potentials, alphas.tolist(), summary)
    if log:
        summary["history"] = history
    probe = torch.randn(min(cfg.moment_samples, 4096), generator.latent_dim, device=device,
                        generator=torch.Generator(device=device).manual_seed(cfg.seed + 1))
    prev = _moments(run, probe)
    done = start
    while done < total and not summary["converged"]:
        t0 = time.perf_counter()
        stop = min(done + round_len, total)
        generator.eval()
        stats = parts.step(done, stop)
        generator.eval()
        cur = _moments(run, probe)
        change = 100.0 * gaussian_w2_squared(*cur, *prev) / max(float(cur[1].trace()), 1e-12)
        prev = cur
        stats = {"iteration": stop, "seconds": time.perf_counter() - t0, "moment_change_pct": change, **stats}
        for key, val in stats.items():
            history.setdefault(key, []).append(val)
        summary["iterations"] = stop
        summary["residual"] = stats["residual"]
        summary["converged"] = cfg.tol > 0 and change < cfg.tol
        if stop // cfg.checkpoint_every > done // cfg.checkpoint_every or stop == total or summary["converged"]:
            brief = {k: v for k, v in summary.items() if k != "history"}
            ckpt.save(stop, parts.models, parts.optims, {**expect, "history": history, "summary": brief,
                                             "rng": run.rng.get_state(), "standardizer": std.state(),
                                             "config": to_dict(cfg)})
        done = stop
        if callback is not None:
            callback(stop, result)
    generator.eval()
    return result
