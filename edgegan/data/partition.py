"""Partitioners that split a labelled data set over nodes, and a node's label histogram."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, require


def label_histogram(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts per class, (num_classes,) int64."""
    return torch.bincount(y.long(), minlength=num_classes)[:num_classes]


def _check_nonempty(parts: list[torch.Tensor], field: str) -> None:
    for k, p in enumerate(parts):
        if p.numel() == 0:
            raise EdgeganError(f"{field}[{k}]", "this partition leaves node empty",
                               "give it classes/samples that exist, or fewer nodes")


def partition_by_classes(data: TensorData, classes: Sequence[Sequence[int]],
                         samples_per_node: Sequence[int | None] | None = None,
                         seed: int = 0, disjoint: bool = False) -> list[TensorData]:
    """Node k gets samples of ``classes[k]`` (optionally at most ``samples_per_node[k]``).

    With ``disjoint=True`` a sample goes to at most one node even when class lists overlap
    (shared classes are split evenly among the nodes that list them).
    """
    present = set(torch.unique(data.y).tolist())
    rng = np.random.default_rng(seed)
    owners: dict[int, list[int]] = {}
    for k, cl in enumerate(classes):
        for c in cl:
            if c not in present:
                raise EdgeganError(f"classes[{k}]", f"class {c} is not in data set '{data.name}'",
                                   f"use classes from {sorted(present)}")
            owners.setdefault(int(c), []).append(k)
    idx_per_node: list[list[int]] = [[] for _ in classes]
    for c, ks in owners.items():
        idx = np.flatnonzero(data.y.numpy() == c)
        rng.shuffle(idx)
        if disjoint:
            for j, chunk in enumerate(np.array_split(idx, len(ks))):
                idx_per_node[ks[j]].extend(chunk.tolist())
        else:
            for k in ks:
                idx_per_node[k].extend(idx.tolist())
    parts = []
    for k, idx in enumerate(idx_per_node):
        idx = np.array(idx, dtype=np.int64)
        rng.shuffle(idx)
        cap = None if samples_per_node is None else samples_per_node[k]
        if cap is not None:
            require(cap > 0, f"samples_per_node[{k}]", f"must be > 0, got {cap}")
            idx = idx[:cap]
        parts.append(torch.from_numpy(idx))
    _check_nonempty(parts, "classes")
    return [data.subset(p, f"{data.name}/node{k}") for k, p in enumerate(parts)]


def partition_dirichlet(data: TensorData, num_nodes: int, alpha: float, seed: int = 0,
                        min_samples: int = 1) -> list[TensorData]:
    """Per class, split its samples over nodes with proportions ~ Dirichlet(α·1)."""
    require(num_nodes >= 1, "num_nodes", f"must be >= 1, got {num_nodes}")
    require(alpha > 0, "alpha", f"must be > 0, got {alpha}", "typical values 0.1..10")
    rng = np.random.default_rng(seed)
    y = data.y.numpy()
    for _ in range(100):
        buckets: list[list[int]] = [[] for _ in range(num_nodes)]
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(alpha * np.ones(num_nodes))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                buckets[k].extend(chunk.tolist())
        if min(len(b) for b in buckets) >= min_samples:
            break
    parts = [torch.tensor(sorted(b), dtype=torch.long) for b in buckets]
    _check_nonempty(parts, "num_nodes")
    return [data.subset(p, f"{data.name}/node{k}") for k, p in enumerate(parts)]


def partition_by_count(data: TensorData, counts: Sequence[int], seed: int = 0) -> list[TensorData]:
    """Node k gets ``counts[k]`` random samples, disjoint across nodes."""
    for k, c in enumerate(counts):
        require(c > 0, f"counts[{k}]", f"must be > 0, got {c}", "every node needs a sample")
    total = int(sum(counts))
    require(total <= len(data), "counts", f"ask for {total} samples but '{data.name}' has {len(data)}",
            "lower the counts")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(data)))
    parts, start = [], 0
    for c in counts:
        parts.append(perm[start:start + c])
        start += c
    return [data.subset(p, f"{data.name}/node{k}") for k, p in enumerate(parts)]
