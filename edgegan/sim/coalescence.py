"""The ``coalescence`` pipeline (seed 000): source pre-training (one job per node on the pool),
Stage I in the cloud (:func:`edgegan.barycenter.aggregate.aggregate`), Stage II at the target for
every method (:func:`edgegan.baselines.coalescence.compare_methods`, one job per method).

Image data sets are scored by :class:`edgegan.eval.Evaluator` (feature-FID against the whole set
and the target's classes, class-histogram TV, target share); the ``gaussian`` data set by BW2-UVP
against the exact Gaussian barycenter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from edgegan.barycenter.aggregate import AggregateResult, aggregate
from edgegan.barycenter.gaussian import bw2_uvp, exact_gaussian_barycenter, gaussian_benchmark, gaussian_samplers
from edgegan.baselines.coalescence import CoalescenceTask, compare_methods, digits_split, pretrain_sources
from edgegan.data import TensorData, load_dataset
from edgegan.checkpoint import pack_model, unpack_model
from edgegan.errors import require
from edgegan.eval import GeneratorScore, evaluator_for
from edgegan.eval.evaluator import EVAL_LATENT_SEED
from edgegan.nn import Generator
from edgegan.sim.availability import Availability
from edgegan.sim.context import RunContext, availability_for
from edgegan.sim.scenario import Scenario
from edgegan.sim.verdicts import class_population, population_share

log = logging.getLogger("edgegan.sim")



@dataclass
class MethodOutcome:
    """One Stage II method at the target: its score every ``evaluation.every`` iterations."""

    name: str
    curve: list[tuple[int, GeneratorScore]]
    seconds: float
    worker: int
    samples: torch.Tensor | None = None
    generator: dict[str, Any] | None = None

    @property
    def final(self) -> GeneratorScore:
        return self.curve[-1][1]


@dataclass
class Stage1Outcome:
    """The cloud's barycenter: image score or BW2-UVP (%) against the exact Gaussian barycenter."""

    aggregator: str
    seconds: float
    weights: list[float]
    score: GeneratorScore | None = None
    bw2_uvp: float | None = None


@dataclass
class CoalescenceResult:
    """What the coalescence pipeline reports (``summary.json`` ``coalescence``)."""

    uploaded: list[str]
    left: list[str]
    stage1: Stage1Outcome
    sources: dict[str, float]
    source_metric: str
    target_classes: list[int]
    target_samples: int
    methods: dict[str, MethodOutcome] = field(default_factory=dict)
    population: list[float] | None = None

    @property
    def target_population_share(self) -> float | None:
        """The ideal target share: the population share of the target's classes."""
        return None if self.population is None else population_share(self.population, self.target_classes)

    @property
    def final_fid(self) -> dict[str, float]:
        """Feature-FID against the whole data set per Stage II method."""
        return {m: r.final.fid_whole for m, r in self.methods.items()}


@dataclass
class _Sources:
    """Source data and, per data kind, what scoring needs: the Gaussian problem or the target."""

    xs: list[torch.Tensor]
    means: torch.Tensor | None = None
    covs: torch.Tensor | None = None
    target: TensorData | None = None


@dataclass
class _Uploads:
    order: list[int]
    generators: list[Generator]
    critics: list[torch.nn.Module]
    left: list[str]


def _score(G: Generator, sc: Scenario, device: torch.device | str) -> GeneratorScore:
    ev = evaluator_for(sc.data.dataset, sc.data.data_root, device)
    return ev.score(G, sc.target.classes, sc.evaluation.samples, seed=sc.seed + EVAL_LATENT_SEED)


# ---------------------------------------------------------------------- jobs (run on a pool worker)
def pretrain_job(host, index: int, node_id: str, x: torch.Tensor, steps: int, uploads: bool,
                 sc: Scenario) -> dict[str, Any]:
    """Seed 000 §3 on source node ``index``: WGAN-GP on its own data; ``uploads`` False = the node
    leaves after ``steps`` iterations and nothing arrives."""
    t = sc.training
    t0 = time.perf_counter()
    gens, crits = pretrain_sources([x.to(host.device)], t.arch, t.generator_width, t.critic_width, t.latent_dim,
                                   steps, t.settings(), seed=sc.seed + index)
    out = {"index": index, "node": node_id, "steps": steps, "uploaded": uploads,
           "seconds": time.perf_counter() - t0, "worker": host.index}
    if uploads:
        out.update(generator=pack_model(gens[0]), critic=pack_model(crits[0]))
    return out


