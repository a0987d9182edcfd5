"""The pipelines a scenario runs on the engine; each calls into the algorithm core.

* ``coalescence`` (seed 000): source pre-training (:func:`pretrain_sources`, one job per node on
  the pool), Stage I in the cloud (:func:`edgegan.barycenter.aggregate.aggregate`), Stage II at
  the target for every method (:func:`compare_methods`, one job per method on the pool).
* ``tdgan`` (seed 003): :class:`CloudServer` drives virtual :class:`TDGANEdge` s over a
  :class:`SimLink` following the availability schedule.
* ``grid`` (seed 002): node mean densities (one job per node) aggregated by
  :func:`edgegan.barycenter.grid.aggregate_grid`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from edgegan.errors import require
from edgegan.sim.availability import Availability, build_availability
from edgegan.sim.engine import InprocPool, Progress, RayPool, SimLink
from edgegan.sim.scenario import Scenario

log = logging.getLogger("edgegan.sim")

Pool = InprocPool | RayPool
Record = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------- data
def load_images(sc: Scenario):
    from edgegan.data import load_dataset

    return load_dataset(sc.data.dataset, sc.data.data_root)


def partition(sc: Scenario, data) -> list:
    """Split ``data`` over ``nodes.count`` nodes as ``data.partition`` says."""
    from edgegan.data import partition_by_classes, partition_by_count, partition_dirichlet

    n, d = sc.nodes.count, sc.data
    if d.partition == "classes":
        classes = [d.classes[i % len(d.classes)] for i in range(n)]
        caps = None if d.samples_per_node is None else [d.samples_per_node] * n
        return partition_by_classes(data, classes, caps, seed=sc.seed, disjoint=d.disjoint)
    if d.partition == "dirichlet":
        return partition_dirichlet(data, n, d.alpha, seed=sc.seed)
    per = d.samples_per_node or len(data) // n
    require(per >= 1, "data.samples_per_node", f"{len(data)} samples cannot serve {n} nodes",
            "set samples_per_node or use fewer nodes")
    return partition_by_count(data, [per] * n, seed=sc.seed)


def availability_for(sc: Scenario, pipeline: str) -> Availability:
    base = Path(sc.source).parent if sc.source else None
    return build_availability(sc.schedule, sc.nodes.ids, sc.schedule_steps(pipeline), sc.seed, base)


def _wgan(sc: Scenario):
    from edgegan.gan import WGANConfig

    t = sc.training
    return WGANConfig(lr=t.lr, beta1=t.beta1, beta2=t.beta2, critic_steps=t.critic_steps, batch_size=t.batch_size,
                      latent_dim=t.latent_dim)


def _pack(model: torch.nn.Module) -> dict[str, Any]:
    from edgegan.nn import model_spec

    return {"spec": model_spec(model), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}


def _unpack(d: dict[str, Any], device: torch.device | str = "cpu") -> torch.nn.Module:
    from edgegan.nn import build_from_spec

    m = build_from_spec(d["spec"])
    m.load_state_dict(d["state_dict"])
    return m.to(device)


# ---------------------------------------------------------------------- jobs (run on a pool worker)
def pretrain_job(host, index: int, node_id: str, x: torch.Tensor, steps: int, uploads: bool,
                 sc: Scenario) -> dict[str, Any]:
    """Seed 000 §3 on source node ``index``: WGAN-GP on its own data; ``uploads`` False = the node
    leaves after ``steps`` iterations and nothing arrives."""
    from edgegan.baselines.coalescence import pretrain_sources

    t = sc.training
    t0 = time.perf_counter()
    gens, crits = pretrain_sources([x.to(host.device)], t.arch, t.generator_width, t.critic_width, t.latent_dim,
                                   steps, _wgan(sc), seed=sc.seed + index)
    out = {"index": index, "node": node_id, "steps": steps, "uploaded": uploads,
           "seconds": time.perf_counter() - t0, "worker": host.index}
    if uploads:
        out.update(generator=_pack(gens[0]), critic=_pack(crits[0]))
    return out


def _image_eval(host, sc: Scenario):
    """(FeatureFID, classifier) for the scenario's data set, built once per worker."""
    def make():
        from edgegan.eval import FeatureFID, get_classifier

        data = load_images(sc)
        clf = get_classifier(data).to(host.device)
        return FeatureFID(clf, data.x), clf

    return host.cached(f"eval:{sc.data.dataset}:{sc.data.data_root}", make)


