"""Relevance weights and the order of coalescence (seed 000 §5, "impact of Wasserstein ball radii").

A node's Wasserstein-ball radius η_k measures how far its model may be from the target's;
the smaller it is, the more relevant the node: λ_k = 1/η_k. In the recursive configuration the
most relevant nodes are coalesced last, so the final barycenter lies closest to them.
"""

from __future__ import annotations

import math
from typing import Sequence

from edgegan.errors import EdgeganError, require


def _radii(eta: Sequence[float], field: str = "eta") -> list[float]:
    """η as floats after checking there is at least one and every η_k is finite and > 0."""
    try:
        radii = [float(e) for e in eta]
    except (TypeError, ValueError):
        raise EdgeganError(field, f"must be a list of numbers, got {eta!r}",
                           "give one radius η_k > 0 per node") from None
    require(len(radii) > 0, field, "no relevance radii given", "give one radius η_k > 0 per node")
    for k, e in enumerate(radii):
        require(math.isfinite(e) and e > 0, f"{field}[{k}]", f"must be a finite number > 0, got {eta[k]}",
                "a radius is a distance: smaller means more relevant")
    return radii


def relevance_weights(eta: Sequence[float], field: str = "eta") -> list[float]:
    """λ_k = 1/η_k for every node (not normalised); seed 000 §5. ``field`` names η in errors."""
    return [1.0 / e for e in _radii(eta, field)]


def coalescence_order(eta: Sequence[float]) -> list[int]:
    """Node indices from least relevant (largest η) to most relevant (smallest η).

    Ties keep the input order, so equal radii coalesce nodes 0, 1, …, K−1 (seed 000 §5).
    """
    radii = _radii(eta)
    return sorted(range(len(radii)), key=lambda k: -radii[k])
