"""Ternary weights with learned thresholds (seed 000 eq. 8, Alg. 2; after He & Fan, CVPR 2019),
and a real 2-bit export.

    w' = S(Δ±) · Tern(w, Δ±),   Tern(w) = +1 if w > Δ+,  0 if Δ− ≤ w ≤ Δ+,  −1 if w < Δ−

Following He & Fan's truncated-Gaussian approximation, the layer's weights are modelled as
N(μ, σ²) (μ, σ fitted to the layer, held constant in the gradient) and the scale is the mean
magnitude of the kept weights under that model, a closed form in Δ±:

    S(Δ±) = [μ(P+ − P−) + σ(φ(a) + φ(b))] / (P+ + P−),
    a = (Δ+ − μ)/σ, b = (Δ− − μ)/σ, P+ = 1 − Φ(a), P− = Φ(b).

So the loss reaches the thresholds through S, and the full-precision weights through the
straight-through estimator ∂w'/∂w := I; one optimiser updates both (Alg. 2's step c). Layers
learn the thresholds as multiples of σ (Δ+ = t+σ, Δ− = −t−σ; see :class:`TernaryLayer`).
Alg. 2 updates thresholds by plain gradient steps in a separate pass; here they share the
weights' Adam step, as the issue's three-step iteration (ternarize, forward, update) asks.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgegan.checkpoint import MODEL_ARGS
from edgegan.errors import EdgeganError, require
from edgegan.nn import build_from_spec, model_spec

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
TWN_RATIO = 0.7  # initial Δ± = ±0.7·E|w| (Li & Liu's ternary-weight-network rule)
MAGIC = b"EGTERN1\n"


def _normal_pdf(t: float) -> float:
    return math.exp(-0.5 * t * t) * _INV_SQRT_2PI


def _normal_cdf(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2.0))


def _clamped(delta_pos: torch.Tensor, delta_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep Δ− ≤ 0 ≤ Δ+ so that every kept weight has the sign of its code."""
    return delta_pos.clamp_min(0.0), delta_neg.clamp_max(0.0)


def ternary_codes(weight: torch.Tensor, delta_pos: torch.Tensor, delta_neg: torch.Tensor) -> torch.Tensor:
    """Tern(w, Δ±) ∈ {−1, 0, +1} as int8, same shape as ``weight``."""
    dp, dn = _clamped(delta_pos.detach(), delta_neg.detach())
    w = weight.detach()
    return (w > dp).to(torch.int8) - (w < dn).to(torch.int8)


def _gaussian_fit(weight: torch.Tensor) -> tuple[float, float]:
    """(μ, σ) of the layer's weights, held constant in the gradient."""
    sigma, mu = torch.std_mean(weight.detach().double(), correction=0)
    return float(mu), max(float(sigma), 1e-8)