def adapt_job(host, name: str, task, bary, sc: Scenario) -> dict[str, Any]:
    """Stage II method ``name`` at the target (seed 000 §5) via :func:`compare_methods`, scored
    every ``evaluation.every`` iterations."""
    from edgegan.baselines.coalescence import compare_methods, evaluate_generator

    fid, clf = _image_eval(host, sc)
    dev = host.device
    task.generators = [g.to(dev) for g in task.generators]
    task.critics = [c.to(dev) for c in task.critics]
    task.local_data, task.whole_data = task.local_data.to(dev), task.whole_data.to(dev)
    for m in (bary.generator, bary.critic_prev, bary.critic_new):
        m.to(dev)
    curve: list[dict[str, Any]] = []
    ev = sc.evaluation

    def callback(stats, G):
        r = evaluate_generator(G, fid, clf, sc.target.classes, ev.samples, seed=sc.seed + 1234)
        curve.append({"iteration": int(stats["step"]), "fid": r["fid"], "coverage": r["coverage"],
                      "source_only_share": r["source_only_share"], "share": r["share"]})

    res = compare_methods(task, sc.training.adapt_steps, [name], _wgan(sc), bary, lambda _n: callback,
                          ev.every, sc.seed)[name]
    if not curve or curve[-1]["iteration"] != sc.training.adapt_steps:
        callback({"step": sc.training.adapt_steps}, res.generator)
    G = res.generator.eval()
    with torch.no_grad():
        samples = G.sample(64, generator=torch.Generator(dev).manual_seed(sc.seed)).cpu()
    return {"method": name, "curve": curve, "seconds": res.seconds, "samples": samples, "worker": host.index,
            "generator": _pack(G) if sc.outputs.models else None}


def grid_job(host, node_id: str, hists: torch.Tensor) -> dict[str, Any]:
    """A node's grid upload (seed 002 setting): the mean of its histograms, mass 1."""
    h = hists.double().mean(0)
    return {"node": node_id, "summary": h / h.sum(), "n": int(hists.shape[0])}


