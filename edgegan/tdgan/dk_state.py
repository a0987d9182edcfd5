"""One node's discriminator state as one packed row (seed 003, Alg. 1 lines 3–8: D_k and its
optimiser live on the edge for as long as the node takes part).

A row is a flat uint8 tensor of fixed size per config and data shape (:class:`DkLayout`):
float32 [D_k's parameters…, buffers…, Adam step per parameter, first moments…, second
moments…], then the node's RNG state and the number of requests it served (int64). Rows are
the only storage of D_k state: the simulator's hosts keep thousands of them in one block, an
edge process keeps one per node it hosts, and :class:`~edgegan.tdgan.edge.TDGANEdge` is a view
of one. :class:`DkInit` is the one way a node's D_k is initialised under its seed, and
:meth:`Slab.adam` the one update rule.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from edgegan.nn.factory import build_gan
from edgegan.tdgan.config import TDGANConfig

#: Adam's ε (torch.optim.Adam's default, which seed 003 keeps); unit: the moments' unit.
ADAM_EPS = 1e-8


def node_seed(seed: int, node_id: str) -> int:
    """A per-node seed that does not depend on Python's hash randomisation."""
    return (int(seed) * 1_000_003 + zlib.crc32(node_id.encode())) % (2**63)


@dataclass
class RowViews:
    """Views of a block of K rows (no copies): weights (parameters then buffers, each (K, numel)),
    Adam steps (K, P), first and second moments (each (K, numel)), RNG states (K, n_rng) and
    requests served (K, 8) as bytes."""

    weights: list[torch.Tensor]
    steps: torch.Tensor
    first: list[torch.Tensor]
    second: list[torch.Tensor]
    rng: torch.Tensor
    served: torch.Tensor


