"""edgegan.barycenter"""

# amortized grid barycenters (seed 002, issue 10)
from edgegan.barycenter.grid import (  # noqa: E402
    GridBarycenterNet,
    aggregate_grid,
    euclidean_grid_barycenter,
    grid_barycenter,
    sinkhorn_grid_barycenter,
)

# continuous W2 barycenters: exact Gaussian ground truth, WIN (seed 004), NWB (seed 001), issue 5
from edgegan.barycenter.aggregate import AGGREGATORS, AggregateResult, aggregate  # noqa: E402
from edgegan.barycenter.continuous import W2BarycenterResult  # noqa: E402
from edgegan.barycenter.gaussian import (  # noqa: E402
    bw2_uvp,
    exact_gaussian_barycenter,
    gaussian_w2_squared,
)
from edgegan.barycenter.nwb import NWBConfig, nwb_barycenter  # noqa: E402
from edgegan.barycenter.win import WINConfig, win_barycenter  # noqa: E402

# recursive W1 barycenter (Stage I, seed 000 Alg. 1), relevance weights, weight average: issue 4
from edgegan.barycenter.recursive import BarycenterResult, recursive_barycenter  # noqa: E402
from edgegan.barycenter.weight_average import average_generators, average_models  # noqa: E402
from edgegan.barycenter.weights import coalescence_order, relevance_weights  # noqa: E402