# ---------------------------------------------------------------------- coalescence
def run_coalescence(sc: Scenario, pool: Pool, record: Record, progress: Progress, device: torch.device,
                    metrics) -> dict[str, Any]:
    """Pre-train sources on the pool, Stage I in the cloud, Stage II methods on the pool."""
    from edgegan.barycenter.aggregate import aggregate
    from edgegan.baselines.coalescence import CoalescenceTask, digits_split

    ids, eta_all = sc.nodes.ids, sc.nodes.eta_of()
    av = availability_for(sc, "coalescence")
    for t, online in enumerate(av.online_sets()):
        record({"kind": "online", "pipeline": "coalescence", "tick": t, "online": online})
    gaussian = sc.data.dataset == "gaussian"
    if gaussian:
        from edgegan.barycenter.gaussian import gaussian_benchmark, gaussian_samplers

        means, covs = gaussian_benchmark(sc.data.dim, sc.nodes.count, seed=sc.seed)
        xs = [s(sc.data.gaussian_samples) for s in gaussian_samplers(means, covs, seed=sc.seed)]
        target = None
    else:
        data = load_images(sc)
        classes = [sc.data.classes[i % len(sc.data.classes)] for i in range(sc.nodes.count)]
        sources, target = digits_split(data, classes, sc.target.classes, sc.target.samples, sc.seed)
        xs = [s.x for s in sources]
        _image_eval_driver(sc, device)  # warm the classifier cache before workers need it
    steps = sc.training.pretrain_steps
    jobs = []
    for k, node in enumerate(ids):
        n = min(steps, av.online_from_start(node))
        if n == 0:
            record({"kind": "pretrain", "node": node, "status": "absent", "steps": 0})
            continue
        jobs.append(((k, node, xs[k], n, av.online_throughout(node, 0, steps), sc), {}))
    require(bool(jobs), "schedule", "no source node is online at step 0", "bring at least one node online")
    uploads: dict[int, dict[str, Any]] = {}
    for i, res in enumerate(pool.map_unordered(pretrain_job, jobs)):
        status = "uploaded" if res["uploaded"] else "left"
        record({"kind": "pretrain", "node": res["node"], "status": status, "steps": res["steps"],
                "seconds": res["seconds"], "worker": res["worker"]})
        if res["uploaded"]:
            uploads[res["index"]] = res
            metrics.uploads.inc()
        else:
            log.info("source %s left after %d of %d pre-training steps: no upload", res["node"], res["steps"], steps)
        progress("pre-training", i + 1, len(jobs), f"{res['node']} {status}")
    require(bool(uploads), "schedule", "every source left before uploading", "keep a source online")
    order = sorted(uploads)
    gens = [_unpack(uploads[k]["generator"], device) for k in order]
    crits = [_unpack(uploads[k]["critic"], device) for k in order]
    eta = [eta_all[k] for k in order]
    out: dict[str, Any] = {"uploaded": [ids[k] for k in order],
                           "left": [j[0][1] for j in jobs if j[0][0] not in uploads]}

    progress("stage I", 0, 1, sc.aggregator)
    torch.manual_seed(sc.seed)
    t0 = time.perf_counter()
    bary = aggregate(sc.aggregator, gens, crits, eta, sc.training.stage1_steps, wgan=_wgan(sc),
                     win=sc.training.win, nwb=sc.training.nwb)
    stage1_s = time.perf_counter() - t0
    progress("stage I", 1, 1, f"{sc.aggregator} {stage1_s:.0f} s")

    if gaussian:
        from edgegan.barycenter.gaussian import bw2_uvp, exact_gaussian_barycenter

        alphas = torch.tensor(bary.weights, dtype=torch.float64)
        keep = torch.tensor(order)
        bm, bc = exact_gaussian_barycenter(means[keep], covs[keep], alphas)
        n = sc.evaluation.samples
        with torch.no_grad():
            src = {ids[k]: bw2_uvp(g.sample(n).cpu(), bm, bc) for k, g in zip(order, gens)}
            uvp = bw2_uvp(bary.generator.sample(n).cpu(), bm, bc)
        record({"kind": "eval", "pipeline": "coalescence", "method": f"stage1_{bary.aggregator}", "iteration": 0,
                "bw2_uvp": uvp})
        out.update(stage1={"aggregator": bary.aggregator, "seconds": stage1_s, "bw2_uvp": uvp, "weights": bary.weights},
                   sources_bw2_uvp=src, final_bw2_uvp={f"stage1_{bary.aggregator}": uvp,
                                                       **{f"source_{k}": v for k, v in src.items()}},
                   samples={}, methods={})
        return out

    from edgegan.baselines.coalescence import evaluate_generator

    fid, clf = _image_eval_driver(sc, device)
    ev = lambda G: evaluate_generator(G, fid, clf, sc.target.classes, sc.evaluation.samples,  # noqa: E731
                                      seed=sc.seed + 1234)
    src_eval = {ids[k]: ev(g)["fid"] for k, g in zip(order, gens)}
    s1 = ev(bary.generator)
    metrics.feature_fid.set(s1["fid"])
    record({"kind": "eval", "pipeline": "coalescence", "method": f"stage1_{bary.aggregator}", "iteration": 0,
            "fid": s1["fid"], "coverage": s1["coverage"]})
    out.update(stage1={"aggregator": bary.aggregator, "seconds": stage1_s, "fid": s1["fid"],
                       "coverage": s1["coverage"], "share": s1["share"], "weights": bary.weights},
               sources_fid=src_eval)
    whole = torch.cat(xs + [target.x]).to(device)
    task = CoalescenceTask(gens, crits, eta, target.x.to(device), whole)
    methods, samples = {}, {}
    mjobs = [((name, task, bary, sc), {}) for name in sc.target.methods]
    for i, res in enumerate(pool.map_unordered(adapt_job, mjobs)):
        name = res["method"]
        for p in res["curve"]:
            record({"kind": "eval", "pipeline": "coalescence", "method": name,
                    **{k: v for k, v in p.items() if k != "share"}})
        last = res["curve"][-1]
        metrics.feature_fid.set(last["fid"])
        methods[name] = {"final_fid": last["fid"], "coverage": last["coverage"],
                         "source_only_share": last["source_only_share"], "share": last["share"],
                         "seconds": res["seconds"], "worker": res["worker"],
                         "fid_curve": [[p["iteration"], p["fid"]] for p in res["curve"]]}
        samples[name] = res["samples"]
        if res["generator"] is not None:
            methods[name]["generator"] = res["generator"]
        progress("stage II", i + 1, len(mjobs), f"{name} FID {last['fid']:.1f}")
    out.update(methods={m: methods[m] for m in sc.target.methods if m in methods},
               final_fid={m: methods[m]["final_fid"] for m in sc.target.methods if m in methods},
               samples=samples, target={"classes": sc.target.classes, "samples": sc.target.samples})
    return out


