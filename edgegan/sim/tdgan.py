"""The ``tdgan`` pipeline (seed 003): the runtime's :class:`~edgegan.runtime.roles.TDGANServer`
drives virtual :class:`~edgegan.tdgan.edge.TDGANEdge` s on the pool over a
:class:`~edgegan.sim.link.SimLink` that follows the availability schedule; with the ``grpc``
backend the same server runs in a real cloud process and the nodes in real edge hosts
(:mod:`edgegan.sim.grpc_backend`).

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
from edgegan.runtime.cloud_base import score_generator
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.roles import TDGANServer
from edgegan.sim.availability import Availability
from edgegan.sim.context import RunContext, availability_for, partition
from edgegan.sim.grpc_backend import GrpcRun
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
    processes: list[dict[str, Any]] = field(default_factory=list)  # grpc backend: the edge hosts

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


def _busy_steps(av: Availability) -> int:
    """Ticks with somebody online: the run's generator steps."""
    busy = sum(1 for t in range(av.steps) if av.online_at(t))
    require(busy > 0, "schedule", "no node is ever online", "check the windows / churn / trace")
    return busy


def _server(ctx: RunContext, data: TensorData, steps: int) -> TDGANServer:
    """A fresh cloud (never resumes a stale checkpoint) that runs one generator step per busy tick."""
    sc = ctx.sc
    ckpt = ctx.work_dir / "cloud"
    shutil.rmtree(ckpt, ignore_errors=True)
    cfg = CloudConfig(mode="tdgan", allow_anonymous=True, checkpoint_dir=str(ckpt), checkpoint_every=steps + 1,
                      image_shape=list(data.image_shape), num_classes=data.num_classes, steps=steps,
                      feedback_timeout_s=sc.engine.feedback_timeout_s, device=str(ctx.device), tdgan=sc.training.tdgan,
                      eval_dataset=None)  # the pipeline scores G itself (:class:`Scoring`)
    return TDGANServer(cfg, ctx.metrics, ctx.device)


def _class_samples(G: torch.nn.Module, num_classes: int, seed: int, device: torch.device) -> torch.Tensor:
    """8 samples of each class (at most 64) for the sample grid."""
    y = torch.arange(num_classes, device=device).repeat_interleave(8)[:64]
    G.eval()
    with torch.no_grad():
        return G(G.sample_latent(len(y), device, generator=torch.Generator(device).manual_seed(seed)), y).cpu()


class Scoring:
    """G's feature-FID and class accuracy every ``evaluation.every`` generator steps, on the classes
    of the nodes seen so far and against the whole data set, recorded as ``eval`` rows."""

    def __init__(self, ctx: RunContext, data: TensorData, infos: dict[str, NodeInfo]) -> None:
        sc = ctx.sc
        self.ctx, self.infos, self.num_classes = ctx, infos, data.num_classes
        self.evaluator = evaluator_for(sc.data.dataset, sc.data.data_root, ctx.device) if ctx.evaluate else None
        self.evals: list[tuple[int, GeneratorScore]] = []

    def due(self, step: int) -> bool:
        return self.evaluator is not None and step % self.ctx.sc.evaluation.every == 0

    def due_at_end(self, step: int) -> bool:
        return self.evaluator is not None and (not self.evals or self.evals[-1][0] != step)

    def __call__(self, G: torch.nn.Module, seen: list[str], step: int) -> None:
        assert self.evaluator is not None
        sc = self.ctx.sc
        _, s = score_generator(G, [self.infos[k] for k in seen], self.evaluator, sc.evaluation.samples_per_class,
                               self.num_classes, seed=sc.seed + EVAL_LATENT_SEED)
        self.ctx.metrics.feature_fid.set(s.fid_target if s.fid_target is not None else s.fid_whole)
        self.evals.append((step, s))
        self.ctx.record({"kind": "eval", "pipeline": "tdgan", "method": "tdgan", "iteration": step,
                         "fid_target": s.fid_target, "fid_whole": s.fid_whole, "class_tv": s.class_tv,
                         "target_share": s.target_share, "class_acc": s.class_acc,
                         "per_class_acc": {str(c): a for c, a in s.per_class_acc.items()}})


