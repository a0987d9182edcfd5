"""What the continuous W2 barycenter solvers (WIN, NWB) share: the result type, sampler
checks, and checkpoint/resume of a set of models with their optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgegan.checkpoint import load_checkpoint, pack_model, same_model_args, save_checkpoint
from edgegan.errors import EdgeganError, require
from edgegan.nn.base import Generator

Sampler = Callable[[int], torch.Tensor]


@dataclass
class W2BarycenterResult:
    """Output of :func:`~edgegan.barycenter.win.win_barycenter` / ``nwb_barycenter``.

    ``generator`` samples the barycenter; ``maps[k]`` moves barycenter samples to input k
    (WIN: T_k) or input k to the barycenter (NWB: ∇g_k of the ICNN g_k), in the solver's
    standardised coordinates (x − Σ α_k m_k)/c; ``potentials[k]`` are the dual potentials
    (WIN: v_k, NWB: f_k); ``weights`` the α used; ``log`` the run summary
    ``{"iterations", "converged", "residual"}`` plus ``"history"`` (per-round losses, fixed-point
    residual, moment change, timings) when the solver ran with ``log=True``.
    """

    generator: Generator
    maps: list[nn.Module]
    potentials: list[nn.Module]
    weights: list[float]
    log: dict[str, list] = field(default_factory=dict)


def check_samplers(samplers: Sequence[Sampler], probe: int = 2) -> tuple[int, tuple[int, ...], torch.device]:
    """Probe each sampler: they must return (m, ...) tensors of one shape; returns (d, shape, device)."""
    require(len(samplers) >= 1, "samplers", "need at least one input measure")
    shapes = []
    device = None
    for k, s in enumerate(samplers):
        require(callable(s), f"samplers[{k}]", "is not callable", "pass sample(m) -> tensor callables")
        x = s(probe)
        require(isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == probe,
                f"samplers[{k}]", f"sample({probe}) must return a ({probe}, ...) tensor")
        shapes.append(tuple(x.shape[1:]))
        device = device or x.device
    for k, sh in enumerate(shapes):
        if sh != shapes[0]:
            raise EdgeganError(f"samplers[{k}]", f"returns samples of shape {sh} (dimension "
                               f"{math.prod(sh)}), samplers[0] returns {shapes[0]} "
                               f"(dimension {math.prod(shapes[0])})", "all inputs must live in one space")
    return math.prod(shapes[0]), shapes[0], device


def flat(sampler: Sampler) -> Sampler:
    """The same sampler with samples flattened to (m, d) float32 vectors."""
    return lambda m: sampler(m).flatten(1).float()


class Checkpointer:
    """Atomic save/resume of named models (:func:`~edgegan.checkpoint.pack_model`) + optimizers +
    progress in ``<dir>/<name>.pt``."""

    def __init__(self, checkpoint_dir: str | Path | None, name: str) -> None:
        self.path = Path(checkpoint_dir) / f"{name}.pt" if checkpoint_dir else None

    def save(self, step: int, models: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer],
             extra: dict[str, Any]) -> None:
        if self.path is None:
            return
        save_checkpoint(self.path, {
            "step": step,
            "models": {k: pack_model(m) for k, m in models.items()},
            "optims": {k: o.state_dict() for k, o in optims.items()},
            **extra,
        })

    def load(self, models: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer],
             expect: dict[str, Any]) -> dict[str, Any] | None:
        """Restore in place; returns the checkpoint dict, or None when there is none."""
        if self.path is None or not self.path.is_file():
            return None
        ck = load_checkpoint(self.path)
        for key, want in expect.items():
            if ck.get(key) != want:
                raise EdgeganError("checkpoint_dir", f"'{self.path}' was written for {key}="
                                   f"{ck.get(key)!r}, this run has {want!r}",
                                   "use another checkpoint_dir or delete the file")
        for k, m in models.items():
            if not same_model_args(ck["models"].get(k, {}), m):
                raise EdgeganError("checkpoint_dir", f"'{self.path}' holds a different '{k}' "
                                   "architecture", "use another checkpoint_dir or delete the file")
            m.load_state_dict(ck["models"][k]["state_dict"])
        for k, o in optims.items():
            o.load_state_dict(ck["optims"][k])
        return ck