_DRIVER_EVAL: dict[str, Any] = {}


def _image_eval_driver(sc: Scenario, device: torch.device):
    """(FeatureFID, classifier) in the driver (the cloud's evaluator)."""
    key = f"{sc.data.dataset}:{sc.data.data_root}:{device}"
    if key not in _DRIVER_EVAL:
        from edgegan.eval import FeatureFID, get_classifier

        with torch.random.fork_rng(devices=[]):  # a first-time classifier fit must not move the run's RNG
            data = load_images(sc)
            clf = get_classifier(data).to(device)
        _DRIVER_EVAL[key] = (FeatureFID(clf, data.x), clf)
    return _DRIVER_EVAL[key]


# ---------------------------------------------------------------------- tdgan
def run_tdgan(sc: Scenario, pool: Pool, record: Record, progress: Progress, device: torch.device, metrics,
              work_dir: Path, evaluate: bool = True) -> dict[str, Any]:
    """TDGAN (seed 003) with :class:`CloudServer` over a :class:`SimLink`."""
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.roles import TDGANServer
    from edgegan.tdgan.harness import Evaluator

    data = load_images(sc)
    parts = partition(sc, data)
    ids = sc.nodes.ids
    av = availability_for(sc, "tdgan")
    schedule = av.to_schedule()
    host_of = {k: i % pool.size for i, k in enumerate(ids)}
    cfg = sc.training.tdgan
    infos = {}
    for h in range(pool.size):
        mine = [(k, parts[i]) for i, k in enumerate(ids) if host_of[k] == h]
        crashes = {k: s for k, s in av.crashes.items() if host_of[k] == h}
        for info in pool.call_sync(h, "add_tdgan_nodes", cfg, mine, crashes):
            infos[info.node_id] = info
    ckpt = work_dir / "cloud"
    shutil.rmtree(ckpt, ignore_errors=True)  # a simulation starts fresh; never resume a stale cloud
    busy = sum(1 for t in range(av.steps) if av.online_at(t))
    require(busy > 0, "schedule", "no node is ever online", "check the windows / churn / trace")
    ccfg = CloudConfig(mode="tdgan", allow_anonymous=True, checkpoint_dir=str(ckpt), checkpoint_every=busy + 1,
                       image_shape=list(data.image_shape), num_classes=data.num_classes, steps=busy,
                       feedback_timeout_s=sc.engine.feedback_timeout_s, device=str(device), tdgan=cfg,
                       eval_dataset=None)  # the pipeline scores G itself
    server = TDGANServer(ccfg, metrics, device)
    evaluator = None
    if evaluate:
        from edgegan.eval import get_classifier

        with torch.random.fork_rng(devices=[]):
            clf = get_classifier(data).to(device)
        evaluator = Evaluator(clf, data, sc.evaluation.samples_per_class, seed=sc.seed + 1234)
    evals: list[dict[str, Any]] = []

    def score() -> None:
        classes = sorted({c for k in server.tdgan.seen for c, n in enumerate(infos[k].label_histogram) if n > 0})
        r = evaluator(server.tdgan.G, [classes])
        row = {"kind": "eval", "pipeline": "tdgan", "method": "tdgan", "iteration": server.tdgan.step,
               "fid": r["fid"], "class_acc": r["seen_class_acc"], "per_class_acc": r["per_class_acc"]}
        evals.append(row)
        metrics.feature_fid.set(r["fid"])
        record(row)

    def on_step(row: dict[str, Any]) -> None:
        row["pipeline"] = "tdgan"
        record(row)
        progress("tdgan", row["tick"] + 1, av.steps, f"online {len(row['online'])}, step {server.tdgan.step}")
        if evaluator is not None and row["kind"] == "step" and server.tdgan.step % sc.evaluation.every == 0:
            score()

    link = SimLink(server, pool, host_of, infos, schedule, on_step)
    t0 = time.perf_counter()

    async def drive() -> str:
        link.start()
        return await server.run(link, asyncio.Event())

    try:
        status = asyncio.run(drive())
    finally:
        server.close()
    wall = time.perf_counter() - t0
    if evaluator is not None and (not evals or evals[-1]["iteration"] != server.tdgan.step):
        score()
    samples = {}
    if sc.outputs.sample_grids and data.num_classes <= 10:
        G = server.tdgan.G.eval()
        y = torch.arange(data.num_classes, device=device).repeat_interleave(8)[:64]
        with torch.no_grad():
            samples["tdgan"] = G(G.sample_latent(len(y), device, generator=torch.Generator(device).manual_seed(
                sc.seed)), y).cpu()
    last = evals[-1] if evals else {}
    out = {"status": status, "ticks": av.steps, "generator_steps": server.tdgan.step, "wall_seconds": wall,
           "totals": server.tdgan.totals, "seen": len(server.tdgan.seen),
           "activations": link.activations, "exchange_seconds": link.exchange_s,
           "mean_online": sum(len(s) for s in av.online_sets()) / av.steps,
           "final_fid": {"tdgan": last["fid"]} if last else {}, "class_acc": last.get("class_acc"),
           "per_class_acc": last.get("per_class_acc"), "samples": samples,
           "fid_curve": [[e["iteration"], e["fid"]] for e in evals]}
    return out