def adapt_job(host, name: str, task: CoalescenceTask, bary: AggregateResult, sc: Scenario) -> MethodOutcome:
    """Stage II method ``name`` at the target (seed 000 §5) via :func:`compare_methods`, scored
    every ``evaluation.every`` iterations."""
    dev = host.device
    task.generators = [g.to(dev) for g in task.generators]
    task.critics = [c.to(dev) for c in task.critics]
    task.local_data, task.whole_data = task.local_data.to(dev), task.whole_data.to(dev)
    for m in (bary.generator, bary.critic_prev, bary.critic_new):
        m.to(dev)
    curve: list[tuple[int, GeneratorScore]] = []
    steps = sc.training.adapt_steps

    def callback(stats: dict[str, float], G: Generator) -> None:
        curve.append((int(stats["step"]), _score(G, sc, dev)))

    res = compare_methods(task, steps, [name], sc.training.settings(), bary, lambda _n: callback,
                          sc.evaluation.every, sc.seed, eta0=sc.target.eta0)[name]
    if not curve or curve[-1][0] != steps:
        callback({"step": steps}, res.generator)
    G = res.generator.eval()
    with torch.no_grad():
        samples = G.sample(64, generator=torch.Generator(dev).manual_seed(sc.seed)).cpu()
    return MethodOutcome(name, curve, res.seconds, host.index, samples, pack_model(G) if sc.outputs.models else None)


# ---------------------------------------------------------------------- the pipeline's steps
def _record_schedule(ctx: RunContext, av: Availability) -> None:
    for t, online in enumerate(av.online_sets()):
        ctx.record({"kind": "online", "pipeline": "coalescence", "tick": t, "online": online})


def _source_data(ctx: RunContext) -> _Sources:
    """Each source's samples: seeded Gaussians, or the image data set split by class lists with
    ``target.samples`` samples of the target's classes held back for the target."""
    sc = ctx.sc
    if sc.data.dataset == "gaussian":
        means, covs = gaussian_benchmark(sc.data.dim, sc.nodes.count, seed=sc.seed)
        xs = [s(sc.data.gaussian_samples) for s in gaussian_samplers(means, covs, seed=sc.seed)]
        return _Sources(xs, means=means, covs=covs)
    data = load_dataset(sc.data.dataset, sc.data.data_root)
    classes = [sc.data.classes[i % len(sc.data.classes)] for i in range(sc.nodes.count)]
    sources, target = digits_split(data, classes, sc.target.classes, sc.target.samples, sc.seed)
    evaluator_for(sc.data.dataset, sc.data.data_root, ctx.device)  # the classifier is ready before workers ask
    return _Sources([s.x for s in sources], target=target)


def _pretrain(ctx: RunContext, av: Availability, xs: list[torch.Tensor]) -> _Uploads:
    """Pre-train every source online at step 0 for as long as it stays; those online throughout upload."""
    sc, ids, steps = ctx.sc, ctx.sc.nodes.ids, ctx.sc.training.pretrain_steps
    jobs = []
    for k, node in enumerate(ids):
        n = min(steps, av.online_from_start(node))
        if n == 0:
            ctx.record({"kind": "pretrain", "node": node, "status": "absent", "steps": 0})
            continue
        jobs.append(((k, node, xs[k], n, av.online_throughout(node, 0, steps), sc), {}))
    require(bool(jobs), "schedule", "no source node is online at step 0", "bring at least one node online")
    uploads: dict[int, dict[str, Any]] = {}
    for i, res in enumerate(ctx.pool.map_unordered(pretrain_job, jobs)):
        status = "uploaded" if res["uploaded"] else "left"
        ctx.record({"kind": "pretrain", "node": res["node"], "status": status, "steps": res["steps"],
                    "seconds": res["seconds"], "worker": res["worker"]})
        if res["uploaded"]:
            uploads[res["index"]] = res
            ctx.metrics.uploads.inc()
        else:
            log.info("source %s left after %d of %d pre-training steps: no upload", res["node"], res["steps"], steps)
        ctx.progress("pre-training", i + 1, len(jobs), f"{res['node']} {status}")
    require(bool(uploads), "schedule", "every source left before uploading", "keep a source online")
    order = sorted(uploads)
    return _Uploads(order, [unpack_model(uploads[k]["generator"], ctx.device) for k in order],
                    [unpack_model(uploads[k]["critic"], ctx.device) for k in order],
                    [j[0][1] for j in jobs if j[0][0] not in uploads])


