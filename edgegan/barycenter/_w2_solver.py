"""Scaffolding every continuous W2 barycenter solver (WIN, NWB) shares.

One override interface (``solver(samplers, weights, cfg=..., **overrides)``), one meaning of
``log=`` (``result.log`` always holds the run summary; ``log=True`` adds the per-round
history), checkpoint/resume, the stopping rule (:class:`StopRule`), the sample fixed-point
residual, and the standardisation of the inputs.

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

    ``centre=False, rescale=False, init="identity", window=0, tol=0`` is the papers' setting
    (a fixed number of rounds).
    """

    centre: bool = field(default=True, metadata={"unit": "solve on per-input-centred samples, shift by Σ α_k m_k (exact)"})
    rescale: bool = field(default=True, metadata={"unit": "divide centred samples by c, c² = Σ α_k tr Σ_k / d (exact)"})
    init: str = field(default="identity", metadata={"unit": "generator start: identity (papers) | gaussian (Bures–Wasserstein barycenter of sample moments)"})
    window: int = field(default=4, metadata={"unit": "rounds averaged by the StopRule (0 = no noise rule, papers)"})
    stop_ratio: float = field(default=2.0, metadata={"unit": "stop when G's mean move per round < stop_ratio × the residual's standard error (both %)"})
    tol: float = field(default=0.0, metadata={"unit": "also stop when the generated moments move < tol (BW2-UVP %) in one round; 0 = off"})
    max_seconds: float = field(default=0.0, metadata={"unit": "also stop after this many seconds of rounds (s); 0 = no time budget"})
    moment_samples: int = field(default=10_000, metadata={"unit": "samples per input for the means/scale and per moment check"})
    hidden: int = field(default=0, metadata={"unit": "hidden width of every network; 0 = max(100, 2·d)"})
    depth: int = field(default=3, metadata={"unit": "hidden layers per network"})
    seed: int = field(default=0, metadata={"unit": "seed for network init and latent draws"})

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix, ("moment_samples",), 2)
        check_fields(self, prefix, ("depth",), 1)
        check_fields(self, prefix, ("hidden", "window"), 0)

        check_fields(self, prefix, ("tol", "max_seconds"), 0)
        check_fields(self, prefix, ("stop_ratio",), 0, strict_low=True)
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


def sample_residual(x: torch.Tensor, mapped: torch.Tensor) -> tuple[float, float]:
    """Fixed-point residual on a batch, E|Σ_k α_k M_k(x) − x|² / E|x − E x|² (0 at the barycenter,
    seed 004 eq. 5), and its sampling standard error at this batch size (std of the per-sample
    terms / √B); ``mapped`` = Σ_k α_k M_k(x), M_k the solver's maps barycenter → input k."""
    terms = (mapped - x).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-30)  # (B,)
    return float(terms.mean()), float(terms.std() / terms.numel() ** 0.5)


