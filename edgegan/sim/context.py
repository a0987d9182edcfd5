"""What every pipeline of a simulated run shares: the :class:`RunContext` it is given, and the
scenario's data split and availability model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from edgegan.data import TensorData, partition_by_classes, partition_by_count, partition_dirichlet
from edgegan.errors import require
from edgegan.monitor.metrics import Metrics
from edgegan.sim.availability import Availability, build_availability
from edgegan.sim.pool import WorkerPool
from edgegan.sim.scenario import Scenario

#: Progress callback: ``progress(phase, completed, total, text)``.
Progress = Callable[[str, int, int, str], None]
#: ``record(row)`` appends one event row to ``metrics.jsonl``.
Record = Callable[[dict[str, Any]], None]


@dataclass
class RunContext:
    """A pipeline's inputs: the scenario, the worker pool, the event recorder, the progress
    display, the cloud's device, the Prometheus metrics and the run folder."""

    sc: Scenario
    pool: WorkerPool
    record: Record
    progress: Progress
    device: torch.device
    metrics: Metrics
    work_dir: Path
    evaluate: bool = True


def partition(sc: Scenario, data: TensorData) -> list[TensorData]:
    """Split ``data`` over ``nodes.count`` nodes as ``data.partition`` says."""
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
    """The scenario's availability model over ``pipeline``'s schedule length."""
    base = Path(sc.source).parent if sc.source else None
    return build_availability(sc.schedule, sc.nodes.ids, sc.schedule_steps(pipeline), sc.seed, base)
