"""Generators and critics (MLP, DCGAN-style, conditional variants)."""

from edgegan.nn.base import (
    MODEL_REGISTRY,
    EdgeganModule,
    Generator,
    build_from_spec,
    model_spec,
    same_architecture,
)
from edgegan.nn.dcgan import DCGANCritic, DCGANGenerator
from edgegan.nn.factory import ARCHS, build_gan
from edgegan.nn.mlp import MLPCritic, MLPGenerator

__all__ = [
    "ARCHS", "DCGANCritic", "DCGANGenerator", "EdgeganModule", "Generator", "MLPCritic",
    "MLPGenerator", "MODEL_REGISTRY", "build_from_spec", "build_gan", "model_spec",
    "same_architecture",
]