# ---------------------------------------------------------------------- grid
def run_grid(sc: Scenario, pool: Pool, record: Record, progress: Progress) -> dict[str, Any]:
    """Node mean densities aggregated by the amortized grid barycenter (seed 002)."""
    import numpy as np

    from edgegan.barycenter.grid import aggregate_grid, grid_kl, grid_l1
    from edgegan.barycenter.grid_data import digit_histograms
    from edgegan.data import load_digits
    from edgegan.data.tensordata import TensorData

    digits = load_digits()
    hists = TensorData("digits-grid", digit_histograms(sc.data.grid_size)[:, None], digits.y, digits.num_classes)
    parts = partition(sc, hists)
    av = availability_for(sc, "grid")
    ids = sc.nodes.ids
    jobs = [((k, parts[i].x[:, 0]), {}) for i, k in enumerate(ids) if k in set(av.online_at(0))]
    require(bool(jobs), "schedule", "no node is online at step 0", "bring at least one node online")
    ups = {}
    for i, r in enumerate(pool.map_unordered(grid_job, jobs)):
        ups[r["node"]] = r
        record({"kind": "upload", "pipeline": "grid", "node": r["node"], "samples": r["n"]})
        progress("grid uploads", i + 1, len(jobs), r["node"])
    order = [k for k in ids if k in ups]
    h = torch.stack([ups[k]["summary"] for k in order])
    g = sc.grid
    if g.weights == "by_samples":
        w = torch.tensor([ups[k]["n"] for k in order], dtype=torch.float64)
    elif g.weights == "uniform":
        w = torch.ones(len(order), dtype=torch.float64)
    else:
        eta = sc.nodes.eta_of()
        w = torch.tensor([1.0 / eta[ids.index(k)] for k in order], dtype=torch.float64)
    w = w / w.sum()
    t0 = time.perf_counter()
    bar = aggregate_grid(h.numpy(), w.numpy(), sc.aggregator, g.model, g.reg)
    ms = 1000 * (time.perf_counter() - t0)
    out: dict[str, Any] = {"aggregator": sc.aggregator, "nodes": order, "weights": w.tolist(), "ms": ms,
                           "barycenter": np.asarray(bar), "inputs": h.numpy()}
    row = {"kind": "eval", "pipeline": "grid", "method": sc.aggregator, "ms": ms}
    if g.compare_to:
        t0 = time.perf_counter()
        ref = aggregate_grid(h.numpy(), w.numpy(), g.compare_to, g.model, g.reg)
        out["reference"] = np.asarray(ref)
        out["reference_ms"] = 1000 * (time.perf_counter() - t0)
        a, b = torch.as_tensor(np.asarray(ref)), torch.as_tensor(np.asarray(bar))
        out["kl_to_reference"] = float(grid_kl(a, b))
        out["l1_to_reference"] = float(grid_l1(a, b))
        row.update(kl_to_reference=out["kl_to_reference"], l1_to_reference=out["l1_to_reference"],
                   reference=g.compare_to, reference_ms=out["reference_ms"])
    record(row)
    return out
