"""An in-memory labelled image set: ``x`` in [-1, 1] as (N, C, H, W) and integer ``y``."""

from __future__ import annotations

from dataclasses import dataclass

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
