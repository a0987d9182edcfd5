"""Stage I aggregator chosen by name: ``recursive_w1 | win | nwb | weight_average``.

* ``recursive_w1`` — recursive W1 barycenter of 2-critic WGANs (seed 000, Alg. 1).
* ``win`` — fixed-point W2 barycenter (seed 004, Alg. 1) of the uploaded generators' measures.
* ``nwb`` — ICNN W2 barycenter (seed 001, Alg. 1) of the same.
* ``weight_average`` — parameters averaged with weights α (seed 000 §5 baseline).

All use relevance weights α_k ∝ λ_k = 1/η_k (seed 000 §5). W2 aggregators see each generator
as a sampler ``m ↦ G_k.sample(m)`` flattened to vectors; their output generator reshapes to
the image shape. They learn no W1 critics, so Stage II starts from ``critic_prev`` = the
α-weighted parameter average of the uploaded critics and ``critic_new`` = a copy of the most
relevant node's critic (smallest η).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from edgegan.errors import EdgeganError, require
from edgegan.gan import WGANConfig, normalize_weights
from edgegan.nn import Generator

AGGREGATORS = ("recursive_w1", "win", "nwb", "weight_average")
_ALIASES = {"recursive": "recursive_w1"}


@dataclass
class AggregateResult:
    """Barycenter generator plus the critics Stage II starts from; ``weights`` = α in input order."""

    generator: Generator
    critic_prev: nn.Module
    critic_new: nn.Module
    weights: list[float]
    aggregator: str
    log: dict[str, Any] = field(default_factory=dict)


def aggregator_name(name: str) -> str:
    """Canonical aggregator name (dashes accepted, ``recursive`` → ``recursive_w1``)."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in AGGREGATORS:
        raise EdgeganError("aggregator", f"unknown aggregator '{name}'",
                           "choose one of " + ", ".join(AGGREGATORS))
    return key


def _w2_samplers(generators: Sequence[Generator]) -> list:
    for k, g in enumerate(generators):
        require(not getattr(g, "num_classes", 0), f"generators[{k}]",
                "is conditional; W2 aggregators take unconditional generators",
                "use aggregator recursive_w1")
    frozen = [copy.deepcopy(g).eval().requires_grad_(False) for g in generators]
    return [lambda m, g=g: g.sample(m) for g in frozen]


def aggregate(aggregator: str, generators: Sequence[Generator], critics: Sequence[nn.Module],
              eta: Sequence[float], steps_per_stage: int = 200, wgan: WGANConfig | None = None,
              win: Any = None, nwb: Any = None, checkpoint_dir: str | Path | None = None,
              callback: Any = None, log: bool = False) -> AggregateResult:
    """Stage I barycenter of K uploaded (G_k, D_k, η_k) by the named aggregator.

    ``steps_per_stage`` / ``wgan`` configure ``recursive_w1``; ``win`` a
    :class:`~edgegan.barycenter.win.WINConfig`; ``nwb`` an :class:`~edgegan.barycenter.nwb.NWBConfig`.
    """
    from edgegan.barycenter.weight_average import average_models
    from edgegan.barycenter.weights import relevance_weights

    name = aggregator_name(aggregator)
    require(len(generators) == len(critics) == len(eta), "generators",
            f"{len(generators)} generators, {len(critics)} critics, {len(eta)} radii",
            "give one (G_k, D_k, η_k) per node")
    alphas = normalize_weights(relevance_weights(eta), "eta")
    if name == "recursive_w1":
        from edgegan.barycenter.recursive import recursive_barycenter

        res = recursive_barycenter(generators, critics, eta, steps_per_stage, wgan,
                                   checkpoint_dir=checkpoint_dir, callback=callback, log=log)
        return AggregateResult(res.generator, res.critic_prev, res.critic_new, alphas, name, res.log)
    critic_prev = average_models(critics, alphas)
    critic_new = copy.deepcopy(critics[max(range(len(alphas)), key=lambda k: alphas[k])])
    if name == "weight_average":
        from edgegan.barycenter.weight_average import average_generators

        return AggregateResult(average_generators(generators, alphas), critic_prev, critic_new, alphas, name)
    samplers = _w2_samplers(generators)
    if name == "win":
        from edgegan.barycenter.win import win_barycenter

        res = win_barycenter(samplers, alphas, cfg=win, checkpoint_dir=checkpoint_dir,
                             callback=callback, log=log)
    else:
        from edgegan.barycenter.nwb import nwb_barycenter

        res = nwb_barycenter(samplers, alphas, cfg=nwb, checkpoint_dir=checkpoint_dir,
                             callback=callback, log=log)
    return AggregateResult(res.generator, critic_prev, critic_new, alphas, name, res.log)
