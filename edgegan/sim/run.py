"""One simulated run: scenario → pool → pipelines → run folder (``edgegan simulate``)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from edgegan.device import resolve_device
from edgegan.monitor.metrics import Metrics, start_metrics_server
from edgegan.sim.engine import Progress, make_pool
from edgegan.sim.report import RunRecorder, write_outputs
from edgegan.sim.scenario import Scenario

log = logging.getLogger("edgegan.sim")


def _no_progress(phase: str, done: int, total: int, text: str) -> None:
    pass


def simulate(sc: Scenario, out_dir: str | Path, progress: Progress | None = None, metrics: Metrics | None = None,
             metrics_port: int = 0, evaluate: bool = True) -> dict[str, Any]:
    """Run every pipeline of ``sc`` on the engine ``sc.engine`` describes; write the run folder.

    ``metrics_port`` > 0 serves Prometheus ``/metrics`` while the run lasts. Returns the summary.
    """
    from edgegan.sim import pipelines

    progress = progress or _no_progress
    metrics = metrics or Metrics()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    pool = make_pool(sc.engine.backend, sc.engine.workers, sc.engine.resident_nodes, res.num_cpus, num_gpus,
                     sc.engine.ray_address, str(device) if sc.engine.backend == "inproc" else "cpu")
    torch.set_num_threads(1)
    rec = RunRecorder(out)
    summary: dict[str, Any] = {
        "scenario": sc.name, "description": sc.description, "seed": sc.seed, "pipelines": sc.pipelines,
        "aggregator": sc.aggregator, "source": sc.source,
        "engine": {"backend": pool.backend, "workers": pool.size, "device": str(device),
                   "resident_nodes": sc.engine.resident_nodes, "num_gpus_per_worker": num_gpus},
        "final_fid": {}}
    samples: dict[str, torch.Tensor] = {}
    grid = None
    try:
        for p in sc.pipelines:
            progress(p, 0, 1, "starting")
            if p == "coalescence":
                r = pipelines.run_coalescence(sc, pool, rec, progress, device, metrics)
            elif p == "tdgan":
                r = pipelines.run_tdgan(sc, pool, rec, progress, device, metrics, out, evaluate)
            else:
                r = pipelines.run_grid(sc, pool, rec, progress)
                grid = r
                summary["grid_reference"] = sc.grid.compare_to
                r = {k: v for k, v in r.items() if k not in ("barycenter", "inputs", "reference")}
            for name, x in r.pop("samples", {}).items():
                samples[name] = x
            summary["final_fid"].update(r.get("final_fid", {}))
            summary[p] = r
        summary["engine"]["workers_stats"] = pool.stats()
    finally:
        pool.shutdown()
        rec.close()
        torch.set_num_threads(threads)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["scenario_config"] = dataclasses.asdict(sc)
    return write_outputs(out, summary, rec.rows, samples, grid, sc.outputs.plots, sc.outputs.sample_grids)
