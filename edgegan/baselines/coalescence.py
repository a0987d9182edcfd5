"""Seed 000 §5's baselines for learning a generator at a data-poor target node, and one harness
that runs them beside barycentric fast adaptation at equal iteration budgets.

* Edge-Only: WGAN-GP from scratch on the node's local data only.
* Transferring GANs (Wang et al., 2018): start from one pre-trained (G_k, D_k), train on local data.
* Ensemble: start from pre-trained (G_k, D_k), train one critic on local data pooled with synthetic
  samples of every pre-trained generator (local samples are outnumbered, as the paper notes).
* Weight-Average: average the pre-trained weights, then fast adaptation (Alg. 2) from that model.
* Whole Data: WGAN-GP from scratch on all nodes' data gathered at node 0 (the paper's lower bound).
* Barycentric FA (full precision or ternary): Stage I barycenter, then :func:`fast_adapt`.

Every method trains through :func:`edgegan.adapt.fast_adapt.train_critics` (one
``MultiCriticWGAN``), with the same ``WGANConfig`` and number of generator iterations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from edgegan.adapt.fast_adapt import Callback, fast_adapt, tensor_sampler, train_critics
from edgegan.barycenter.recursive import BarycenterResult, check_models
from edgegan.barycenter.weight_average import average_generators, average_models
from edgegan.barycenter.weights import relevance_weights
from edgegan.data import TensorData, partition_by_classes
from edgegan.errors import EdgeganError, require
from edgegan.gan import WGANConfig
from edgegan.nn import Generator, build_from_spec, build_gan, model_spec

METHODS = ("barycentric_fa", "ternary_fa", "edge_only", "transfer", "ensemble", "weight_average",
           "whole_data")


@dataclass
class CoalescenceTask:
    """What the cloud and node 0 hold: uploaded (G_k, D_k) with radii η_k, node 0's local
    samples (N, *shape), and all nodes' data (for the Whole Data baseline only)."""

    generators: list[Generator]
    critics: list[nn.Module]
    eta: list[float]
    local_data: torch.Tensor
    whole_data: torch.Tensor
    info: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_models(self.generators, self.critics, self.eta, 1)
        relevance_weights(self.eta)
        tensor_sampler(self.local_data, "local_data")
        tensor_sampler(self.whole_data, "whole_data")

    @property
    def most_relevant(self) -> int:
        """Index of the smallest η (first on ties): the source Transferring GANs starts from."""
        return min(range(len(self.eta)), key=lambda k: self.eta[k])


@dataclass
class MethodResult:
    """A trained generator, its per-iteration stats and the wall time of its training."""

    name: str
    generator: Generator
    history: list[dict[str, float]]
    seconds: float


def _fresh(model: nn.Module) -> nn.Module:
    """A newly initialised model of the same spec, on the same device."""
    device = next(model.parameters()).device
    return build_from_spec(model_spec(model)).to(device)


def _device(task: CoalescenceTask) -> torch.device:
    return next(task.generators[0].parameters()).device


def edge_only(task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
              callback: Callback | None = None, every: int = 1) -> MethodResult:
    """WGAN-GP from a fresh initialisation on node 0's local data only."""
    G, D = _fresh(task.generators[0]), _fresh(task.critics[0])
    G, hist, sec = train_critics(G, [D], [tensor_sampler(task.local_data.to(_device(task)))], None, steps,
                              cfg, callback, every)
    return MethodResult("edge_only", G, hist, sec)


def transfer(task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
             callback: Callback | None = None, every: int = 1, source: int | None = None) -> MethodResult:
    """Transferring GANs: start from pre-trained (G_k, D_k) (the most relevant by default), train
    on local data only."""
    k = task.most_relevant if source is None else source
    require(0 <= k < len(task.generators), "source", f"no pre-trained model {k}")
    G, D = copy.deepcopy(task.generators[k]), copy.deepcopy(task.critics[k])
    G, hist, sec = train_critics(G, [D], [tensor_sampler(task.local_data.to(_device(task)))], None, steps,
                              cfg, callback, every)
    return MethodResult("transfer", G, hist, sec)