class _TernaryScale(torch.autograd.Function):
    """S(Δ±) for a N(μ, σ²) weight model, with its analytic gradient:

    ∂S/∂Δ+ = φ(a)(S − Δ+)/(σ(P+ + P−)),  ∂S/∂Δ− = −φ(b)(S + Δ−)/(σ(P+ + P−)).
    Scalar math in float64 (one autograd node instead of ~20 tiny tensor ops). Δ± are used
    clamped to Δ− ≤ 0 ≤ Δ+, with the boundary slope passed straight through.
    """

    @staticmethod
    def forward(ctx: Any, delta_pos: torch.Tensor, delta_neg: torch.Tensor, mu: float,
                sigma: float) -> torch.Tensor:
        dp, dn = max(float(delta_pos), 0.0), min(float(delta_neg), 0.0)
        a, b = (dp - mu) / sigma, (dn - mu) / sigma
        p_pos, p_neg = _normal_cdf(-a), _normal_cdf(b)
        kept = max(p_pos + p_neg, 1e-12)
        s = (mu * (p_pos - p_neg) + sigma * (_normal_pdf(a) + _normal_pdf(b))) / kept
        # at a clamped threshold the slope at the boundary passes straight through, so a
        # threshold pushed past 0 can come back instead of sticking there
        ctx.slopes = (_normal_pdf(a) * (s - dp) / (sigma * kept), -_normal_pdf(b) * (s + dn) / (sigma * kept))
        return delta_pos.new_tensor(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        g_pos, g_neg = ctx.slopes
        return grad * g_pos, grad * g_neg, None, None


def ternary_scale(weight: torch.Tensor, delta_pos: torch.Tensor, delta_neg: torch.Tensor) -> torch.Tensor:
    """S(Δ±): mean |w| beyond the thresholds under the layer's Gaussian fit; differentiable in Δ±."""
    return _TernaryScale.apply(delta_pos, delta_neg, *_gaussian_fit(weight))


def ternarize(weight: torch.Tensor, delta_pos: torch.Tensor, delta_neg: torch.Tensor) -> torch.Tensor:
    """w' = S(Δ±)·Tern(w, Δ±) (seed 000 eq. 8), straight-through in ``weight``.

    The value is exactly S·code (the added w − w.detach() is 0), so an export of (S, codes)
    rebuilds these weights bit for bit.
    """
    codes = ternary_codes(weight, delta_pos, delta_neg).to(weight.dtype)
    scale = ternary_scale(weight, delta_pos, delta_neg).to(weight.dtype)
    return scale * codes + (weight - weight.detach())


class TernaryLayer(nn.Module):
    """Mixin for a weight layer with learned thresholds.

    The learned parameters are t± ≥ 0 (``threshold_pos``, ``threshold_neg``) in units of the
    layer's weight std σ: Δ+ = t+·σ, Δ− = −t−·σ. With Adam's roughly constant step size this keeps
    a threshold's step relative to the weights it cuts (an absolute Δ moved by ~lr per step,
    i.e. by 2σ in 500 steps for σ ≈ 0.05, and sparsified the generator in our runs); S then
    scales with the weights and the loss reaches t± through S(Δ±).
    """

    weight: torch.Tensor

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)  # the weight layer's own constructor (MRO), then t±
        self.init_thresholds()

    def init_thresholds(self) -> None:
        _, sigma = _gaussian_fit(self.weight)
        t = TWN_RATIO * self.weight.detach().abs().mean() / sigma
        self.threshold_pos = nn.Parameter(t.clone())
        self.threshold_neg = nn.Parameter(t.clone())

    def _stats(self) -> tuple[float, float, torch.Tensor]:
        """(μ, σ, codes), recomputed only when the weight or a threshold changed (no gradient)."""
        w = self.weight
        key = (w.data_ptr(), w._version, self.threshold_pos._version, self.threshold_neg._version)
        if getattr(self, "_fit_key", None) != key:
            mu, sigma = _gaussian_fit(w)
            codes = ternary_codes(w, self.threshold_pos.detach() * sigma, -self.threshold_neg.detach() * sigma)
            self._fit, self._fit_key = (mu, sigma, codes.to(w.dtype)), key
        return self._fit

    @property
    def delta_pos(self) -> torch.Tensor:
        """Δ+ = t+·σ."""
        return self.threshold_pos * self._stats()[1]

    @property
    def delta_neg(self) -> torch.Tensor:
        """Δ− = −t−·σ."""
        return -self.threshold_neg * self._stats()[1]

    def ternary_weight(self) -> torch.Tensor:
        """S(Δ±)·Tern(w, Δ±) with the straight-through estimator (:func:`ternarize`)."""
        w = self.weight
        mu, sigma, codes = self._stats()
        scale = _TernaryScale.apply(self.threshold_pos * sigma, -self.threshold_neg * sigma, mu, sigma)
        return scale.to(w.dtype) * codes + (w - w.detach())

    def codes(self) -> torch.Tensor:
        """Tern(w, Δ±) as int8."""
        return self._stats()[2].to(torch.int8)

    def scale(self) -> torch.Tensor:
        """S(Δ±), the value the forward pass multiplies the codes by."""
        with torch.no_grad():
            mu, sigma, _ = self._stats()
            return _TernaryScale.apply(self.threshold_pos * sigma, -self.threshold_neg * sigma, mu,
                                       sigma).to(self.weight.dtype)

    @classmethod
    def from_float(cls, layer: nn.Module) -> "TernaryLayer":
        """A ternary copy of a full-precision layer (same weights; initial Δ± = ±0.7·E|w|)."""
        new = copy.deepcopy(layer)
        new.__class__ = cls
        new.init_thresholds()
        return new


class TernaryLinear(TernaryLayer, nn.Linear):
    """nn.Linear whose forward uses S·Tern(W) (seed 000 eq. 8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.ternary_weight(), self.bias)


class TernaryConv2d(TernaryLayer, nn.Conv2d):
    """nn.Conv2d whose forward uses S·Tern(W) (seed 000 eq. 8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.ternary_weight(), self.bias)


class TernaryConvTranspose2d(TernaryLayer, nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose forward uses S·Tern(W) (seed 000 eq. 8)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        pad = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                   self.dilation)
        return F.conv_transpose2d(x, self.ternary_weight(), self.bias, self.stride, self.padding, pad,
                                  self.groups, self.dilation)


_TERNARY_OF = {nn.Linear: TernaryLinear, nn.Conv2d: TernaryConv2d, nn.ConvTranspose2d: TernaryConvTranspose2d}


def to_ternary(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear / Conv2d / ConvTranspose2d made ternary.

    Biases, BatchNorm and Embedding stay full precision. The input is not modified; the copy
    keeps ``model_args`` so :func:`pack_ternary` can rebuild it.
    """
    out = copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            cls = _TERNARY_OF.get(type(child))
            if cls is not None:
                setattr(parent, name, cls.from_float(child))
            else:
                convert(child)

    cls = _TERNARY_OF.get(type(out))
    if cls is not None:
        return cls.from_float(out)
    convert(out)
    return out


def ternary_layers(model: nn.Module) -> dict[str, TernaryLayer]:
    """Name → ternary layer, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TernaryLayer)}


