"""What every edgegan model shares: constructor arguments kept for checkpoints, and a
registry so a checkpoint alone rebuilds its model (``model_spec`` / ``build_from_spec``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgegan.errors import EdgeganError

MODEL_REGISTRY: dict[str, type["EdgeganModule"]] = {}


class EdgeganModule(nn.Module):
    """Base class: subclasses call ``self._remember(locals())`` first in ``__init__``."""

    model_args: dict[str, Any]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        MODEL_REGISTRY[cls.__name__] = cls

    def _remember(self, args: dict[str, Any]) -> None:
        self.model_args = {k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in args.items() if k not in ("self", "__class__")}


class Generator(EdgeganModule):
    """A generator G(z[, y]) with a standard-normal latent of size ``latent_dim``."""

    latent_dim: int
    num_classes: int = 0

    def sample_latent(self, n: int, device: torch.device | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        dev = device or next(self.parameters()).device
        return torch.randn(n, self.latent_dim, device=dev, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples without tracking gradients (labels for conditional models)."""
        z = self.sample_latent(n, generator=generator)
        return self(z, labels) if self.num_classes else self(z)


class ProjectionCritic(EdgeganModule):
    """A critic ψ(x[, y]) = w·h(x) + b [+ ⟨embed(y), h(x)⟩] over features h (Miyato & Koyama 2018).

    Subclasses set ``self.out`` (Linear(feat, 1)), ``self.proj`` (Embedding or None) and
    implement ``features``.
    """

    out: nn.Linear
    proj: nn.Embedding | None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, feat)
        s = self.out(h).squeeze(1)
        if self.proj is not None:
            s = s + (self.proj(y) * h).sum(1)
        return s  # (B,)


def model_spec(model: EdgeganModule) -> dict[str, Any]:
    """``{"cls": name, "args": constructor kwargs}`` — enough to rebuild the model."""
    return {"cls": type(model).__name__, "args": dict(model.model_args)}


def build_from_spec(spec: dict[str, Any]) -> EdgeganModule:
    """Rebuild a model from :func:`model_spec` output (weights not included)."""
    cls = MODEL_REGISTRY.get(spec.get("cls", ""))
    if cls is None:
        raise EdgeganError("model.cls", f"unknown model class {spec.get('cls')!r}",
                           "known: " + ", ".join(sorted(MODEL_REGISTRY)))
    return cls(**spec["args"])


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    """True when both state dicts have the same keys and shapes."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
