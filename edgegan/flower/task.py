"""What one node of the Flower coalescence app does, and the run config it reads.

Roles come from the node config (Flower's ``partition-id``): partitions ``0..S−1`` are the
source nodes of ``source-classes`` (S lists), any higher partition is a target node holding
``target-samples`` samples of ``target-classes`` (seed 000 §5 setting, via
:func:`~edgegan.baselines.coalescence.digits_split`). Sources pre-train a WGAN-GP on their own
data and upload (G_k, D_k, η_k) (seed 000 Alg. 1 inputs); targets run Stage II fast adaptation
(seed 000 Alg. 2) from the barycenter the strategy sends back. Everything here is plain
edgegan: the Flower glue is in ``client_app.py`` / ``server_app.py``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from edgegan.adapt.fast_adapt import fast_adapt, tensor_sampler
from edgegan.baselines.coalescence import digits_split, pretrain_sources
from edgegan.barycenter.aggregate import aggregator_name
from edgegan.barycenter.win import WINConfig
from edgegan.config import from_dict
from edgegan.data import TensorData, load_dataset
from edgegan.errors import EdgeganError, require
from edgegan.gan import WGANConfig, train_wgan_gp
from edgegan.gan.losses import critic_loss, generator_loss
from edgegan.nn import Generator
from edgegan.nn.factory import arch_field, check_arch

SOURCE, TARGET = "source", "target"


def _ints(text: str, field_name: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise EdgeganError(field_name, f"expected comma-separated integers, got {text!r}") from None


@dataclass
class FlowerTaskConfig(WGANConfig):
    """``[tool.flwr.app.config]`` of pyproject.toml (kebab-case keys there, snake_case here).

    Flower run-config values are scalars, so lists are strings: ``source-classes`` is
    ``"0,1,2,3,4;5,6,7,8,9"`` (one class list per source node, ``;`` between nodes).
    """

    seed: int = field(default=0, metadata={"unit": "seed of the data split; node k pre-trains with seed + k"})
    dataset: str = field(default="digits", metadata={"unit": "data set name (edgegan.data.DATASETS)"})
    data_root: str = field(default="", metadata={"unit": "folder of torchvision files ('' : embedded digits)"})
    source_classes: str = field(default="0,1,2,3,4;5,6,7,8,9", metadata={"unit": "classes per source, ';' between"})
    target_classes: str = field(default="2,7", metadata={"unit": "classes of the target node"})
    target_samples: int = field(default=20, metadata={"unit": "local samples of the target node"})
    eta: str = field(default="1.0,1.0", metadata={"unit": "relevance radius η_k per source (λ_k = 1/η_k)"})
    arch: str = arch_field()
    generator_width: int = field(default=64, metadata={"unit": "generator hidden size / base channels"})
    critic_width: int = field(default=64, metadata={"unit": "critic hidden size / base channels"})
    pretrain_steps: int = field(default=300, metadata={"unit": "source WGAN-GP generator steps per round"})
    aggregator: str = field(default="recursive_w1", metadata={"unit": "recursive_w1 (seed 000) or win (seed 004)"})
    steps_per_stage: int = field(default=150, metadata={"unit": "recursive_w1: generator steps per stage"})
    win_solver: WINConfig = field(default_factory=WINConfig, metadata={
        "unit": "win: the solver's WINConfig; run-config keys win-<knob> (win-k-v, win-outer-iters, ...) set its fields"})
    adapt_steps: int = field(default=100, metadata={"unit": "target: Stage II generator steps"})
    ternary: bool = field(default=False, metadata={"unit": "target: ternary fast adaptation"})
    eval_samples: int = field(default=1000, metadata={"unit": "samples for the feature-FID (0: no FID)"})
    num_server_rounds: int = field(default=1, metadata={"unit": "rounds; each adds pretrain-steps at the sources"})
    round_timeout: float = field(default=3600.0, metadata={"unit": "seconds to wait for replies per round"})
    min_sources: int = field(default=0, metadata={
        "unit": "a round fails when fewer sources upload a model (0: every source of source-classes)"})
    metrics_port: int = field(default=-1, metadata={"unit": "ServerApp /metrics port (-1: off, 0: any free)"})
    metrics_addr: str = field(default="0.0.0.0", metadata={"unit": "address /metrics binds"})
    metrics_linger_s: float = field(default=0.0, metadata={"unit": "seconds /metrics stays up after the run"})
    out_dir: str = field(default="", metadata={"unit": "ServerApp writes barycenter.pt here ('' : nowhere)"})
    device: str = field(default="auto", metadata={"unit": "cpu, cuda, cuda:N or auto; node config 'device' wins"})

    def validate(self, prefix: str = "") -> None:
        p = f"{prefix}." if prefix else ""
        try:
            self.aggregator = aggregator_name(self.aggregator)
        except EdgeganError as e:
            raise EdgeganError(f"{p}aggregator", e.problem, e.fix) from None
        require(self.aggregator in ("recursive_w1", "win"), f"{p}aggregator",
                f"'{self.aggregator}' is not a Stage I barycenter", "choose recursive_w1 or win")
        require(len(self.sources()) >= 1, f"{p}source-classes", "no source nodes", "give at least one class list")
        require(len(self.etas()) == len(self.sources()), f"{p}eta",
                f"{len(self.etas())} radii for {len(self.sources())} sources", "give one η_k per source")
        require(all(e > 0 for e in self.etas()), f"{p}eta", "radii must be > 0")
        for name in ("pretrain_steps", "steps_per_stage", "num_server_rounds", "target_samples"):
            require(getattr(self, name) >= 1, p + name.replace("_", "-"), f"must be >= 1, got {getattr(self, name)}")
        require(self.adapt_steps >= 0 and self.eval_samples >= 0, f"{p}adapt-steps", "must be >= 0")
        require(0 <= self.min_sources <= len(self.sources()), f"{p}min-sources",
                f"must be in 0..{len(self.sources())} (the source count), got {self.min_sources}",
                "use 0 to require every source")
        require(self.metrics_port >= -1, f"{p}metrics-port", "use -1 (off), 0 (any free) or a TCP port")
        check_arch(self.arch, f"{p}arch")
        super().validate(prefix)

    def sources(self) -> list[list[int]]:
        return [_ints(part, "source-classes") for part in self.source_classes.split(";") if part.strip()]

    def targets(self) -> list[int]:
        return _ints(self.target_classes, "target-classes")

    def etas(self) -> list[float]:
        try:
            return [float(e) for e in self.eta.split(",") if e.strip()]
        except ValueError:
            raise EdgeganError("eta", f"expected comma-separated numbers, got {self.eta!r}") from None

    @property
    def num_nodes(self) -> int:
        """Sources plus one target: the nodes a round waits for."""
        return len(self.sources()) + 1

    @property
    def required_sources(self) -> int:
        """Source uploads a round needs (``min-sources``; 0 means all of them)."""
        return self.min_sources or len(self.sources())

    def wgan(self) -> WGANConfig:
        """The run's training settings (lr, betas, critic steps, batch, latent_dim, GP weight)."""
        return self.settings()

    def win(self) -> WINConfig:
        """The WIN aggregator's settings, seeded with the run's seed."""
        return dataclasses.replace(self.win_solver, seed=self.seed)


