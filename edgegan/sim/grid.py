"""The ``grid`` pipeline (seed 002): each node uploads the mean of its digit-grid densities (one
job per node on the pool) and the cloud aggregates them by the amortized grid barycenter
(:func:`edgegan.barycenter.grid.aggregate_grid`), optionally against a reference aggregator."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgegan.barycenter.grid import aggregate_grid, grid_kl, grid_l1
from edgegan.barycenter.grid_data import digit_histograms
from edgegan.data import TensorData, load_digits
from edgegan.errors import require
from edgegan.sim.context import RunContext, availability_for, partition


@dataclass
class GridResult:
    """What the grid pipeline reports (``summary.json`` ``grid``; the arrays go to the plot only)."""

    aggregator: str
    nodes: list[str]
    weights: list[float]
    ms: float
    barycenter: np.ndarray
    inputs: np.ndarray
    compare_to: str | None = None
    reference: np.ndarray | None = None
    reference_ms: float | None = None
    kl_to_reference: float | None = None
    l1_to_reference: float | None = None


def grid_job(host, node_id: str, hists: torch.Tensor) -> dict[str, Any]:
    """A node's grid upload (seed 002 setting): the mean of its histograms, mass 1."""
    h = hists.double().mean(0)
    return {"node": node_id, "summary": h / h.sum(), "n": int(hists.shape[0])}


def _weights(ctx: RunContext, order: list[str], counts: dict[str, int]) -> torch.Tensor:
    """λ_k per ``grid.weights``: n_k / Σn, uniform, or ∝ 1/η_k; normalised to sum 1."""
    sc = ctx.sc
    if sc.grid.weights == "by_samples":
        w = torch.tensor([counts[k] for k in order], dtype=torch.float64)
    elif sc.grid.weights == "uniform":
        w = torch.ones(len(order), dtype=torch.float64)
    else:
        eta = sc.nodes.eta_of()
        w = torch.tensor([1.0 / eta[sc.nodes.ids.index(k)] for k in order], dtype=torch.float64)
    return w / w.sum()


def _timed_aggregate(h: np.ndarray, w: np.ndarray, aggregator: str, ctx: RunContext) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    bar = aggregate_grid(h, w, aggregator, ctx.sc.grid.model, ctx.sc.grid.reg)
    return np.asarray(bar), 1000 * (time.perf_counter() - t0)


def run_grid(ctx: RunContext) -> GridResult:
    """Node mean densities aggregated by the amortized grid barycenter (seed 002)."""
    sc = ctx.sc
    digits = load_digits()
    hists = TensorData("digits-grid", digit_histograms(sc.data.grid_size)[:, None], digits.y, digits.num_classes)
    parts = partition(sc, hists)
    online = set(availability_for(sc, "grid").online_at(0))
    jobs = [((k, parts[i].x[:, 0]), {}) for i, k in enumerate(sc.nodes.ids) if k in online]
    require(bool(jobs), "schedule", "no node is online at step 0", "bring at least one node online")
    ups = {}
    for i, r in enumerate(ctx.pool.map_unordered(grid_job, jobs)):
        ups[r["node"]] = r
        ctx.record({"kind": "upload", "pipeline": "grid", "node": r["node"], "samples": r["n"]})
        ctx.progress("grid uploads", i + 1, len(jobs), r["node"])
    order = [k for k in sc.nodes.ids if k in ups]
    h = torch.stack([ups[k]["summary"] for k in order]).numpy()
    w = _weights(ctx, order, {k: ups[k]["n"] for k in order}).numpy()
    bar, ms = _timed_aggregate(h, w, sc.aggregator, ctx)
    out = GridResult(sc.aggregator, order, w.tolist(), ms, bar, h)
    row = {"kind": "eval", "pipeline": "grid", "method": sc.aggregator, "ms": ms}
    if sc.grid.compare_to:
        ref, ref_ms = _timed_aggregate(h, w, sc.grid.compare_to, ctx)
        a, b = torch.as_tensor(ref), torch.as_tensor(bar)
        out.compare_to, out.reference, out.reference_ms = sc.grid.compare_to, ref, ref_ms
        out.kl_to_reference, out.l1_to_reference = float(grid_kl(a, b)), float(grid_l1(a, b))
        row.update(kl_to_reference=out.kl_to_reference, l1_to_reference=out.l1_to_reference,
                   reference=sc.grid.compare_to, reference_ms=ref_ms)
    ctx.record(row)
    return out
