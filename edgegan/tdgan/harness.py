"""In-process TDGAN runs and the seed 003 §4 baselines under one budget and one evaluation.

Methods (seed 003 §4.2):
- ``tdgan``: digesting + λ·reminding over the schedule's online nodes.
- ``finetune``: the same with λ = 0 (digesting only: sequential fine-tuning).
- ``joint``: one node holding all data of the tasks so far, one discriminator kept across
  tasks (the centralised upper bound).
- ``local``: a fresh generator per task trained only on that task's node(s).
Every method gets ``task.steps`` generator steps per task and is evaluated after each task on
every class seen so far by :class:`edgegan.eval.Evaluator` (class accuracy of conditional samples,
feature-FID against the seen classes and the whole data set, class-histogram TV).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import require
from edgegan.eval import EVAL_LATENT_SEED, Evaluator
from edgegan.nn.base import Generator
from edgegan.nn.factory import build_gan
from edgegan.tdgan.cloud import StepStats, TDGANCloud
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import TDGANEdge
from edgegan.tdgan.schedule import Schedule, Task

log = logging.getLogger("edgegan.tdgan")

METHODS = ("tdgan", "finetune", "joint", "local")


def build_generator(cfg: TDGANConfig, image_shape: tuple[int, ...], num_classes: int) -> Generator:
    """The conditional G(u, y) of ``cfg.arch``, initialised from ``cfg.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_gan(cfg.arch, image_shape, cfg.latent_dim, num_classes, cfg.width)[0]


def run_schedule(cloud: TDGANCloud, edges: dict[str, TDGANEdge], schedule: Schedule,
                 on_task_end: Callable[[int], Any] | None = None) -> list[StepStats]:
    """Drive ``cloud`` and ``edges`` over ``schedule``: apply its events, then one round per step.

    Returns the per-step stats of :meth:`TDGANCloud.apply_feedback`.
    """
    missing = sorted(set(schedule.nodes) - set(edges))
    require(not missing, "schedule", f"names nodes without an edge: {missing}", "give an edge for every node")
    ends = {s + t.steps - 1: i for i, (s, t) in enumerate(zip(schedule.task_starts, schedule.tasks))}
    history = []
    for step in range(schedule.total_steps):
        schedule.apply_events(step, lambda k: k in cloud.online, lambda k: cloud.join(edges[k].info()), cloud.leave)
        replies = [edges[r.node_id].feedback(r) for r in cloud.make_requests(step)]
        history.append(cloud.apply_feedback(replies))
        if step in ends and on_task_end is not None:
            on_task_end(ends[step])
    return history


def task_scores(evaluator: Evaluator, G: Generator, task_classes: list[list[int]], samples_per_class: int = 200,
                seed: int = EVAL_LATENT_SEED) -> dict[str, Any]:
    """Seed 003 §4's per-task view of :meth:`Evaluator.score` after a task: ``task_classes[j]`` are
    task j's classes for the tasks done so far (the last is current). Class accuracy per task,
    on old / new / all seen classes; ``fid`` against the real images of the seen classes."""
    seen = sorted({c for cl in task_classes for c in cl})
    old = sorted({c for cl in task_classes[:-1] for c in cl})
    s = evaluator.score(G, seen, seed=seed, samples_per_class=samples_per_class)
    return {"per_class_acc": {str(c): a for c, a in s.per_class_acc.items()},
            "task_acc": [s.mean_class_acc(cl) for cl in task_classes],
            "old_class_acc": s.mean_class_acc(old), "new_class_acc": s.mean_class_acc(task_classes[-1]),
            "seen_class_acc": s.class_acc, "fid": s.fid_target, "fid_whole": s.fid_whole, "class_tv": s.class_tv}


@dataclass
class MethodResult:
    """Per-task evaluations of one method plus its traffic and wall time."""

    method: str
    evals: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        keys = ("old_class_acc", "new_class_acc", "seen_class_acc", "fid", "fid_whole", "class_tv", "task_acc",
                "per_class_acc")
        out: dict[str, Any] = {k: [e[k] for e in self.evals] for k in keys}
        out.update(rejected=self.rejected, bytes_in=self.bytes_in, bytes_out=self.bytes_out, seconds=self.seconds)
        return out


def _classes(nodes: dict[str, TensorData], ids: tuple[str, ...]) -> list[int]:
    return sorted({int(c) for k in ids for c in torch.unique(nodes[k].y).tolist()})


def run_method(method: str, nodes: dict[str, TensorData], schedule: Schedule, cfg: TDGANConfig,
               evaluator: Evaluator, samples_per_class: int = 200) -> MethodResult:
    """Train ``method`` over ``schedule`` and score it with :func:`task_scores` after every task."""
    require(method in METHODS, "method", f"unknown method {method!r}", "choose one of " + ", ".join(METHODS))
    some = next(iter(nodes.values()))
    shape, k = some.image_shape, some.num_classes
    task_classes = [_classes(nodes, t.nodes) for t in schedule.tasks]
    res = MethodResult(method)
    t0 = time.perf_counter()

    def record(cloud: TDGANCloud, G: Generator, t: int) -> None:
        res.evals.append(task_scores(evaluator, G, task_classes[:t + 1], samples_per_class))
        log.info("%s task %d: %s", method, t, {kk: res.evals[-1][kk] for kk in ("old_class_acc", "new_class_acc")})

    def tally(cloud: TDGANCloud) -> None:
        res.rejected += cloud.totals["rejected"]
        res.bytes_in += cloud.totals["bytes_in"]
        res.bytes_out += cloud.totals["bytes_out"]

    if method in ("tdgan", "finetune"):
        c = cfg if method == "tdgan" else replace(cfg, reminding_weight=0.0)
        cloud = TDGANCloud(build_generator(c, shape, k), c)
        edges = {nid: TDGANEdge(nid, d, cfg=c) for nid, d in nodes.items()}
        run_schedule(cloud, edges, schedule, lambda t: record(cloud, cloud.G, t))
        tally(cloud)
    elif method == "joint":
        # one site with the data of every task so far; D_joint persists across tasks
        c = replace(cfg, reminding_weight=0.0)
        cloud = TDGANCloud(build_generator(c, shape, k), c)
        edges, tasks, ids = {}, [], []
        for i, task in enumerate(schedule.tasks):  # D_joint: drawn under the seed of "joint", carried on
            ids += [n for n in task.nodes if n not in ids]
            nid = f"joint@{i + 1}"
            edges[nid] = TDGANEdge(nid, _union(nodes, ids), c, d_from="joint")
            tasks.append(Task(task.name, (nid,), task.steps))

        def task_end(t: int) -> None:
            record(cloud, cloud.G, t)
            if t + 1 < len(tasks):
                edges[f"joint@{t + 2}"].continue_from(edges[f"joint@{t + 1}"])

        run_schedule(cloud, edges, Schedule(tasks), task_end)
        tally(cloud)
    else:  # local: a fresh G and fresh D_k per task, only that task's node(s)
        c = replace(cfg, reminding_weight=0.0)
        for i, task in enumerate(schedule.tasks):
            cloud = TDGANCloud(build_generator(c, shape, k), c)
            edges = {nid: TDGANEdge(nid, nodes[nid], cfg=c) for nid in task.nodes}
            run_schedule(cloud, edges, Schedule([task]), lambda _t, i=i: record(cloud, cloud.G, i))
            tally(cloud)
    res.seconds = time.perf_counter() - t0
    return res


def _union(nodes: dict[str, TensorData], ids: list[str]) -> TensorData:
    parts = [nodes[i] for i in ids]
    return TensorData("+".join(ids), torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                      parts[0].num_classes)
