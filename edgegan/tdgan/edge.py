"""The edge side of TDGAN (seed 003, Alg. 1 lines 3–8 and 15): a temporary local
discriminator D_k on private data that answers a fake batch with generator feedback only.

Per :class:`FeedbackRequest` (fakes x̂ = G(u, y), labels y):
  1. ``critic_steps`` updates of D_k on real x ∼ p_k(x | y) (same labels) versus x̂;
  2. reply ∂ loss_G / ∂ x̂ with loss_G = −(1/m) Σ_i log D_k(x̂_i, y_i) (logloss, non-saturating)
     or −(1/m) Σ_i D_k(x̂_i, y_i) (wgan-gp), evaluated with the updated D_k.
Alg. 1 draws separate fake batches for lines 3–8 and 10–15; one round trip serves both here.
Only the label histogram / n_k (:meth:`TDGANEdge.info`) and the reply ever leave this object.

A node's D_k state is a packed row (:mod:`edgegan.tdgan.dk_state`); :class:`PackedEdges`
answers a block of rows in one pass (:mod:`edgegan.tdgan.dk_pass`) and :class:`TDGANEdge` is a
view of one row. With ``tdgan.lookahead`` a node's next update is begun before its request
(:meth:`PackedEdges.look_ahead`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from edgegan.data.partition import label_histogram
from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, require
from edgegan.finite import all_finite
from edgegan.nn.mlp import MLPCritic
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.dk_pass import RealHalf, autograd_pass, logloss_pass, lookahead_pass, real_half, stacked_critic
from edgegan.tdgan.dk_state import DkInit, Slab, node_seed
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo

__all__ = ["Ahead", "PackedEdges", "TDGANEdge", "check_request", "class_pools", "node_seed", "real_like"]


def class_pools(data: TensorData) -> dict[int, torch.Tensor]:
    """Indices of each class present in ``data`` (p_k(x | y) is uniform over them)."""
    hist = label_histogram(data.y, data.num_classes)
    return {c: torch.nonzero(data.y == c).flatten() for c in range(data.num_classes) if hist[c] > 0}


def real_like(x: torch.Tensor, pools: dict[int, torch.Tensor], y: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Real images x_i ∼ p_k(x | y_i), one per requested label (with replacement, drawn from ``rng``)."""
    labels = y.tolist()
    idx = [0] * len(labels)
    for c in sorted(set(labels)):  # per class in ascending order, positions in order
        where = [i for i, v in enumerate(labels) if v == c]
        pool = pools[c]
        for i, j in zip(where, pool[torch.randint(len(pool), (len(where),), generator=rng)].tolist()):
            idx[i] = j
    return x[torch.tensor(idx, dtype=torch.long)]