def ensemble(task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
             callback: Callback | None = None, every: int = 1, source: int | None = None,
             synthetic_per_model: int = 500) -> MethodResult:
    """Start from pre-trained (G_k, D_k); the critic's real batches come from local data pooled
    with ``synthetic_per_model`` samples of every pre-trained generator."""
    require(synthetic_per_model >= 1, "synthetic_per_model", f"must be >= 1, got {synthetic_per_model}")
    k = task.most_relevant if source is None else source
    G, D = copy.deepcopy(task.generators[k]), copy.deepcopy(task.critics[k])
    synthetic = []
    for g in task.generators:
        was = g.training
        synthetic.append(g.eval().sample(synthetic_per_model))
        g.train(was)
    pool = torch.cat([task.local_data.to(_device(task)), *synthetic])
    G, hist, sec = train_critics(G, [D], [tensor_sampler(pool)], None, steps, cfg, callback, every)
    return MethodResult("ensemble", G, hist, sec)


def weight_average(task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
                   callback: Callback | None = None, every: int = 1) -> MethodResult:
    """Average the pre-trained generators and critics, then fast adaptation (Alg. 2) from there."""
    G, D = average_generators(task.generators), average_models(task.critics)
    res = fast_adapt(G, D, D, task.local_data, steps, cfg=cfg, callback=callback, every=every)
    return MethodResult("weight_average", res.generator, res.history, res.seconds)


def whole_data(task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
               callback: Callback | None = None, every: int = 1) -> MethodResult:
    """WGAN-GP from a fresh initialisation on all nodes' data gathered at node 0."""
    G, D = _fresh(task.generators[0]), _fresh(task.critics[0])
    G, hist, sec = train_critics(G, [D], [tensor_sampler(task.whole_data.to(_device(task)), "whole_data")],
                              None, steps, cfg, callback, every)
    return MethodResult("whole_data", G, hist, sec)


def barycentric_fa(task: CoalescenceTask, steps: int, barycenter: BarycenterResult,
                   cfg: WGANConfig | None = None, callback: Callback | None = None, every: int = 1,
                   ternary: bool = False, eta0: Sequence[float] = (1.0, 1.0),
                   replay_share: float | None = None) -> MethodResult:
    """Stage II from a Stage I result (seed 000, Alg. 2), full precision or ternary; ``eta0`` and
    ``replay_share`` as in :func:`fast_adapt`."""
    res = fast_adapt(barycenter.generator, barycenter.critic_prev, barycenter.critic_new, task.local_data,
                     steps, eta0, ternary, cfg, callback, every, replay_share)
    return MethodResult("ternary_fa" if ternary else "barycentric_fa", res.generator, res.history, res.seconds)


def run_method(name: str, task: CoalescenceTask, steps: int, cfg: WGANConfig | None = None,
               barycenter: BarycenterResult | None = None, callback: Callback | None = None,
               every: int = 1, eta0: Sequence[float] = (1.0, 1.0)) -> MethodResult:
    """Run one method of :data:`METHODS` by name; ``eta0`` = (η̃, η) of barycentric FA's Stage II."""
    if name in ("barycentric_fa", "ternary_fa"):
        require(barycenter is not None, "barycenter", f"'{name}' needs the Stage I result",
                "run recursive_barycenter first and pass it")
        return barycentric_fa(task, steps, barycenter, cfg, callback, every, ternary=name == "ternary_fa",
                              eta0=eta0)
    fns: dict[str, Callable[..., MethodResult]] = {
        "edge_only": edge_only, "transfer": transfer, "ensemble": ensemble,
        "weight_average": weight_average, "whole_data": whole_data}
    if name not in fns:
        raise EdgeganError("method", f"unknown method '{name}'", "choose from " + ", ".join(METHODS))
    return fns[name](task, steps, cfg, callback, every)


