"""The ``tdgan`` pipeline (seed 003): the runtime's :class:`~edgegan.runtime.roles.TDGANServer`
drives virtual :class:`~edgegan.tdgan.edge.TDGANEdge` s on the pool over a
:class:`~edgegan.sim.link.SimLink` that follows the availability schedule.

G is scored by :class:`edgegan.eval.Evaluator` every ``evaluation.every`` generator steps on the
classes of the nodes seen so far (feature-FID against their real images, class accuracy of
G(u, y)) and against the whole data set.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from edgegan.data import TensorData, load_dataset
from edgegan.errors import require
from edgegan.eval import EVAL_LATENT_SEED, GeneratorScore, evaluator_for
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.roles import TDGANServer
from edgegan.sim.availability import Availability
from edgegan.sim.context import RunContext, availability_for, partition
from edgegan.sim.link import SimLink, VirtualNodes
from edgegan.tdgan.messages import NodeInfo


@dataclass
class TDGANResult:
    """What the TDGAN pipeline reports (``summary.json`` ``tdgan``)."""

    status: str
    ticks: int
    generator_steps: int
    wall_seconds: float
    totals: dict[str, int]
    seen: int
    activations: int
    exchange_seconds: float
    mean_online: float
    evals: list[tuple[int, GeneratorScore]] = field(default_factory=list)
    samples: torch.Tensor | None = None

    @property
    def final(self) -> GeneratorScore | None:
        return self.evals[-1][1] if self.evals else None

    @property
    def final_fid(self) -> dict[str, float]:
        """Feature-FID against the real images of the classes seen (``{}`` when not scored)."""
        return {"tdgan": self.final.fid_target} if self.final else {}


def _host_nodes(ctx: RunContext, parts: list[TensorData], av: Availability) -> tuple[dict[str, int], dict[str, NodeInfo]]:
    """Spread the nodes over the pool's workers (round robin); (worker of each node, node infos)."""
    ids, pool = ctx.sc.nodes.ids, ctx.pool
    host_of = {k: i % pool.size for i, k in enumerate(ids)}
    infos = {}
    for h in range(pool.size):
        mine = [(k, parts[i]) for i, k in enumerate(ids) if host_of[k] == h]
        crashes = {k: s for k, s in av.crashes.items() if host_of[k] == h}
        for info in pool.call_sync(h, "add_tdgan_nodes", ctx.sc.training.tdgan, mine, crashes):
            infos[info.node_id] = info
    return host_of, infos


def _server(ctx: RunContext, data: TensorData, av: Availability) -> TDGANServer:
    """A fresh cloud (never resumes a stale checkpoint) that runs one generator step per busy tick."""
    sc = ctx.sc
    ckpt = ctx.work_dir / "cloud"
    shutil.rmtree(ckpt, ignore_errors=True)
    busy = sum(1 for t in range(av.steps) if av.online_at(t))
    require(busy > 0, "schedule", "no node is ever online", "check the windows / churn / trace")
    cfg = CloudConfig(mode="tdgan", allow_anonymous=True, checkpoint_dir=str(ckpt), checkpoint_every=busy + 1,
                      image_shape=list(data.image_shape), num_classes=data.num_classes, steps=busy,
                      feedback_timeout_s=sc.engine.feedback_timeout_s, device=str(ctx.device), tdgan=sc.training.tdgan,
                      eval_dataset=None)  # the pipeline asks for scores itself (:meth:`TDGANServer.score`)
    return TDGANServer(cfg, ctx.metrics, ctx.device)


def _class_samples(G: torch.nn.Module, num_classes: int, seed: int, device: torch.device) -> torch.Tensor:
    """8 samples of each class (at most 64) for the sample grid."""
    y = torch.arange(num_classes, device=device).repeat_interleave(8)[:64]
    G.eval()
    with torch.no_grad():
        return G(G.sample_latent(len(y), device, generator=torch.Generator(device).manual_seed(seed)), y).cpu()


def run_tdgan(ctx: RunContext) -> TDGANResult:
    """TDGAN (seed 003) with :class:`TDGANServer` over a :class:`SimLink`."""
    sc = ctx.sc
    data = load_dataset(sc.data.dataset, sc.data.data_root)
    av = availability_for(sc, "tdgan")
    parts = partition(sc, data)
    host_of, infos = _host_nodes(ctx, parts, av)
    server = _server(ctx, data, av)
    evaluator = evaluator_for(sc.data.dataset, sc.data.data_root, ctx.device) if ctx.evaluate else None
    evals: list[tuple[int, GeneratorScore]] = []

    def score() -> None:  # on the classes of the nodes seen so far, each scored step's row after it
        _, s = server.score(server.tdgan.G, [infos[k] for k in server.tdgan.seen], seed=sc.seed + EVAL_LATENT_SEED,
                            evaluator=evaluator, samples_per_class=sc.evaluation.samples_per_class)
        evals.append((server.tdgan.step, s))
        ctx.record({"kind": "eval", "pipeline": "tdgan", "method": "tdgan", "iteration": server.tdgan.step,
                    "fid_target": s.fid_target, "fid_whole": s.fid_whole, "class_tv": s.class_tv,
                    "target_share": s.target_share, "class_acc": s.class_acc,
                    "per_class_acc": {str(c): a for c, a in s.per_class_acc.items()}})

    def on_step(row: dict[str, Any]) -> None:
        row["pipeline"] = "tdgan"
        ctx.record(row)
        ctx.progress("tdgan", row["tick"] + 1, av.steps, f"online {len(row['online'])}, step {server.tdgan.step}")
        if evaluator is not None and row["kind"] == "step" and server.tdgan.step % sc.evaluation.every == 0:
            score()

    link = SimLink(server, ctx.pool, host_of, infos, av.to_schedule(), on_step,
                   VirtualNodes(sc.training.tdgan, dict(zip(sc.nodes.ids, parts)), av.crashes))
    t0 = time.perf_counter()

    async def drive() -> str:
        link.start()
        return await server.run(link, asyncio.Event())

    try:
        status = asyncio.run(drive())
    finally:
        server.close()
    wall = time.perf_counter() - t0
    if evaluator is not None and (not evals or evals[-1][0] != server.tdgan.step):
        score()
    samples = None
    if sc.outputs.sample_grids and data.num_classes <= 10:
        samples = _class_samples(server.tdgan.G, data.num_classes, sc.seed, ctx.device)
    return TDGANResult(status, av.steps, server.tdgan.step, wall, dict(server.tdgan.totals), len(server.tdgan.seen),
                       link.activations, link.exchange_s, sum(len(s) for s in av.online_sets()) / av.steps, evals,
                       samples)