def _stage1(ctx: RunContext, up: _Uploads) -> tuple[AggregateResult, float]:
    """The cloud's Stage I over the uploads, from ``torch.manual_seed(seed)``; (result, seconds)."""
    sc = ctx.sc
    eta_all = sc.nodes.eta_of()
    ctx.progress("stage I", 0, 1, sc.aggregator)
    torch.manual_seed(sc.seed)
    t0 = time.perf_counter()
    bary = aggregate(sc.aggregator, up.generators, up.critics, [eta_all[k] for k in up.order],
                     sc.training.stage1_steps, wgan=sc.training.settings(), win=sc.training.win, nwb=sc.training.nwb)
    seconds = time.perf_counter() - t0
    ctx.metrics.aggregation_seconds.observe(seconds)
    ctx.progress("stage I", 1, 1, f"{sc.aggregator} {seconds:.0f} s")
    return bary, seconds


def _gaussian_result(ctx: RunContext, src: _Sources, up: _Uploads, bary: AggregateResult,
                     seconds: float) -> CoalescenceResult:
    """BW2-UVP (%) of the barycenter and of each source against the exact Gaussian barycenter."""
    sc, ids = ctx.sc, ctx.sc.nodes.ids
    keep = torch.tensor(up.order)
    bm, bc = exact_gaussian_barycenter(src.means[keep], src.covs[keep], torch.tensor(bary.weights, dtype=torch.float64))
    n = sc.evaluation.samples
    with torch.no_grad():
        per_source = {ids[k]: bw2_uvp(g.sample(n).cpu(), bm, bc) for k, g in zip(up.order, up.generators)}
        uvp = bw2_uvp(bary.generator.sample(n).cpu(), bm, bc)
    ctx.record({"kind": "eval", "pipeline": "coalescence", "method": f"stage1_{bary.aggregator}", "iteration": 0,
                "bw2_uvp": uvp})
    return CoalescenceResult([ids[k] for k in up.order], up.left,
                             Stage1Outcome(bary.aggregator, seconds, bary.weights, bw2_uvp=uvp), per_source, "bw2_uvp",
                             sc.target.classes, sc.target.samples)


def _eval_row(method: str, iteration: int, s: GeneratorScore) -> dict[str, Any]:
    return {"kind": "eval", "pipeline": "coalescence", "method": method, "iteration": iteration,
            "fid_whole": s.fid_whole, "fid_target": s.fid_target, "class_tv": s.class_tv,
            "target_share": s.target_share, "classes_covered": s.classes_covered}


def _stage2(ctx: RunContext, src: _Sources, up: _Uploads, bary: AggregateResult,
            seconds: float) -> CoalescenceResult:
    """Score the sources and the barycenter, then run every Stage II method on the pool."""
    sc, ids = ctx.sc, ctx.sc.nodes.ids
    per_source = {ids[k]: _score(g, sc, ctx.device).fid_whole for k, g in zip(up.order, up.generators)}
    s1 = _score(bary.generator, sc, ctx.device)
    ctx.metrics.feature_fid.set(s1.fid_whole)
    ctx.record(_eval_row(f"stage1_{bary.aggregator}", 0, s1))
    out = CoalescenceResult([ids[k] for k in up.order], up.left, Stage1Outcome(bary.aggregator, seconds, bary.weights, s1),
                            per_source, "fid_whole", sc.target.classes, sc.target.samples,
                            population=class_population(evaluator_for(sc.data.dataset, sc.data.data_root,
                                                                      ctx.device).population))
    eta_all = sc.nodes.eta_of()
    whole = torch.cat(src.xs + [src.target.x]).to(ctx.device)
    task = CoalescenceTask(up.generators, up.critics, [eta_all[k] for k in up.order], src.target.x.to(ctx.device),
                           whole)
    jobs = [((name, task, bary, sc), {}) for name in sc.target.methods]
    done: dict[str, MethodOutcome] = {}
    for i, res in enumerate(ctx.pool.map_unordered(adapt_job, jobs)):
        for it, s in res.curve:
            ctx.record(_eval_row(res.name, it, s))
        ctx.metrics.feature_fid.set(res.final.fid_whole)
        done[res.name] = res
        ctx.progress("stage II", i + 1, len(jobs), f"{res.name} FID {res.final.fid_whole:.1f}")
    out.methods = {m: done[m] for m in sc.target.methods if m in done}
    return out


def run_coalescence(ctx: RunContext) -> CoalescenceResult:
    """Pre-train sources on the pool, Stage I in the cloud, Stage II methods on the pool."""
    av = availability_for(ctx.sc, "coalescence")
    _record_schedule(ctx, av)
    src = _source_data(ctx)
    up = _pretrain(ctx, av, src.xs)
    bary, seconds = _stage1(ctx, up)
    if src.target is None:
        return _gaussian_result(ctx, src, up, bary, seconds)
    return _stage2(ctx, src, up, bary, seconds)