def compare_methods(task: CoalescenceTask, steps: int, methods: Sequence[str] = METHODS,
                    cfg: WGANConfig | None = None, barycenter: BarycenterResult | None = None,
                    callback_for: Callable[[str], Callback | None] | None = None, every: int = 1,
                    seed: int = 0, extra_steps: dict[str, int] | None = None,
                    eta0: Sequence[float] = (1.0, 1.0)) -> dict[str, MethodResult]:
    """Run ``methods`` with the same budget of ``steps`` generator iterations each.

    ``extra_steps`` gives chosen methods a longer run (e.g. Edge-Only to 10× the budget);
    ``callback_for(name)`` returns that method's ``callback(stats, G)``. Each method starts from
    ``torch.manual_seed(seed)`` so results do not depend on which methods run before it.
    ``eta0`` = (η̃, η) of barycentric FA's Stage II (paper: equal).
    """
    task.validate()
    require(isinstance(steps, int) and steps >= 1, "steps", f"must be an integer >= 1, got {steps!r}")
    out = {}
    for name in methods:
        torch.manual_seed(seed)
        n = (extra_steps or {}).get(name, steps)
        out[name] = run_method(name, task, n, cfg, barycenter, callback_for(name) if callback_for else None,
                               every, eta0)
    return out


def pretrain_sources(datasets: Sequence[torch.Tensor], arch: str = "mlp", generator_width: int = 256,
                     critic_width: int = 256, latent_dim: int = 32, steps: int = 1000,
                     cfg: WGANConfig | None = None, seed: int = 0) -> tuple[list[Generator], list[nn.Module]]:
    """One WGAN-GP per source node on its own data: the (G_k, D_k) each node uploads (G_k is the
    trainer's weight average when ``cfg.ema_decay`` > 0).

    Widths 256 for 8×8 digits: a WGAN-GP on all digits reaches feature-FID 22 ± 2 in 1000
    iterations at 256 / 256, 27 at 256 / 128 and 57 ± 8 at 128 / 64 (3 seeds each)."""
    require(len(datasets) > 0, "datasets", "no source nodes (K = 0)", "give at least one data set")
    gens, crits = [], []
    for k, x in enumerate(datasets):
        torch.manual_seed(seed + k)
        shape = tuple(x.shape[1:])
        G = build_gan(arch, shape, latent_dim, width=generator_width)[0]
        D = build_gan(arch, shape, latent_dim, width=critic_width)[1]
        G, D = G.to(x.device), D.to(x.device)
        G = train_critics(G, [D], [tensor_sampler(x, f"datasets[{k}]")], None, steps, cfg, None, 1)[0]
        gens.append(G)
        crits.append(D)
    return gens, crits


def digits_split(data: TensorData, source_classes: Sequence[Sequence[int]], target_classes: Sequence[int],
                 target_samples: int, seed: int = 0) -> tuple[list[TensorData], TensorData]:
    """Source nodes with (overlapping) class subsets, disjoint in samples, and a target node with
    ``target_samples`` samples of ``target_classes`` not held by any source."""
    require(isinstance(target_samples, int) and target_samples >= 1, "target_samples",
            f"must be an integer >= 1, got {target_samples!r}", "the target node needs local samples")
    g = torch.Generator().manual_seed(seed)
    in_target = torch.isin(data.y, torch.tensor(list(target_classes)))
    cand = torch.nonzero(in_target).flatten()
    require(len(cand) >= target_samples, "target_samples", f"{target_samples} requested but classes "
            f"{list(target_classes)} have {len(cand)} samples")
    pick = cand[torch.randperm(len(cand), generator=g)[:target_samples]]
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[pick] = False
    target = data.subset(pick, f"{data.name}/target")
    sources = partition_by_classes(data.subset(torch.nonzero(rest).flatten()), source_classes, seed=seed,
                                   disjoint=True)
    return sources, target