def check_request(node_id: str, image_shape: tuple[int, ...], pools: dict[int, torch.Tensor],
                  req: FeedbackRequest) -> None:
    """One-line error unless ``req`` is a float32 (B, *image_shape) finite fake batch for ``node_id``
    with int64 labels of classes the node holds (``pools``)."""
    who = f"node '{node_id}'"
    require(req.node_id == node_id, "node_id", f"request for '{req.node_id}' reached {who}", "route requests by node id")
    fake, y = req.fake, req.labels
    require(isinstance(fake, torch.Tensor) and fake.dtype == torch.float32, "fake",
            f"{who} needs a float32 tensor, got {getattr(fake, 'dtype', type(fake).__name__)}")
    require(fake.dim() == 4 and tuple(fake.shape[1:]) == image_shape and fake.shape[0] >= 1, "fake",
            f"{who} got shape {tuple(fake.shape)}", f"send (B>=1, {', '.join(map(str, image_shape))})")
    require(all_finite(fake), "fake", f"{who} got non-finite values")
    require(isinstance(y, torch.Tensor) and y.dtype == torch.int64 and tuple(y.shape) == (fake.shape[0],),
            "labels", f"{who} needs int64 labels of shape ({fake.shape[0]},), got "
            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    unknown = sorted(set(y.tolist()) - set(pools))
    require(not unknown, "labels", f"{who} has no samples of class(es) {unknown}",
            f"draw labels from its histogram (classes {sorted(pools)})")


#: Statistics of a reply, in the order the vectorised pass computes them.
STATS = ("d_loss", "d_real", "d_fake", "g_loss")
#: Clipped feedback lands this far under the cloud's bound, so its recomputed norm never exceeds it.
CLIP_MARGIN = 0.999


def clip_feedback(g: torch.Tensor, bound: float) -> torch.Tensor:
    """Per-sample L2 clip of feedback (K, B, …): a sample whose norm is above ``CLIP_MARGIN`` ×
    ``bound`` (the cloud's refusal threshold, ``tdgan.max_feedback_norm``) is scaled to that norm,
    as in DP-SGD's per-sample clipping; every other sample keeps its exact bytes."""
    n = g.flatten(2).norm(dim=2)
    limit = bound * CLIP_MARGIN
    over = n > limit
    if not bool(over.any()):
        return g
    scale = torch.where(over, limit / n, torch.ones_like(n))
    return g * scale.view(*scale.shape, *(1,) * (g.dim() - 2))


#: Fewest rows one vectorised pass computes (a lone row is passed twice; see ``PackedEdges._answer``).
MIN_PASS_ROWS = 2
#: A hosted node as the feedback pass needs it: id, private data, :func:`class_pools` of the data.
Node = tuple[str, TensorData, dict[int, torch.Tensor]]


@dataclass
class Ahead:
    """A node's next D_k update begun before its request (``tdgan.lookahead``): the labels it is for,
    the real batches drawn for them, the node's RNG state after the draws, the requests served when
    begun (which D_k it belongs to), the first update's :class:`~edgegan.tdgan.dk_pass.RealHalf`, and
    the :class:`Slab` of the nodes begun together, of which this node is row ``pos``."""

    labels: torch.Tensor
    reals: list[torch.Tensor]
    rng: torch.Tensor
    served: int
    half: RealHalf
    slab: Slab
    pos: int


def _begun_slab(begun: Sequence[Ahead | None], K: int) -> Slab | None:
    """The :class:`Slab` of a pass's rows (``begun``: their :class:`Ahead` s, padded as the pass is)
    if :meth:`PackedEdges.look_ahead` began exactly these K rows together, in this order."""
    first = begun[0]
    if first is None or len(first.slab.w) != len(begun):
        return None
    same = all(a is not None and a.slab is first.slab for a in begun)
    return first.slab if same and [a.pos for a in begun[:K]] == list(range(K)) else None  # type: ignore[union-attr]


def _servable(y: Any, pools: dict[int, torch.Tensor]) -> bool:
    return (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1 and len(y) >= 1
            and set(y.tolist()) <= set(pools))


class PackedEdges:
    """Many TDGAN edges of one config and data shape as rows of packed D_k state
    (:class:`~edgegan.tdgan.dk_state.DkLayout`): :meth:`fresh` is a new node's row and
    :meth:`feedback` answers a block of rows' requests, updating the rows in place. Nodes with the
    same batch shape are answered in one vectorised pass (logloss, D_k without buffers), others
    node by node; either way a node's reply and row are bit for bit the same whatever nodes share
    its call. The simulator's hosts, edge processes and :class:`TDGANEdge` all use it.

    ``data`` (any node's) fixes the image shape and class count; ``device`` is where the passes run
    (rows stay on the CPU)."""

    def __init__(self, cfg: TDGANConfig, data: TensorData, device: str | torch.device = "cpu") -> None:
        cfg.validate("tdgan")
        self.cfg, self.device = cfg, torch.device(device)
        self.image_shape, self.num_classes = data.image_shape, data.num_classes
        self.init = DkInit(cfg, data.image_shape, data.num_classes)
        self.layout = self.init.layout
        self.nbytes, self.n_float = self.layout.nbytes, self.layout.n_float
        self.vectorised = cfg.loss == "logloss" and not self.layout.buffer_names
        self.score = stacked_critic(self.init.D)
        self.min_rows = 1 if isinstance(self.init.D, MLPCritic) else MIN_PASS_ROWS
        self.begun = 0  # of the last feedback()'s updates, how many had been begun ahead (look_ahead)
        self.discarded = 0  # of the last feedback()'s look-aheads, how many were stale (other labels, D_k moved)

    def fresh(self, node_id: str, data: TensorData, d_from: str | None = None) -> torch.Tensor:
        """Node ``node_id``'s initial row: D_k as ``build_gan`` draws it under the seed of node
        ``d_from`` (default: ``node_id`` itself), Adam at step 0, the node's RNG seeded."""
        require(data.image_shape == self.image_shape and data.num_classes == self.num_classes,
                "data", f"node '{node_id}' does not fit this pool's D_k", "host nodes of one data set per worker")
        return self.init.row(node_seed(self.cfg.seed, d_from or node_id), node_seed(self.cfg.seed, node_id))

    def discriminator(self, row: torch.Tensor) -> nn.Module:
        """A copy of D_k as a module, with the weights of ``row`` (for evaluation and tests)."""
        D = copy.deepcopy(self.init.D)
        weights = self.layout.views(row.view(1, -1)).weights
        with torch.no_grad():
            for t, w in zip((*D.parameters(), *D.buffers()), weights):
                t.copy_(w.view_as(t))
        return D

    def _check(self, nodes: Sequence[Node], requests: Sequence[FeedbackRequest], labels: list[torch.Tensor]) -> None:
        """:func:`check_request` for every node, as whole-group tensor checks (each node's own check,
        for its one-line error, only where a group check fails)."""
        C = self.num_classes
        ok = (all(r.fake.dtype == torch.float32 and tuple(r.fake.shape[1:]) == self.image_shape
                  and r.node_id == k and r.labels.dtype == torch.int64 and r.labels.shape == r.fake.shape[:1]
                  and len(r.labels) >= 1 for (k, _, _), r in zip(nodes, requests)))
        if ok:
            held = torch.zeros(len(nodes), C + 1, dtype=torch.bool)  # column C: labels out of range
            for k, (_, _, pools) in enumerate(nodes):
                held[k, list(pools)] = True
            ok = all(all_finite(r.fake) for r in requests) and all(
                bool(held[k, torch.where((y >= 0) & (y < C), y, C)].all()) for k, y in enumerate(labels))
        if not ok:
            for (node_id, data, pools), r in zip(nodes, requests):
                check_request(node_id, data.image_shape, pools, r)

    def _draw(self, nodes: Sequence[Node], labels: list[torch.Tensor], rng: torch.Tensor,
              ahead: Sequence[Ahead | None] = ()) -> tuple[list[list[torch.Tensor]], list[int]]:
        """Per node, from its own RNG (row state): ``critic_steps`` real batches x ∼ p_k(x | y), and
        for wgan-gp the seed of its gradient penalty's interpolation draws (0 otherwise); a node with
        an :class:`Ahead` (``ahead[k]``) takes the batches it drew and the RNG state after them."""
        draws, seeds, gen = [], [], torch.Generator()
        for k, ((_, data, pools), lab) in enumerate(zip(nodes, labels)):
            a = ahead[k] if ahead else None
            if a is not None:
                draws.append(a.reals)
                seeds.append(0)
                rng[k] = a.rng
                continue
            gen.set_state(rng[k].clone())
            draws.append([real_like(data.x, pools, lab, gen) for _ in range(self.cfg.critic_steps)])
            seeds.append(int(torch.randint(2**62, (1,), generator=gen)) if self.cfg.loss == "wgan-gp" else 0)
            rng[k] = gen.get_state()
        return draws, seeds

    def _padded(self, idx: list[int]) -> list[int]:
        """``idx`` as a vectorised pass takes it: with ``cfg.exact_grouping`` a lone row is passed
        twice to a ``vmap`` pass (:data:`MIN_PASS_ROWS`): a batched convolution over one row sums in
        another order than over two or more, and a node's numbers must not depend on its company."""
        pad = self.vectorised and self.cfg.exact_grouping and len(idx) < self.min_rows
        return idx + idx[:1] * (self.min_rows - len(idx)) if pad else idx

    def _first_half(self, slab: Slab, real: torch.Tensor, y: torch.Tensor,
                    ahead: Sequence[Ahead | None]) -> RealHalf | None:
        """The first update's real half of a pass's rows: as begun ahead where ``ahead`` has it, the
        others' now (rows of W taken as a pass of their own; None when no row has one)."""
        miss = [j for j, a in enumerate(ahead) if a is None]
        if len(miss) == len(ahead):
            return None
        now = None
        if miss:
            m = torch.tensor(self._padded(miss), device=real.device)
            now = real_half(self.score, {n: t.index_select(0, m) for n, t in slab.named().items()},
                            real.index_select(0, m), y.index_select(0, m))
        return RealHalf.cat([a.half if a is not None else now.row(miss.index(j))  # type: ignore[union-attr]
                             for j, a in enumerate(ahead)])

    def _answer(self, block: torch.Tensor, idx: list[int], draws: list[list[torch.Tensor]], seeds: list[int],
                requests: Sequence[FeedbackRequest], labels: list[torch.Tensor],
                ahead: Sequence[Ahead | None]) -> tuple[torch.Tensor, list[list[float]]]:
        """Answer rows ``idx`` (one batch shape) of ``block`` in one pass (rows :meth:`_padded`) and
        write their D_k and Adam state back; ``ahead[k]``: row k's update begun early, if any."""
        K = len(idx)
        idx = self._padded(idx)
        L, dev, rows = self.layout, self.device, torch.tensor(idx)
        whole = idx == list(range(len(block)))
        begun = [ahead[k] for k in idx]
        slab = _begun_slab(begun, K) or Slab(L, block, None if whole else rows, dev)
        buffer_views = L.views(block).weights[len(L.names):]
        buffers = {n: t.index_select(0, rows).reshape((len(idx),) + L.shapes[len(L.names) + i]).to(dev)
                   for i, (n, t) in enumerate(zip(L.buffer_names, buffer_views))}
        reals = [torch.stack([draws[k][s] for k in idx]).to(dev) for s in range(self.cfg.critic_steps)]
        y = torch.stack([labels[k] for k in idx]).to(dev)
        fake = torch.stack([requests[k].fake.detach() for k in idx]).to(dev)
        if self.vectorised and self.cfg.lookahead:
            first = self._first_half(slab, reals[0], y, begun)
            feedback, stats = lookahead_pass(self.score, self.cfg, slab, reals, fake, y, first)
        elif self.vectorised:
            feedback, stats = logloss_pass(self.score, self.cfg, slab, reals, fake, y)
        else:
            feedback, stats = autograd_pass(self.init.D, self.cfg, slab, buffers, reals, fake, y, seeds)
        slab.put(block, None if whole else rows[:K], K)
        for part, t in zip(buffer_views, buffers.values()):
            part.index_copy_(0, rows[:K], t[:K].flatten(1).cpu())
        return feedback[:K].detach(), stats[:K]

    def look_ahead(self, block: torch.Tensor, nodes: Sequence[Node], labels: Sequence[Any]) -> list[Ahead | None]:
        """``tdgan.lookahead``: begin the next update of nodes ``nodes[k]`` (rows of ``block``, left as
        they are) for their next request's ``labels[k]``: real batches from a copy of each node's RNG
        and the first update's real half with D_k as it is. None for a node this cannot serve
        (labels it holds no samples of: its request will be refused) and everywhere when the pass
        is not the vectorised logloss one. :meth:`feedback` takes what is still valid then."""
        out: list[Ahead | None] = [None] * len(nodes)
        good = [k for k, (nd, y) in enumerate(zip(nodes, labels)) if _servable(y, nd[2])]
        if not (self.cfg.lookahead and self.vectorised and good):
            return out
        served, rng = self.layout.served(block), self.layout.views(block).rng[good]
        draws, _ = self._draw([nodes[k] for k in good], [labels[k] for k in good], rng)
        by_len: dict[int, list[int]] = {}
        for j, k in enumerate(good):
            by_len.setdefault(len(labels[k]), []).append(j)
        for js in by_len.values():
            idx = self._padded(js)
            rows = torch.tensor([good[j] for j in idx])
            real = torch.stack([draws[j][0] for j in idx]).to(self.device)
            y = torch.stack([labels[good[j]] for j in idx]).to(self.device)
            slab = Slab(self.layout, block, rows, self.device)
            half = real_half(self.score, slab.named(), real, y)
            for i, j in enumerate(js):
                k = good[j]
                out[k] = Ahead(labels[k].clone(), draws[j], rng[j].clone(), int(served[k]), half.row(i), slab, i)
        return out

    def feedback(self, block: torch.Tensor, nodes: Sequence[Node], requests: Sequence[FeedbackRequest],
                 ahead: Sequence[Ahead | None] = ()) -> list[FeedbackReply]:
        """Answer ``requests[k]`` as node ``nodes[k]`` = (id, private data, :func:`class_pools`) whose
        state is row k of ``block`` (K, nbytes) uint8, updated in place (nothing changes on a bad request).
        ``ahead[k]`` (:meth:`look_ahead`) is used where it was begun for these labels and this D_k:
        the same numbers as without it, sooner."""
        require(block.shape == (len(nodes), self.nbytes) and len(nodes) == len(requests), "requests",
                f"{len(requests)} requests for {len(nodes)} nodes and {tuple(block.shape)} state rows")
        labels = [r.labels.cpu() for r in requests]
        self._check(nodes, requests, labels)
        views = self.layout.views(block)
        served = self.layout.served(block)
        given = list(ahead or [None] * len(nodes))
        ahead = [a if a is not None and a.served == int(served[k]) and torch.equal(a.labels, labels[k]) else None
                 for k, a in enumerate(given)]
        draws, seeds = self._draw(nodes, labels, views.rng, ahead)
        self.begun = sum(a is not None for a in ahead)
        self.discarded = sum(a is not None for a in given) - self.begun
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, r in enumerate(requests):
            by_shape.setdefault(tuple(r.fake.shape), []).append(k)
        replies: list[FeedbackReply | None] = [None] * len(nodes)
        for idx in by_shape.values():
            feedback, stats = self._answer(block, idx, draws, [seeds[k] for k in idx], requests, labels, ahead)
            if self.cfg.clip_feedback:
                feedback = clip_feedback(feedback, self.cfg.max_feedback_norm)
            feedback = feedback.to(requests[idx[0]].fake.device, torch.float32)
            for j, k in enumerate(idx):
                replies[k] = FeedbackReply(nodes[k][0], requests[k].step, feedback[j], dict(zip(STATS, stats[j])))
        views.served.copy_((views.served.clone().view(torch.int64) + 1).view(torch.uint8))
        return replies  # type: ignore[return-value]


class TDGANEdge:
    """Edge node k: private data and a local discriminator D_k(x, y) with its optimiser, held as one
    packed row (a view over :class:`PackedEdges`: the same maths and numbers as a simulated node).

    Parameters
    ----------
    node_id : the node's id (non-empty).
    data : this node's private labelled images (N, C, H, W) in [-1, 1].
    cfg : shared :class:`TDGANConfig`.
    d_from : the node id under whose seed D_k is drawn (default: ``node_id``).
    device : where D_k's passes run.
    """

    def __init__(self, node_id: str, data: TensorData, cfg: TDGANConfig | None = None,
                 d_from: str | None = None, device: str | torch.device = "cpu") -> None:
        require(bool(node_id), "node_id", "empty", "give every node a non-empty id")
        require(len(data) > 0, "data", f"node '{node_id}' has no samples", "give every node at least one sample")
        self.cfg = cfg or TDGANConfig()
        self.rows = PackedEdges(self.cfg, data, device)
        self.node_id, self.data, self.pools = node_id, data, class_pools(data)
        self.row = self.rows.fresh(node_id, data, d_from)
        self._ahead: Ahead | None = None

    def continue_from(self, other: TDGANEdge) -> None:
        """D_k becomes ``other``'s current D_k (weights and buffers); this node's Adam state, RNG and
        count of requests served stay its own."""
        require(other.row.numel() == self.row.numel(), "other", f"'{other.node_id}' has another D_k layout",
                "continue from an edge of the same tdgan.arch / width")
        n = self.rows.layout.weights_bytes()
        self.row[:n] = other.row[:n]
        self._ahead = None

    @property
    def requests_served(self) -> int:
        return int(self.rows.layout.served(self.row.view(1, -1))[0])

    def info(self) -> NodeInfo:
        """What this node discloses on joining: n_k and its label histogram."""
        return NodeInfo.of(self.node_id, self.data)

    def feedback(self, req: FeedbackRequest) -> FeedbackReply:
        """Update D_k on real versus ``req.fake``; reply ∂ loss_G / ∂ fake (float32, fake's shape)."""
        ahead, self._ahead = self._ahead, None
        return self.rows.feedback(self.row.view(1, -1), [(self.node_id, self.data, self.pools)], [req], [ahead])[0]

    def look_ahead(self, labels: torch.Tensor) -> None:
        """``tdgan.lookahead``: begin the update for the next request, whose labels are ``labels``
        (:meth:`PackedEdges.look_ahead`); :meth:`feedback` finishes it if they match."""
        self._ahead = self.rows.look_ahead(self.row.view(1, -1), [(self.node_id, self.data, self.pools)], [labels])[0]

    def discriminator(self) -> nn.Module:
        """A copy of the current D_k as a module."""
        return self.rows.discriminator(self.row)

    def pack(self) -> torch.Tensor:
        """The node's row (a copy): D_k, its Adam state, the RNG and requests served."""
        return self.row.clone()

    def unpack(self, packed: torch.Tensor) -> None:
        """Load what :meth:`pack` wrote (the same node's; same config)."""
        require(packed.dtype == torch.uint8 and packed.numel() == self.row.numel(), "state",
                f"node '{self.node_id}': packed state has {packed.numel()} bytes, this D_k needs "
                f"{self.row.numel()}", "load a state saved with the same tdgan.arch / width")
        self.row.copy_(packed.flatten())
        self._ahead = None

    def state_dict(self) -> dict[str, Any]:
        """The node's id and :meth:`pack`: enough to park and resume a node."""
        return {"node_id": self.node_id, "packed": self.pack()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("node_id") != self.node_id:
            raise EdgeganError("node_id", f"state of '{state.get('node_id')}' loaded into '{self.node_id}'",
                               "load each node's own state")
        self.unpack(state["packed"])