def _tick(ctx: RunContext, av: Availability, row: dict[str, Any], step: int) -> None:
    """Record one tick row (``step``: generator steps after it) and show progress."""
    row["pipeline"] = "tdgan"
    ctx.record(row)
    ctx.progress("tdgan", row["tick"] + 1, av.steps, f"online {len(row['online'])}, step {step}")


def run_tdgan(ctx: RunContext) -> TDGANResult:
    """TDGAN (seed 003) with :class:`TDGANServer` over a :class:`SimLink`, or over real processes."""
    sc = ctx.sc
    data = load_dataset(sc.data.dataset, sc.data.data_root)
    av = availability_for(sc, "tdgan")
    parts = partition(sc, data)
    steps = _busy_steps(av)
    if sc.engine.backend == "grpc":
        return _run_grpc(ctx, data, av, dict(zip(sc.nodes.ids, parts)), steps)
    host_of, infos = _host_nodes(ctx, parts, av)
    server = _server(ctx, data, steps)
    scoring = Scoring(ctx, data, infos)

    def on_step(row: dict[str, Any]) -> None:
        _tick(ctx, av, row, server.tdgan.step)
        if row["kind"] == "step" and scoring.due(server.tdgan.step):
            scoring(server.tdgan.G, server.tdgan.seen, server.tdgan.step)

    link = SimLink(server, ctx.pool, host_of, infos, av.to_schedule(), on_step,
                   VirtualNodes(sc.training.tdgan, dict(zip(sc.nodes.ids, parts)), av.crashes))
    t0 = time.perf_counter()

    async def drive() -> str:
        await link.start()
        return await server.run(link, asyncio.Event())

    try:
        status = asyncio.run(drive())
    finally:
        server.close()
    wall = time.perf_counter() - t0
    if scoring.due_at_end(server.tdgan.step):
        scoring(server.tdgan.G, server.tdgan.seen, server.tdgan.step)
    samples = None
    if sc.outputs.sample_grids and data.num_classes <= 10:
        samples = _class_samples(server.tdgan.G, data.num_classes, sc.seed, ctx.device)
    return TDGANResult(status, av.steps, server.tdgan.step, wall, dict(server.tdgan.totals), len(server.tdgan.seen),
                       link.activations, link.exchange_s, sum(len(s) for s in av.online_sets()) / av.steps,
                       scoring.evals, samples)


def _run_grpc(ctx: RunContext, data: TensorData, av: Availability, parts: dict[str, TensorData],
              steps: int) -> TDGANResult:
    """The same run with a real cloud process and real edge hosts (:class:`GrpcRun`)."""
    sc = ctx.sc
    scoring = Scoring(ctx, data, {k: NodeInfo.of(k, d) for k, d in parts.items()})
    run = GrpcRun(ctx, data, av, parts, steps)
    t0 = time.perf_counter()
    done, activations, exchange_s = 0, 0, 0.0
    try:
        run.start()
        for row in run.rows(stall_s=sc.engine.feedback_timeout_s + sc.engine.join_wait_s + 60.0):
            if row is None:
                run.check_hosts(lambda r: ctx.record({**r, "pipeline": "tdgan"}))
                continue
            if row["kind"] == "step":
                done += 1
                activations += len(row["online"])
                exchange_s += row["exchange_s"]
            _tick(ctx, av, row, done)
            if row["kind"] == "step" and scoring.due(done):
                snap = run.snapshot(done)
                scoring(run.generator(snap, data), snap["seen"], done)
        report = run.finish()
    finally:
        run.kill_all()
    wall = time.perf_counter() - t0
    final = run.snapshot(report["step"])
    G = run.generator(final, data)
    if scoring.due_at_end(report["step"]):
        scoring(G, final["seen"], report["step"])
    samples = None
    if sc.outputs.sample_grids and data.num_classes <= 10:
        samples = _class_samples(G, data.num_classes, sc.seed, ctx.device)
    status = "finished" if report["finished"] else "schedule ended"
    return TDGANResult(status, av.steps, report["step"], wall, dict(report["totals"]), len(report["seen"]),
                       activations, exchange_s, sum(len(s) for s in av.online_sets()) / av.steps, scoring.evals,
                       samples, [h.stats() for h in run.hosts])