WIN_PREFIX = "win-"


def settings(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> FlowerTaskConfig:
    """The validated run config (``overrides`` win; both kebab-case); unknown keys are errors.

    Flower run-config values are scalars, so the nested :class:`WINConfig` is given flat:
    ``win-<field>`` (kebab-case) sets ``win_solver.<field>``.
    """
    data = {**dict(run_config), **dict(overrides or {})}
    win = {key[len(WIN_PREFIX):]: data.pop(key) for key in list(data)
           if key.startswith(WIN_PREFIX) and key != "win-solver"}
    if win:
        data["win-solver"] = {**data.get("win-solver", {}), **win}
    return from_dict(FlowerTaskConfig, data, "run_config")


def node_role(node_config: Mapping[str, Any], cfg: FlowerTaskConfig) -> tuple[str, int]:
    """(``source`` | ``target``, partition id) from Flower's ``partition-id`` node config."""
    pid = node_config.get("partition-id")
    require(isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0, "node_config.partition-id",
            f"must be an integer >= 0, got {pid!r}", "start the SuperNode with --node-config 'partition-id=K'")
    return (SOURCE if pid < len(cfg.sources()) else TARGET), pid


def node_device(node_config: Mapping[str, Any], cfg: FlowerTaskConfig) -> torch.device:
    from edgegan.device import resolve_device

    return resolve_device(str(node_config.get("device", cfg.device)))


def load_split(cfg: FlowerTaskConfig, data_root: str = "") -> tuple[TensorData, list[TensorData], TensorData]:
    """(all data, source partitions, target partition) — the same on every node for one seed."""
    data = load_dataset(cfg.dataset, data_root or cfg.data_root or None)
    sources, target = digits_split(data, cfg.sources(), cfg.targets(), cfg.target_samples, seed=cfg.seed)
    return data, sources, target


def local_losses(G: Generator, D: nn.Module, x: torch.Tensor, cfg: FlowerTaskConfig) -> dict[str, float]:
    """Critic loss (with GP) and generator loss on one fresh batch after training."""
    real = tensor_sampler(x)(cfg.batch_size)
    fake = G.sample(cfg.batch_size)
    return {"d-loss": float(critic_loss(D, real, fake).detach()),
            "g-loss": float(generator_loss(D, fake).detach())}


def pretrain(x: torch.Tensor, cfg: FlowerTaskConfig, partition: int,
             previous: tuple[Generator, nn.Module] | None = None) -> tuple[Generator, nn.Module, float]:
    """Source node k: its (G_k, D_k) after ``pretrain-steps`` WGAN-GP steps on its data ``x``.

    Round 1 is exactly ``pretrain_sources([x], ..., seed=seed + k)`` (so a Flower run and a
    direct call agree); later rounds continue from ``previous`` with fresh Adam state.
    """
    t0 = time.perf_counter()
    if previous is None:
        gens, crits = pretrain_sources([x], cfg.arch, cfg.generator_width, cfg.critic_width, cfg.latent_dim,
                                       cfg.pretrain_steps, cfg.wgan(), seed=cfg.seed + partition)
        G, D = gens[0], crits[0]
    else:
        G, D = previous
        train_wgan_gp(G, D, tensor_sampler(x), cfg.pretrain_steps, cfg.wgan())
    return G, D, time.perf_counter() - t0


def adapt_and_score(generator: Generator, critic_prev: nn.Module, critic_new: nn.Module, data: TensorData,
                    target: TensorData, cfg: FlowerTaskConfig, partition: int,
                    device: torch.device) -> tuple[Generator, dict[str, float]]:
    """Target node: Stage II from the barycenter (seed 000 Alg. 2), feature-FID before and after.

    The FID reference is every sample of the target classes in the data set (evaluation
    only; training sees the node's ``target-samples`` samples).
    """
    torch.manual_seed(cfg.seed + partition)
    res = fast_adapt(generator, critic_prev, critic_new, target.x.to(device), cfg.adapt_steps,
                     ternary=cfg.ternary, cfg=cfg.wgan())
    out = {"num-examples": float(len(target)), "adapt-seconds": res.seconds}
    if res.history:
        out["g-loss"] = float(res.history[-1]["g_loss"])
        out["w1-estimate"] = float(res.history[-1]["w1_estimate"])
    if cfg.eval_samples > 0:
        from edgegan.eval import Evaluator, get_classifier

        evaluator = Evaluator(data, get_classifier(data))
        before = evaluator.score(generator.to("cpu"), cfg.targets(), cfg.eval_samples)
        after = evaluator.score(res.generator.to("cpu"), cfg.targets(), cfg.eval_samples)
        out.update({"fid-barycenter": before.fid_target, "fid-adapted": after.fid_target,
                    "coverage-adapted": after.classes_covered, "source-only-share": 1.0 - after.target_share})
    return res.generator, out
