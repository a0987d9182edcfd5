"""One simulated run: scenario → pool → pipelines → run folder (``edgegan simulate``)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from edgegan.device import resolve_device
from edgegan.errors import require
from edgegan.monitor.metrics import Metrics, start_metrics_server
from edgegan.sim.coalescence import run_coalescence
from edgegan.sim.context import Progress, RunContext
from edgegan.sim.grid import run_grid
from edgegan.sim.pool import make_pool
from edgegan.sim.report import EngineInfo, RunRecorder, RunSummary, write_outputs
from edgegan.sim.scenario import Scenario
from edgegan.sim.tdgan import run_tdgan

log = logging.getLogger("edgegan.sim")


def _no_progress(phase: str, done: int, total: int, text: str) -> None:
    pass


def simulate(sc: Scenario, out_dir: str | Path, progress: Progress | None = None, metrics: Metrics | None = None,
             metrics_port: int = 0, evaluate: bool = True) -> RunSummary:
    """Run every pipeline of ``sc`` on the engine ``sc.engine`` describes; write the run folder.

    ``metrics_port`` > 0 serves Prometheus ``/metrics`` while the run lasts.
    """
    sc.engine.validate()  # command-line overrides (backend) included
    grpc = sc.engine.backend == "grpc"
    require(not grpc or sc.pipelines == ["tdgan"], "engine.backend",
            f"the grpc backend runs the tdgan pipeline, this scenario runs {sc.pipelines}",
            "use --backend inproc or ray for coalescence and grid runs")
    if sc.engine.host_kills and not grpc:
        log.warning("engine.host_kills ignored: only the grpc backend runs edge-host processes")
    metrics = metrics or Metrics()
    out = Path(out_dir)  # made by RunRecorder once the pool is up: a failed start leaves no empty run folder
    if metrics_port:
        port = start_metrics_server(metrics_port, metrics.registry)
        log.info("Prometheus metrics on :%d/metrics", port)
    device = resolve_device(sc.engine.device)
    res = sc.nodes.resources
    num_gpus = res.num_gpus if device.type == "cuda" else 0.0
    # the cloud computes on one thread: parallelism comes from the pool's workers, and several
    # intra-op threads on a shared or busy machine are many times slower than one
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    pool = make_pool("inproc" if grpc else sc.engine.backend, 1 if grpc else sc.engine.workers, sc.engine.resident_nodes, res.num_cpus, num_gpus,
                     sc.engine.ray_address, str(device) if sc.engine.backend != "ray" else "cpu",
                     connect_timeout_s=sc.engine.ray_connect_timeout_s)
    torch.set_num_threads(1)
    rec = RunRecorder(out)
    uses_aggregator = any(p in ("coalescence", "grid") for p in sc.pipelines)
    summary = RunSummary(sc.name, sc.description, sc.seed, sc.pipelines, sc.aggregator if uses_aggregator else None,
                         sc.source, EngineInfo(sc.engine.backend, sc.engine.hosts if grpc else pool.size, str(device),
                                    sc.engine.resident_nodes, num_gpus),
                         dataclasses.asdict(sc))
    ctx = RunContext(sc, pool, rec, progress or _no_progress, device, metrics, out, evaluate)
    try:
        for p in sc.pipelines:
            ctx.progress(p, 0, 1, "starting")
            if p == "coalescence":
                summary.coalescence = run_coalescence(ctx)
            elif p == "tdgan":
                summary.tdgan = run_tdgan(ctx)
            else:
                summary.grid = run_grid(ctx)
        summary.engine.workers_stats = summary.tdgan.processes if grpc and summary.tdgan else pool.stats()
        summary.engine.lost_workers = [pool.lost[i] for i in sorted(pool.lost)]
    finally:
        pool.shutdown()
        rec.close()
        torch.set_num_threads(threads)
    summary.wall_seconds = time.perf_counter() - t0
    write_outputs(out, summary, rec.rows, sc.outputs)
    return summary