class DkLayout:
    """Where each part of a node's D_k state sits in its row (see the module docstring)."""

    def __init__(self, D: nn.Module) -> None:
        params, buffers = dict(D.named_parameters()), dict(D.named_buffers())
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.shapes = [tuple(t.shape) for t in (*params.values(), *buffers.values())]
        self.n_weights = len(self.shapes)
        numels = [math.prod(s) for s in self.shapes]
        self.sizes = numels + [len(params)] + numels[:len(params)] * 2
        self.n_float = 4 * sum(self.sizes)
        self.n_params = sum(numels[:len(params)])
        self.n_rng = torch.Generator().get_state().numel()
        self.nbytes = self.n_float + self.n_rng + 8

    def views(self, block: torch.Tensor) -> RowViews:
        """The parts of ``block`` (K, nbytes) uint8."""
        P, n = len(self.names), self.n_weights
        parts = list(block[:, :self.n_float].view(torch.float32).split(self.sizes, dim=1))
        return RowViews(parts[:n], parts[n], parts[n + 1:n + 1 + P], parts[n + 1 + P:],
                        block[:, self.n_float:self.n_float + self.n_rng], block[:, self.n_float + self.n_rng:])

    def flat(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views (K, #params) float32 of ``block``'s parameters, first and second moments."""
        f = block[:, :self.n_float].view(torch.float32)
        a = sum(self.sizes[:self.n_weights]) + len(self.names)
        n = self.n_params
        return f[:, :n], f[:, a:a + n], f[:, a + n:a + 2 * n]

    def weights_bytes(self) -> int:
        """Bytes at the start of a row that hold D_k's parameters and buffers."""
        return 4 * sum(self.sizes[:self.n_weights])

    def served(self, block: torch.Tensor) -> torch.Tensor:
        """Requests served per row (K,) int64 (a copy)."""
        return self.views(block).served.clone().view(torch.int64).flatten()


class DkInit:
    """D_k under a seed exactly as ``build_gan(cfg.arch, …)`` draws it there (G's parameters first,
    then D's): one (G, D) pair whose modules are reset in place, in module order, per seed."""

    def __init__(self, cfg: TDGANConfig, image_shape: tuple[int, ...], num_classes: int) -> None:
        self.G, self.D = build_gan(cfg.arch, image_shape, cfg.latent_dim, num_classes, cfg.width)
        self.D.requires_grad_(False)
        self.layout = DkLayout(self.D)
        self._zeros = torch.zeros(sum(self.layout.sizes[self.layout.n_weights:]))

    def weights(self, seed: int) -> list[torch.Tensor]:
        """D_k's parameters then buffers, flattened, as drawn under ``seed`` (the CPU generator only;
        the global RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            for m in (*self.G.modules(), *self.D.modules()):
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
        return [w.detach().flatten().clone() for w in (*self.D.parameters(), *self.D.buffers())]

    def row(self, seed: int, rng_seed: int) -> torch.Tensor:
        """A new node's row: D_k drawn under ``seed``, Adam at step 0 with zero moments (which Adam
        treats exactly like no state), the RNG seeded with ``rng_seed``, no request served."""
        rng = torch.Generator().manual_seed(rng_seed).get_state()
        floats = torch.cat([*self.weights(seed), self._zeros])
        return torch.cat([floats.view(torch.uint8), rng, torch.zeros(8, dtype=torch.uint8)])


#: Row stride of a :class:`Slab` in float32 and the unit :func:`shape_free` pads to: an elementwise
#: kernel then runs whole SIMD blocks (also when split over up to 8 threads), so no element falls into
#: its scalar tail loop, whose exp / pow round differently from the vector body. Unit: elements.
LANE = 256


def lanes(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`LANE`."""
    return -(-n // LANE) * LANE


def shape_free(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """Elementwise ``fn`` of ``t``, computed on a zero-padded contiguous copy :func:`lanes` long: an
    element's value does not depend on the size of ``t``, i.e. on how many nodes share the pass."""
    n = t.numel()
    flat = t.new_zeros(lanes(n))
    flat[:n] = t.flatten()
    return fn(flat)[:n].view(t.shape)


class Slab:
    """K rows' D_k parameters ``w`` and Adam moments ``m``, ``v`` as float32 (K, lanes(#params))
    buffers on the pass's device (zero-padded columns), with the Adam steps (K, P): the form a
    feedback pass reads, updates (:meth:`adam`) and writes back (:meth:`put`)."""

    def __init__(self, layout: DkLayout, block: torch.Tensor, rows: torch.Tensor | None, device: torch.device) -> None:
        self.layout, n = layout, layout.n_params
        params, first, second = layout.flat(block)
        self.steps = layout.views(block).steps
        if rows is not None:
            params, first, second, self.steps = (t.index_select(0, rows) for t in (params, first, second, self.steps))
        else:
            self.steps = self.steps.clone()
        self.w, self.m, self.v = (torch.zeros(len(t), lanes(n), device=device) for t in (params, first, second))
        for buf, t in ((self.w, params), (self.m, first), (self.v, second)):
            buf[:, :n] = t

    def named(self) -> dict[str, torch.Tensor]:
        """D_k's parameters as name → (K, *shape) views of ``w`` (the row's order, as :meth:`DkLayout.views`)."""
        L, P = self.layout, len(self.layout.names)
        parts = self.w[:, :L.n_params].split(L.sizes[:P], dim=1)
        return {name: t.view(len(self.w), *shape) for name, t, shape in zip(L.names, parts, L.shapes)}

    def adam(self, grads: Sequence[torch.Tensor], lr: float, betas: tuple[float, float], rows: slice = slice(None),
             plus: Sequence[torch.Tensor] = ()) -> None:
        """One Adam step (Kingma & Ba 2015; torch.optim.Adam's single-tensor form) of ``rows`` in place
        (the row layout keeps a step count per parameter, as torch.optim does; all step together): with t = steps + 1,
            m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²,
            W ← W − m / ((√v / √(1 − β2^t) + ε) (1 − β1^t) / lr).
        ``grads``: per parameter name, (K', *shape) for the K' rows in ``rows``; g = ``grads`` + ``plus``
        (elementwise) where ``plus`` is given, in the same form."""
        b1, b2 = betas
        w, m, v = self.w[rows], self.m[rows], self.v[rows]
        g = torch.zeros_like(w)
        parts = g[:, :self.layout.n_params].split(self.layout.sizes[:len(grads)], dim=1)
        for part, t in zip(parts, grads):
            part.copy_(t.flatten(1))
        for part, t in zip(parts, plus):
            part.add_(t.flatten(1))
        self.steps[rows] += 1
        t = self.steps[rows, :1].to(w.device)  # (K', 1): every parameter of a D_k steps together
        c2 = shape_free(lambda u: (1 - b2 ** u).sqrt(), t)
        c1 = shape_free(lambda u: (1 - b1 ** u) / lr, t)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        w.addcdiv_(m, (v.sqrt() / c2).add_(ADAM_EPS) * c1, value=-1.0)

    def put(self, block: torch.Tensor, rows: torch.Tensor | None, k: int) -> None:
        """Write the first ``k`` rows back into ``block``'s rows ``rows`` (None: all, in order)."""
        n = self.layout.n_params
        parts = (*self.layout.flat(block), self.layout.views(block).steps)
        for part, src in zip(parts, (self.w[:k, :n].cpu(), self.m[:k, :n].cpu(), self.v[:k, :n].cpu(), self.steps[:k])):
            if rows is None:
                part.copy_(src)
            else:
                part.index_copy_(0, rows, src)
