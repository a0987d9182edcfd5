"""edgegan.barycenter"""

# amortized grid barycenters (seed 002, issue 10)
from edgegan.barycenter.grid import (  # noqa: E402
    GridBarycenterNet,
    aggregate_grid,
    euclidean_grid_barycenter,
    grid_barycenter,
    sinkhorn_grid_barycenter,
)
