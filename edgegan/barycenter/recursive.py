"""Stage I of two-stage adaptive coalescence: the recursive W1 barycenter (seed 000, Alg. 1).

Nodes are taken from least to most relevant (``coalescence_order``); ν*_1 = G_1 and, for
k = 2..K, a 2-critic WGAN starts G_k from G*_{k−1} and solves

    min_{G_k} max_{ψ̃_k, ψ_k}  Λ_{k−1} (E_{x∼ν*_{k−1}}[ψ̃_k(x)] − E_z[ψ̃_k(G_k(z))])
                             + λ_k   (E_{x∼µ_k}[ψ_k(x)]      − E_z[ψ_k(G_k(z))])

with λ_k = 1/η_k and Λ_{k−1} = Σ_{j<k} λ_j the weight accumulated by the past. ν*_{k−1} is
sampled from a frozen copy of G*_{k−1}, µ_k from node k's uploaded G_k (data never moves).
ψ̃_k starts from ψ̃*_{k−1} (Alg. 1 line 5 leaves the choice between ψ̃*_{k−1} and ψ*_{k−1};
both last saw G*_{k−1} as their fake), ψ_k from node k's critic D_k.

References: seed 000, Alg. 1 (appendix C.1), eqs. 6–7, §5.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgegan.barycenter.weights import coalescence_order, relevance_weights
from edgegan.checkpoint import MODEL_ARGS, load_checkpoint, pack_model, same_model_args, save_checkpoint
from edgegan.errors import EdgeganError, require
from edgegan.gan import MultiCriticWGAN, WGANConfig
from edgegan.nn import Generator, same_architecture

CHECKPOINT_FORMAT = "edgegan.recursive_barycenter/1"


@dataclass
class BarycenterResult:
    """Output of :func:`recursive_barycenter`.

    ``generator`` = G*_K, ``critic_prev`` = ψ̃*_K (past barycenter side), ``critic_new`` = ψ*_K
    (last node's side), ``order`` = node indices in coalescence order, ``lambdas`` = λ_k = 1/η_k
    in input order, ``log`` = per-stage summary (and per-step history with ``log=True``).
    """

    generator: Generator
    critic_prev: nn.Module
    critic_new: nn.Module
    order: list[int]
    lambdas: list[float]
    log: dict[str, Any] = field(default_factory=dict)


def generator_sampler(generator: Generator) -> Callable[[int], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """``m ↦ G(z)`` from a frozen eval-mode copy of ``generator`` (labels uniform if conditional)."""
    frozen = copy.deepcopy(generator).eval().requires_grad_(False)
    device = next(frozen.parameters()).device

    def sample(m: int):
        if frozen.num_classes:
            y = torch.randint(0, frozen.num_classes, (m,), device=device)
            return frozen.sample(m, y), y
        return frozen.sample(m)

    return sample


def _describe(model: nn.Module) -> str:
    return str(getattr(model, "model_args", ""))


def check_models(generators: Sequence[nn.Module], critics: Sequence[nn.Module], eta: Sequence[float],
                 steps_per_stage: int) -> None:
    """One-line errors for K = 0, count mismatches, mixed architectures or a bad step count."""
    require(len(generators) > 0, "generators", "no pre-trained models given (K = 0)",
            "give at least one (G_k, D_k) pair")
    require(len(critics) == len(generators), "critics",
            f"{len(critics)} critics for {len(generators)} generators", "give one critic D_k per generator")
    require(len(eta) == len(generators), "eta", f"{len(eta)} radii for {len(generators)} generators",
            "give one radius η_k per node")
    for name, models in (("generators", generators), ("critics", critics)):
        for k, m in enumerate(models):
            if name == "generators":
                require(isinstance(m, Generator), f"generators[{k}]", f"is a {type(m).__name__}, not a Generator")
            require(type(m) is type(models[0]) and same_architecture(models[0], m), f"{name}[{k}]",
                    f"architecture differs from {name}[0] ({type(m).__name__} {_describe(m)} vs "
                    f"{type(models[0]).__name__} {_describe(models[0])})",
                    "all nodes must upload models built with the same spec")
    require(isinstance(steps_per_stage, int) and steps_per_stage >= 1, "steps_per_stage",
            f"must be an integer >= 1, got {steps_per_stage!r}")


def _fingerprint(models: Sequence[nn.Module], eta: Sequence[float], steps: int, cfg: WGANConfig) -> str:
    """Hash of the inputs' weights and the settings: a checkpoint folder resumes only its own run."""
    h = hashlib.sha256(repr(([float(e) for e in eta], steps, asdict(cfg))).encode())
    for m in models:
        for key, t in m.state_dict().items():
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _stage_path(folder: Path, stage: int) -> Path:
    return folder / f"stage_{stage:03d}.pt"


def _last_checkpoint(folder: Path, num_stages: int) -> Path | None:
    found = []
    for p in folder.glob("stage_*.pt"):
        m = re.fullmatch(r"stage_(\d+)\.pt", p.name)
        if m and 2 <= int(m.group(1)) <= num_stages:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _unpack(entry: dict[str, Any], like: nn.Module, path: Path) -> nn.Module:
    """A :func:`pack_model` entry loaded into a copy of ``like`` (same architecture and device)."""
    model = copy.deepcopy(like)
    try:
        if not same_model_args(entry, like):
            raise KeyError(MODEL_ARGS)
        model.load_state_dict(entry["state_dict"])
    except (KeyError, RuntimeError, TypeError):
        raise EdgeganError("checkpoint", f"'{path}' holds a model that does not match the inputs",
                           "use an empty checkpoint_dir for a new run") from None
    return model


@dataclass
class _Progress:
    """Alg. 1's state after a finished recursion step: G*_k, ψ̃*_k, ψ*_k and Λ_k = Σ_{j≤k} λ_j."""

    generator: Generator
    critic_prev: nn.Module
    critic_new: nn.Module
    accumulated: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    next_index: int = 1
    resumed_from: int | None = None


def _resume(folder: Path, fingerprint: str, gens: Sequence[nn.Module], crits: Sequence[nn.Module],
            device: torch.device) -> _Progress | None:
    """The progress saved in ``folder``'s last finished step (RNG state restored), or None."""
    require(not folder.exists() or folder.is_dir(), "checkpoint_dir", f"'{folder}' is not a folder")
    last = _last_checkpoint(folder, len(gens)) if folder.exists() else None
    if last is None:
        return None
    ck = load_checkpoint(last, map_location=device)
    if ck.get("format") != CHECKPOINT_FORMAT or ck.get("fingerprint") != fingerprint:
        raise EdgeganError("checkpoint_dir", f"'{folder}' holds a different run (other models, "
                           "radii or settings)", "use an empty folder for a new run")
    _set_rng_state(ck["rng"], device)
    stage = int(ck["stage"])
    return _Progress(_unpack(ck["generator"], gens[0], last), _unpack(ck["critic_prev"], crits[0], last),
                     _unpack(ck["critic_new"], crits[0], last), float(ck["accumulated_lambda"]),
                     list(ck["stages"]), list(ck.get("history", [])), stage, stage)


def _coalesce(p: _Progress, generator: Generator, critic: nn.Module, lam_new: float, steps: int,
              cfg: WGANConfig, on_step: Callable[[dict[str, float]], Any]) -> dict[str, Any]:
    """One recursion step (Alg. 1 lines 5–7): the 2-critic WGAN between ν*_{k−1} (weight Λ_{k−1})
    and node k's µ_k (weight λ_k), from G_k ← G*_{k−1}, ψ̃_k ← ψ̃*_{k−1}, ψ_k ← D_k. Updates ``p`` to
    G*_k (the trainer's :attr:`~edgegan.gan.MultiCriticWGAN.generator`), ψ̃*_k, ψ*_k; returns the
    step's summary."""
    lam_prev = p.accumulated
    psi_tilde, psi = p.critic_prev, copy.deepcopy(critic)
    trainer = MultiCriticWGAN(p.generator, [psi_tilde, psi],
                              [generator_sampler(p.generator), generator_sampler(generator)], [lam_prev, lam_new], cfg)
    t0 = time.perf_counter()
    steps_run = trainer.train(steps, on_step, 1)
    p.generator, p.critic_prev, p.critic_new = trainer.generator, psi_tilde, psi
    p.accumulated += lam_new
    return {"lambda_prev": lam_prev, "lambda_new": lam_new, "w1_estimate": steps_run[-1]["w1_estimate"],
            "seconds": time.perf_counter() - t0}


def recursive_barycenter(generators: Sequence[Generator], critics: Sequence[nn.Module],
                         eta: Sequence[float], steps_per_stage: int, cfg: WGANConfig | None = None,
                         checkpoint_dir: str | Path | None = None,
                         callback: Callable[[dict[str, float]], Any] | None = None,
                         log: bool = False) -> BarycenterResult:
    """Barycenter G*_K of K pre-trained generators by recursive 2-critic WGANs (seed 000, Alg. 1).

    Parameters
    ----------
    generators, critics : the K uploaded (G_k, D_k), same architecture each; not modified.
    eta : relevance radii η_k > 0; λ_k = 1/η_k, most relevant nodes coalesced last.
    steps_per_stage : generator iterations for each of the K − 1 recursion steps.
    cfg : WGAN-GP settings (seed 000 table 1 by default); with ``ema_decay`` > 0 each step's
        G*_k is the weight average of its run.
    checkpoint_dir : after each finished step k the state is written atomically to
        ``stage_<k>.pt``; a rerun with the same inputs resumes after the last finished step
        and reproduces the uninterrupted result (RNG state is saved too).
    callback : sees each iteration's stats, with ``stage`` (k) and ``node`` (input index) added.
    log : keep every iteration's stats in ``result.log["history"]``.

    Returns
    -------
    BarycenterResult with G*_K, ψ̃*_K, ψ*_K (all new models on the inputs' device).
    """
    check_models(generators, critics, eta, steps_per_stage)
    cfg = cfg or WGANConfig()
    cfg.validate("cfg")
    lambdas, order = relevance_weights(eta), coalescence_order(eta)
    gens, crits = [generators[i] for i in order], [critics[i] for i in order]
    device = next(gens[0].parameters()).device
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = _fingerprint(list(gens) + list(crits), eta, steps_per_stage, cfg) if folder else ""
    # ν*_1 = G_1, ψ̃*_1 = D_1 (Alg. 1 line 3); with K = 1 both critics are D_1.
    p = (_resume(folder, fingerprint, gens, crits, device) if folder is not None else None) or _Progress(
        copy.deepcopy(gens[0]), copy.deepcopy(crits[0]), copy.deepcopy(crits[0]), lambdas[order[0]])
    for j in range(p.next_index, len(gens)):
        stage, node = j + 1, order[j]

        def on_step(stats: dict[str, float], stage: int = stage, node: int = node) -> None:
            stats = {**stats, "stage": stage, "node": node}
            if log:
                p.history.append(stats)
            if callback is not None:
                callback(stats)

        p.stages.append({"stage": stage, "node": node,
                         **_coalesce(p, gens[j], crits[j], lambdas[node], steps_per_stage, cfg, on_step)})
        if folder is not None:
            save_checkpoint(_stage_path(folder, stage), {
                "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "stage": stage,
                "num_stages": len(gens), "order": order, "eta": [float(e) for e in eta],
                "generator": pack_model(p.generator), "critic_prev": pack_model(p.critic_prev),
                "critic_new": pack_model(p.critic_new), "accumulated_lambda": p.accumulated,
                "stages": p.stages, "history": p.history, "rng": _rng_state(device)})
    out_log: dict[str, Any] = {"stages": p.stages, "resumed_from_stage": p.resumed_from}
    if log:
        out_log["history"] = p.history
    return BarycenterResult(p.generator, p.critic_prev, p.critic_new, order, lambdas, out_log)
