"""An in-memory labelled image set: ``x`` in [-1, 1] as (N, C, H, W) and integer ``y``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class TensorData:
    """Images ``x`` (N, C, H, W) scaled to [-1, 1], labels ``y`` (N,), and a name."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor | list[int], name: str | None = None) -> "TensorData":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData(name or self.name, self.x[idx], self.y[idx], self.num_classes)

    def sampler(self, batch_size: int, generator: torch.Generator | None = None):
        """A callable returning a random batch of images (with replacement)."""
        n = len(self)

        def sample(m: int = batch_size) -> torch.Tensor:
            idx = torch.randint(0, n, (m,), generator=generator)
            return self.x[idx]

        return sample


def save_partitions(path: str | Path, parts: dict[str, TensorData]) -> None:
    """Write each node's partition (node id → :class:`TensorData`) to one torch file, the
    ``--node-data`` of ``edgegan edge`` (tensors and plain values only: loads with ``weights_only``)."""
    torch.save({k: {"name": d.name, "x": d.x, "y": d.y, "num_classes": d.num_classes} for k, d in parts.items()},
               path)


def load_partitions(path: str | Path) -> dict[str, TensorData]:
    """The partitions :func:`save_partitions` wrote."""
    from edgegan.errors import EdgeganError

    try:
        table = torch.load(path, weights_only=True)
        return {str(k): TensorData(str(v["name"]), v["x"], v["y"], int(v["num_classes"])) for k, v in table.items()}
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise EdgeganError("node_data", f"'{path}' is not a partitions file ({type(e).__name__}: {e})",
                           "write it with edgegan.data.save_partitions") from None