class StopRule:
    """Stop when G moves less per round than the sampling noise of the statistic that drives it.

    After round t the solver knows:

    * δ_t, how far G moved: the Gaussian moments θ_t of G on a fixed latent probe (so probe
      sampling adds no noise), δ_t = 100·W2²(N(θ_{t−1}), N(θ_t)) / tr Σ_t (BW2-UVP units, %);
    * r_t ± s_t, the fixed-point residual E|Σ_k α_k M_k(x) − x|² / E|x − E x|² that drives the
      next move, and its sampling standard error at the current batch size
      (:func:`sample_residual`), both ×100 to be in the same % units.

    The run stops ("moves below noise") when the mean move over the last W = ``window`` rounds
    is below ``stop_ratio``·s_t: further rounds change G by less than the resolution at which
    this batch size can see the fixed-point defect they correct. It also stops when a one-round
    move is < ``tol`` (absolute, %), after ``max_seconds`` of rounds, or at the budget
    (``reason`` "tol", "max_seconds", "budget"). ``window=0`` turns the noise rule off.
    """

    def __init__(self, cfg: W2SolverConfig, first: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.cfg, self.last, self.moves = cfg, first, []
        self.t0 = time.perf_counter()

    def update(self, moments: tuple[torch.Tensor, torch.Tensor], residual_se: float, done: int,
               total: int) -> dict[str, Any]:
        """Record one round; returns ``moment_change_pct`` (δ_t), ``mean_move_pct`` (None before W
        rounds), ``residual_se_pct`` and ``reason`` (None: go on)."""
        change = 100.0 * gaussian_w2_squared(*self.last, *moments) / max(float(moments[1].trace()), 1e-12)
        self.last = moments
        self.moves.append(change)
        w = self.cfg.window
        mean_move = sum(self.moves[-w:]) / w if w and len(self.moves) >= w else None
        reason = None
        if mean_move is not None and mean_move < self.cfg.stop_ratio * 100.0 * residual_se:
            reason = "moves below noise"
        elif self.cfg.tol > 0 and change < self.cfg.tol:
            reason = "tol"
        elif self.cfg.max_seconds > 0 and time.perf_counter() - self.t0 >= self.cfg.max_seconds:
            reason = "max_seconds"
        elif done >= total:
            reason = "budget"
        return {"moment_change_pct": change, "mean_move_pct": mean_move, "residual_se_pct": 100.0 * residual_se,
                "reason": reason}


@dataclass
class SolveOptions:
    """The caller's side of a solver call (same meaning for WIN and NWB, see ``win_barycenter``)."""

    generator: Generator | None = None
    latent_dim: int | None = None
    normalize: bool = False
    checkpoint_dir: str | Path | None = None
    callback: Callable[[int, W2BarycenterResult], Any] | None = None
    log: bool = False


@dataclass
class Schedule:
    """``total`` units of ``step`` in rounds of ``round_len``; a round is one log/stop/callback point."""

    build: Callable[[W2Run], "SolverParts"]
    total: int
    round_len: int


def _moments(run: W2Run, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return fit_gaussian(run.gen(z).cpu())


def _setup(name: str, samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor, cfg: Any,
           opts: SolveOptions, build: Callable[[W2Run], SolverParts]) -> tuple[W2Run, SolverParts]:
    """Check inputs, estimate the standardisation, build the default generator and the solver's parts."""
    dim, shape, device = check_samplers(samplers)
    alphas = check_weights(weights, len(samplers), opts.normalize)
    flat_samplers = [flat(s) for s in samplers]
    generator = opts.generator
    if cfg.init == "gaussian":
        require(generator is None and (opts.latent_dim or dim) == dim, f"{name}.init",
                "'gaussian' warm-starts the built-in generator with latent_dim = d",
                "leave generator/latent_dim unset or use init='identity'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        std, covs = Standardizer.estimate(flat_samplers, alphas, cfg, device)
        if generator is None:
            generator = MapGenerator(opts.latent_dim or dim, shape, cfg.hidden, cfg.depth).to(device)
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
    return run, parts


def solve(name: str, samplers: Sequence[Sampler], weights: Sequence[float] | torch.Tensor, cfg: Any,
          opts: SolveOptions, schedule: Schedule) -> W2BarycenterResult:
    """Run a W2 solver: setup, resume, ``schedule.total`` units of ``step`` in rounds, stop by :class:`StopRule`.

    ``schedule.build(run)`` creates the :class:`SolverParts`; their ``step(start, stop)`` trains
    units [start, stop) and returns round statistics including ``residual`` (:func:`sample_residual`).
    After each round: the stopping rule on G's moments, a checkpoint every
    ``cfg.checkpoint_every`` units, ``callback(units_done, result)``. ``result.log`` holds
    ``iterations``, ``converged`` (stopped by the rule, not by the budget), ``stopped_at`` (units
    done, None while running), ``stop_reason`` and ``residual``.
    """
    run, parts = _setup(name, samplers, weights, cfg, opts, schedule.build)
    ckpt = Checkpointer(opts.checkpoint_dir, name)
    history: dict[str, list] = {}
    summary: dict[str, Any] = {"iterations": 0, "converged": False, "stopped_at": None, "stop_reason": None}
    expect = {"weights": run.alphas.tolist(), "dim": run.dim, "algorithm": name}
    state = ckpt.load(parts.models, parts.optims, expect)
    done = 0
    if state is not None:
        done, history = state["step"], state["history"]
        summary.update(state["summary"], stopped_at=None, stop_reason=None, converged=False)
        run.rng.set_state(state["rng"])
        std = run.std
        std.means, std.scale = state["standardizer"]["means"].to(run.device), state["standardizer"]["scale"]
        std.shift = (run.alphas[:, None] * std.means).sum(0)
    result = W2BarycenterResult(run.generator, parts.maps, parts.potentials, run.alphas.tolist(), summary)
    if opts.log:
        summary["history"] = history
    probe = torch.randn(min(cfg.moment_samples, 4096), run.generator.latent_dim, device=run.device,
                        generator=torch.Generator(device=run.device).manual_seed(cfg.seed + 1))
    rule = StopRule(cfg, _moments(run, probe))
    if done >= schedule.total:
        summary.update(stopped_at=done, stop_reason="budget")
    while summary["stopped_at"] is None:
        t0 = time.perf_counter()
        stop = min(done + schedule.round_len, schedule.total)
        run.generator.eval()
        stats = parts.step(done, stop)
        run.generator.eval()
        verdict = rule.update(_moments(run, probe), stats.pop("residual_se"), stop, schedule.total)
        reason = verdict.pop("reason")
        stats = {"iteration": stop, "seconds": time.perf_counter() - t0, **verdict, **stats}
        for key, val in stats.items():
            history.setdefault(key, []).append(val)
        summary.update(iterations=stop, residual=stats["residual"], converged=reason in ("moves below noise", "tol"),
                       stopped_at=stop if reason else None, stop_reason=reason)
        if stop // cfg.checkpoint_every > done // cfg.checkpoint_every or reason:
            brief = {k: v for k, v in summary.items() if k != "history"}
            ckpt.save(stop, parts.models, parts.optims, {**expect, "history": history, "summary": brief,
                                                        "rng": run.rng.get_state(), "standardizer": run.std.state(),
                                                        "config": to_dict(cfg)})
        done = stop
        if opts.callback is not None:
            opts.callback(stop, result)
    run.generator.eval()
    return result
