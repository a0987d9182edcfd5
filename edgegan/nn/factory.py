"""Build a matching generator/critic pair by architecture name."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Sequence

from edgegan.errors import EdgeganError, require
from edgegan.nn.base import EdgeganModule, Generator
from edgegan.nn.dcgan import DCGANCritic, DCGANGenerator
from edgegan.nn.mlp import MLPCritic, MLPGenerator

ARCHS = ("mlp", "dcgan")


def arch_field(default: str = "mlp", what: str = "model family") -> Any:
    """The dataclass field every settings class declares its ``arch`` with (check it with :func:`check_arch`)."""
    return field(default=default, metadata={"unit": f"{what}: " + " or ".join(ARCHS)})


def check_arch(arch: str, name: str = "arch") -> None:
    """One-line :class:`EdgeganError` on field ``name`` unless ``arch`` is one of :data:`ARCHS`."""
    require(arch in ARCHS, name, f"unknown architecture {arch!r}", "choose one of " + ", ".join(ARCHS))


def build_gan(arch: str, shape: Sequence[int], latent_dim: int = 32, num_classes: int = 0,
              width: int | None = None) -> tuple[Generator, EdgeganModule]:
    """(G, D) for data of ``shape`` ((d,) vectors or (C, H, W) images).

    ``width`` is the hidden size (MLP) or base channel count (DCGAN).
    """
    shape = tuple(shape)
    is_image = len(shape) == 3
    if arch == "mlp":
        w = width or 256
        return (MLPGenerator(latent_dim, shape, w, 3, num_classes, tanh=is_image),
                MLPCritic(shape, w, 3, num_classes))
    if arch == "dcgan":
        if not is_image:
            raise EdgeganError("arch", "dcgan needs (C, H, W) images", "use arch: mlp for vectors")
        w = width or 64
        return DCGANGenerator(latent_dim, shape, w, num_classes), DCGANCritic(shape, w, num_classes)
    raise EdgeganError("arch", f"unknown architecture '{arch}'", "choose one of " + ", ".join(ARCHS))
