"""Barycenters of edge models.

- Stage I recursive W1 barycenter, relevance weights λ = 1/η and ordering (seed 000, Alg. 1)
- WIN (seed 004, Alg. 1) and NWB with ICNNs (seed 001) for W2, from samplers, on one shared
  scaffold (``_w2_solver``: standardised inputs, overrides, ``log=``, checkpoints, stopping)
- exact Gaussian W2 barycenter and BW2-UVP (seed 001 eq. 11) as ground truth
- amortized grid barycenters with a DCNN (seed 002)
- ``aggregate(name, ...)``: the cloud's dispatch over ``recursive_w1 | win | nwb | weight_average``
"""

from edgegan.barycenter.aggregate import AGGREGATORS, AggregateResult, aggregate
from edgegan.barycenter._w2_solver import W2SolverConfig
from edgegan.barycenter.continuous import W2BarycenterResult
from edgegan.barycenter.gaussian import bw2_uvp, exact_gaussian_barycenter, gaussian_w2_squared
from edgegan.barycenter.grid import (
    GridBarycenterNet,
    aggregate_grid,
    euclidean_grid_barycenter,
    grid_barycenter,
    sinkhorn_grid_barycenter,
)
from edgegan.barycenter.nwb import NWBConfig, nwb_barycenter
from edgegan.barycenter.recursive import BarycenterResult, recursive_barycenter
from edgegan.barycenter.weight_average import average_generators, average_models
from edgegan.barycenter.weights import coalescence_order, relevance_weights
from edgegan.barycenter.win import WINConfig, win_barycenter

__all__ = [
    "AGGREGATORS", "AggregateResult", "BarycenterResult", "GridBarycenterNet", "NWBConfig",
    "W2BarycenterResult", "W2SolverConfig", "WINConfig", "aggregate", "aggregate_grid", "average_generators",
    "average_models", "bw2_uvp", "coalescence_order", "euclidean_grid_barycenter",
    "exact_gaussian_barycenter", "gaussian_w2_squared", "grid_barycenter", "nwb_barycenter",
    "recursive_barycenter", "relevance_weights", "sinkhorn_grid_barycenter", "win_barycenter",
]
