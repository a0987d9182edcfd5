"""Stage II fast adaptation (seed 000 Alg. 2), full precision or with ternary weights."""

from edgegan.adapt.fast_adapt import FastAdaptResult, fast_adapt, tensor_sampler, train_critics
from edgegan.adapt.ternary import (
    TernaryConv2d,
    TernaryConvTranspose2d,
    TernaryLayer,
    TernaryLinear,
    fp32_nbytes,
    pack_ternary,
    ternarize,
    ternary_codes,
    ternary_layers,
    ternary_nbytes,
    ternary_scale,
    to_ternary,
    unpack_ternary,
)

__all__ = [
    "FastAdaptResult", "TernaryConv2d", "TernaryConvTranspose2d", "TernaryLayer", "TernaryLinear",
    "fast_adapt", "fp32_nbytes", "pack_ternary", "tensor_sampler", "ternarize", "ternary_codes",
    "ternary_layers", "ternary_nbytes", "ternary_scale", "to_ternary", "train_critics", "unpack_ternary",
]