def fp32_nbytes(model: nn.Module) -> int:
    """Bytes of the model's full-precision state dict (float tensors at 4 bytes, thresholds excluded)."""
    total = 0
    for key, t in model.state_dict().items():
        if key.rsplit(".", 1)[-1] in ("threshold_pos", "threshold_neg"):
            continue
        total += t.numel() * (4 if torch.is_floating_point(t) else t.element_size())
    return total


def _pack_codes(codes: torch.Tensor) -> bytes:
    v = codes.flatten().cpu().numpy().astype(np.int16)
    v = np.where(v < 0, 2, v).astype(np.uint8)  # −1 → 2, 0 → 0, +1 → 1
    v = np.concatenate([v, np.zeros((-len(v)) % 4, np.uint8)]).reshape(-1, 4)
    return (v[:, 0] | (v[:, 1] << 2) | (v[:, 2] << 4) | (v[:, 3] << 6)).astype(np.uint8).tobytes()


def _unpack_codes(raw: bytes, n: int) -> torch.Tensor:
    b = np.frombuffer(raw, np.uint8)
    v = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)[:n]
    if (v == 3).any():
        raise EdgeganError("ternary", "packed codes hold the unused value 3", "the export is corrupt")
    return torch.from_numpy(np.where(v == 2, -1, v).astype(np.int8))


def pack_ternary(model: nn.Module) -> bytes:
    """2-bit export of a :func:`to_ternary` model.

    Layout: ``MAGIC``, u32 header length, JSON header (``model_args``, tensor list), then per tensor
    either S, Δ+, Δ− as float32 and the codes at 2 bits each (4 per byte), or the raw bytes of
    a full-precision tensor (biases, BatchNorm, embeddings) as float32 / int64.
    """
    layers = ternary_layers(model)
    require(len(layers) > 0, "model", "has no ternary layers", "convert it with to_ternary(model) first")
    skip = {f"{n}.{p}" if n else p for n in layers for p in ("weight", "threshold_pos", "threshold_neg")}
    entries, chunks = [], []
    for name, layer in layers.items():
        key = f"{name}.weight" if name else "weight"
        entries.append([key, "t", list(layer.weight.shape)])
        chunks.append(struct.pack("<3f", float(layer.scale()), float(layer.delta_pos.detach()),
                                  float(layer.delta_neg.detach())))
        chunks.append(_pack_codes(layer.codes()))
    for key, t in model.state_dict().items():
        if key in skip:
            continue
        if torch.is_floating_point(t):
            entries.append([key, "f", list(t.shape)])
            chunks.append(t.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes())
        else:
            entries.append([key, "i", list(t.shape)])
            chunks.append(t.detach().cpu().long().contiguous().numpy().astype("<i8").tobytes())
    header = json.dumps({MODEL_ARGS: model_spec(model), "tensors": entries}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def _corrupt(what: str) -> EdgeganError:
    return EdgeganError("ternary", f"not a valid edgegan ternary export ({what})", "re-export with pack_ternary")


def unpack_ternary(blob: bytes, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the full-precision model from :func:`pack_ternary` bytes.

    Ternary layers get weights S·code, bit-identical to the ternary model's forward weights,
    so the rebuilt model computes the same outputs. Corrupt or truncated bytes: one-line error.
    """
    if not isinstance(blob, (bytes, bytearray)) or blob[:len(MAGIC)] != MAGIC:
        raise _corrupt("bad magic")
    pos = len(MAGIC)
    if len(blob) < pos + 4:
        raise _corrupt("truncated header")
    (hlen,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    try:
        header = json.loads(bytes(blob[pos:pos + hlen]).decode())
        spec, entries = header[MODEL_ARGS], header["tensors"]
        model = build_from_spec(spec)
    except (ValueError, KeyError, TypeError):
        raise _corrupt("unreadable header") from None
    pos += hlen
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, kind, shape in entries:
        n = math.prod(shape)
        if kind == "t":
            size = 12 + (n + 3) // 4
        else:
            size = n * (4 if kind == "f" else 8)
        if pos + size > len(blob):
            raise _corrupt(f"truncated at '{key}'")
        raw = bytes(blob[pos:pos + size])
        pos += size
        if kind == "t":
            scale = torch.tensor(struct.unpack_from("<f", raw, 0)[0], dtype=torch.float32)
            new[key] = scale * _unpack_codes(raw[12:], n).to(torch.float32).reshape(shape)
        elif kind == "f":
            new[key] = torch.from_numpy(np.frombuffer(raw, "<f4").copy()).reshape(shape)
        else:
            new[key] = torch.from_numpy(np.frombuffer(raw, "<i8").copy()).reshape(shape)
    if pos != len(blob):
        raise _corrupt(f"{len(blob) - pos} trailing bytes")
    if new.keys() != state.keys() or any(new[k].shape != state[k].shape for k in state):
        raise _corrupt("tensors do not match the model spec")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in new.items()})
    return model.to(device)


def ternary_nbytes(model: nn.Module) -> int:
    """Size in bytes of :func:`pack_ternary`'s export of ``model``."""
    return len(pack_ternary(model))
