"""In-process TDGAN runs and the seed 003 §4 baselines under one budget and one evaluation.

Methods (seed 003 §4.2):
- ``tdgan``: digesting + λ·reminding over the schedule's online nodes.
- ``finetune``: the same with λ = 0 (digesting only: sequential fine-tuning).
- ``joint``: one node holding all data of the tasks so far, one discriminator kept across
  tasks (the centralised upper bound).
- ``local``: a fresh generator per task trained only on that task's node(s).
Every method gets ``task.steps`` generator steps per task and is evaluated after each task on
every class seen so far (class accuracy of conditional samples, feature-FID).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from edgegan.data.tensordata import TensorData
from edgegan.errors import require
from edgegan.eval import FeatureFID, class_accuracy
from edgegan.nn.base import Generator
from edgegan.nn.factory import build_gan
from edgegan.tdgan.cloud import TDGANCloud
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import TDGANEdge, node_seed
from edgegan.tdgan.schedule import Schedule, Task

log = logging.getLogger("edgegan.tdgan")

METHODS = ("tdgan", "finetune", "joint", "local")


def build_generator(cfg: TDGANConfig, image_shape: tuple[int, ...], num_classes: int) -> Generator:
    """The conditional G(u, y) of ``cfg.arch``, initialised from ``cfg.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_gan(cfg.arch, image_shape, cfg.latent_dim, num_classes, cfg.width)[0]


def run_schedule(cloud: TDGANCloud, edges: dict[str, TDGANEdge], schedule: Schedule,
                 on_task_end: Callable[[int], Any] | None = None) -> list[dict[str, float]]:
    """Drive ``cloud`` and ``edges`` over ``schedule``: apply its events, then one round per step.

    Returns the per-step stats of :meth:`TDGANCloud.apply_feedback`.
    """
    missing = sorted(set(schedule.nodes) - set(edges))
    require(not missing, "schedule", f"names nodes without an edge: {missing}", "give an edge for every node")
    ends = {s + t.steps - 1: i for i, (s, t) in enumerate(zip(schedule.task_starts, schedule.tasks))}
    history = []
    for step in range(schedule.total_steps):
        for ev in schedule.events_at(step):
            if ev.kind == "leave":
                cloud.leave(ev.node_id)
            else:
                cloud.join(edges[ev.node_id].info())
        replies = [edges[r.node_id].feedback(r) for r in cloud.make_requests(step)]
        history.append(cloud.apply_feedback(replies))
        if step in ends and on_task_end is not None:
            on_task_end(ends[step])
    return history


@dataclass
class Evaluator:
    """Class accuracy of conditional samples and feature-FID against the real data of seen classes."""

    classifier: nn.Module
    data: TensorData
    samples_per_class: int = 200
    seed: int = 1234

    @torch.no_grad()
    def __call__(self, G: Generator, task_classes: list[list[int]]) -> dict[str, Any]:
        """``task_classes[j]``: classes of task j, for the tasks done so far (the last is current)."""
        was_training = G.training
        G.eval()
        dev = next(G.parameters()).device
        rng = torch.Generator(device=dev).manual_seed(self.seed)
        seen = sorted({c for cl in task_classes for c in cl})
        per_class = {}
        for c in seen:
            y = torch.full((self.samples_per_class,), c, dtype=torch.long, device=dev)
            x = G(G.sample_latent(len(y), dev, generator=rng), y)
            per_class[c] = class_accuracy(self.classifier, x, y)
        mean = lambda cl: sum(per_class[c] for c in cl) / len(cl) if cl else None  # noqa: E731
        old = sorted({c for cl in task_classes[:-1] for c in cl})
        mask = torch.isin(self.data.y, torch.tensor(seen))
        real_y = self.data.y[mask].to(dev)
        fake = G(G.sample_latent(len(real_y), dev, generator=rng), real_y)
        fid = FeatureFID(self.classifier, self.data.x[mask])(fake)
        G.train(was_training)
        return {"per_class_acc": {str(c): a for c, a in per_class.items()},
                "task_acc": [mean(cl) for cl in task_classes],
                "old_class_acc": mean(old), "new_class_acc": mean(task_classes[-1]),
                "seen_class_acc": mean(seen), "fid": fid}


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
        keys = ("old_class_acc", "new_class_acc", "seen_class_acc", "fid", "task_acc", "per_class_acc")
        out: dict[str, Any] = {k: [e[k] for e in self.evals] for k in keys}
        out.update(rejected=self.rejected, bytes_in=self.bytes_in, bytes_out=self.bytes_out, seconds=self.seconds)
        return out


def _classes(nodes: dict[str, TensorData], ids: tuple[str, ...]) -> list[int]:
    return sorted({int(c) for k in ids for c in torch.unique(nodes[k].y).tolist()})


def run_method(method: str, nodes: dict[str, TensorData], schedule: Schedule, cfg: TDGANConfig,
               evaluator: Evaluator) -> MethodResult:
    """Train ``method`` over ``schedule`` and evaluate after every task."""
    require(method in METHODS, "method", f"unknown method {method!r}", "choose one of " + ", ".join(METHODS))
    some = next(iter(nodes.values()))
    shape, k = some.image_shape, some.num_classes
    task_classes = [_classes(nodes, t.nodes) for t in schedule.tasks]
    res = MethodResult(method)
    t0 = time.perf_counter()

    def record(cloud: TDGANCloud, G: Generator, t: int) -> None:
        res.evals.append(evaluator(G, task_classes[:t + 1]))
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(node_seed(cfg.seed, "joint"))
            D = build_gan(cfg.arch, shape, cfg.latent_dim, k, cfg.width)[1]
        edges, tasks, ids = {}, [], []
        for i, task in enumerate(schedule.tasks):
            ids += [n for n in task.nodes if n not in ids]
            nid = f"joint@{i + 1}"
            edges[nid] = TDGANEdge(nid, _union(nodes, ids), D, c)
            tasks.append(Task(task.name, (nid,), task.steps))
        run_schedule(cloud, edges, Schedule(tasks), lambda t: record(cloud, cloud.G, t))
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
