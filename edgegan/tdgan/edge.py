"""The edge side of TDGAN (seed 003, Alg. 1 lines 3–8 and 15): a temporary local
discriminator D_k on private data that answers a fake batch with generator feedback only.

Per :class:`FeedbackRequest` (fakes x̂ = G(u, y), labels y):
  1. ``critic_steps`` updates of D_k on real x ∼ p_k(x | y) (same labels) versus x̂;
  2. reply ∂ loss_G / ∂ x̂ with loss_G = −(1/m) Σ_i log D_k(x̂_i, y_i) (logloss, non-saturating)
     or −(1/m) Σ_i D_k(x̂_i, y_i) (wgan-gp), evaluated with the updated D_k.
Alg. 1 draws separate fake batches for lines 3–8 and 10–15; one round trip serves both here.
Only the label histogram / n_k (:meth:`TDGANEdge.info`) and the reply ever leave this object.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.overrides import TorchFunctionMode

from edgegan.data.partition import label_histogram
from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, require
from edgegan.gan.losses import critic_loss, generator_loss
from edgegan.gan.train import adam
from edgegan.nn.factory import build_gan
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo


def node_seed(seed: int, node_id: str) -> int:
    """A per-node seed that does not depend on Python's hash randomisation."""
    return (int(seed) * 1_000_003 + zlib.crc32(node_id.encode())) % (2**63)


def d_loss_logloss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−E log D(x, y) − E log(1 − D(x̂, y)) with D = sigmoid(logit) (seed 003 Alg. 1 line 8)."""
    s_real, s_fake = D(real, y), D(fake.detach(), y)
    return (F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real))
            + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))


def g_loss_logloss(D: nn.Module, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−E log D(x̂, y): the non-saturating form of seed 003's E log(1 − D(x̂, y))."""
    s = D(fake, y)
    return F.binary_cross_entropy_with_logits(s, torch.ones_like(s))


def fresh_discriminator(cfg: TDGANConfig, data: TensorData, node_id: str) -> nn.Module:
    """D_k as ``build_gan(cfg.arch, …)[1]`` initialised under the node's seed (:func:`node_seed`);
    seeds only the CPU generator (what ``build_gan`` draws from), the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(node_seed(cfg.seed, node_id))
        return build_gan(cfg.arch, data.image_shape, cfg.latent_dim, data.num_classes, cfg.width)[1]


class _InitRecorder(TorchFunctionMode):
    """Records the in-place tensor calls (``uniform_``, ``normal_``, ``kaiming_uniform_``, ``fill_`` …)
    made while a model is built: replayed on that model's own tensors after seeding the CPU generator,
    they redo its initialisation without building modules again."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


class _SeededInit:
    """``fresh_discriminator`` for many node seeds: ``build_gan`` once under a recorder, then per seed
    only the recorded initialisation calls (G's then D's, as ``build_gan`` draws them) on that one
    model. Used only where it reproduces ``fresh_discriminator`` bit for bit (checked on two seeds)."""

    def __init__(self, cfg: TDGANConfig, data: TensorData) -> None:
        self.cfg, self.data = cfg, data
        rec = _InitRecorder()
        with torch.random.fork_rng(devices=[]), rec:
            self.D = build_gan(cfg.arch, data.image_shape, cfg.latent_dim, data.num_classes, cfg.width)[1]
        self.calls = rec.calls
        self.exact = all(torch.equal(a, b) for node_id in ("a", "b")
                         for a, b in zip(self._flat(node_id), _flat(fresh_discriminator(cfg, data, node_id))))

    def _flat(self, node_id: str) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(node_seed(self.cfg.seed, node_id))
            for func, args, kwargs in self.calls:
                func(*args, **kwargs)
        return _flat(self.D)

    def flat(self, node_id: str) -> list[torch.Tensor]:
        """D_k's parameters then buffers, flattened, as ``fresh_discriminator(cfg, data, node_id)`` has them."""
        return self._flat(node_id) if self.exact else _flat(fresh_discriminator(self.cfg, self.data, node_id))


def _flat(D: nn.Module) -> list[torch.Tensor]:
    return [w.detach().flatten() for w in (*D.parameters(), *D.buffers())]


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
    require(bool(torch.isfinite(fake).all()), "fake", f"{who} got non-finite values")
    require(isinstance(y, torch.Tensor) and y.dtype == torch.int64 and tuple(y.shape) == (fake.shape[0],),
            "labels", f"{who} needs int64 labels of shape ({fake.shape[0]},), got "
            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    unknown = sorted(set(y.tolist()) - set(pools))
    require(not unknown, "labels", f"{who} has no samples of class(es) {unknown}",
            f"draw labels from its histogram (classes {sorted(pools)})")


class TDGANEdge:
    """Edge node k: private data, a local discriminator D_k(x, y) and its optimizer.

    Parameters
    ----------
    node_id : the node's id (non-empty).
    data : this node's private labelled images (N, C, H, W) in [-1, 1].
    discriminator : a conditional critic D(x, y) -> (B,); default ``build_gan(cfg.arch, ...)[1]``
        initialised from a seed derived from ``cfg.seed`` and ``node_id``.
    cfg : shared :class:`TDGANConfig`.
    """

    def __init__(self, node_id: str, data: TensorData, discriminator: nn.Module | None = None,
                 cfg: TDGANConfig | None = None) -> None:
        require(bool(node_id), "node_id", "empty", "give every node a non-empty id")
        require(len(data) > 0, "data", f"node '{node_id}' has no samples", "give every node at least one sample")
        self.cfg = cfg or TDGANConfig()
        self.cfg.validate("tdgan")
        if discriminator is None:
            discriminator = fresh_discriminator(self.cfg, data, node_id)
        require(getattr(discriminator, "num_classes", data.num_classes) == data.num_classes, "discriminator",
                f"has {getattr(discriminator, 'num_classes', None)} classes, data has {data.num_classes}",
                "build D with num_classes = the data set's class count")
        self.D = discriminator
        self._params = list(self.D.parameters())  # the same objects after D.to(device)
        self._has_buffers = next(self.D.buffers(), None) is not None
        self.opt = adam(self._params, self.cfg)
        self._rng = torch.Generator()
        self._bind(node_id, data)

    def _bind(self, node_id: str, data: TensorData) -> None:
        self.node_id = node_id
        self._data = data
        self._hist = label_histogram(data.y, data.num_classes)
        self._by_class = class_pools(data)
        self._rng.manual_seed(node_seed(self.cfg.seed, node_id))
        self.requests_served = 0

    def info(self) -> NodeInfo:
        """What this node discloses on joining: n_k and its label histogram."""
        return NodeInfo(self.node_id, len(self._data), tuple(int(c) for c in self._hist))

    def _check(self, req: FeedbackRequest) -> None:
        check_request(self.node_id, self._data.image_shape, self._by_class, req)

    def _real_like(self, y: torch.Tensor) -> torch.Tensor:
        return real_like(self._data.x, self._by_class, y, self._rng)

    def feedback(self, req: FeedbackRequest) -> FeedbackReply:
        """Update D_k on real versus ``req.fake``; reply ∂ loss_G / ∂ fake (float32, fake's shape)."""
        self._check(req)
        dev = next(self.D.parameters()).device
        y_cpu = req.labels.cpu()
        y = y_cpu.to(dev)
        fake = req.fake.detach().to(dev)
        stats: dict[str, float] = {}
        for _ in range(self.cfg.critic_steps):
            real = self._real_like(y_cpu).to(dev)
            if self.cfg.loss == "logloss":
                d_loss = d_loss_logloss(self.D, real, fake, y)
            else:
                d_loss = critic_loss(self.D, real, fake, self.cfg.gp_weight, y)
            self.opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt.step()
        with torch.no_grad():
            s_real, s_fake = self.D(real, y), self.D(fake, y)
        stats["d_loss"] = float(d_loss.detach())
        stats["d_real"] = float(s_real.mean())
        stats["d_fake"] = float(s_fake.mean())
        x = fake.clone().requires_grad_(True)
        g_loss = g_loss_logloss(self.D, x, y) if self.cfg.loss == "logloss" else generator_loss(self.D, x, y)
        (grad,) = torch.autograd.grad(g_loss, x)
        self.D.zero_grad(set_to_none=True)
        stats["g_loss"] = float(g_loss.detach())
        self.requests_served += 1
        return FeedbackReply(self.node_id, req.step, grad.detach().to(req.fake.device, torch.float32).contiguous(),
                             stats)

    def _weights(self) -> list[torch.Tensor]:
        """D_k's parameters, then its buffers (looked up again: ``D.to`` replaces buffer tensors)."""
        return [*self._params, *self.D.buffers()] if self._has_buffers else self._params

    def pack(self) -> torch.Tensor:
        """D_k, its Adam state and the node's RNG as one flat uint8 tensor of fixed size per config:
        float32 [parameters, buffers, Adam steps, first moments, second moments], then the RNG state
        and ``requests_served`` (int64). A fresh optimizer packs as step 0 with zero moments, which
        Adam treats exactly like no state."""
        params = self._params
        state = [self.opt.state.get(p, {}) for p in params]
        floats = torch.cat([
            *(w.detach().flatten().float().cpu() for w in self._weights()),
            torch.tensor([float(st.get("step", 0.0)) for st in state]),
            *(st[k].flatten().cpu() if k in st else torch.zeros(p.numel())
              for k in ("exp_avg", "exp_avg_sq") for p, st in zip(params, state))])
        served = torch.tensor([self.requests_served], dtype=torch.int64)
        return torch.cat([floats.view(torch.uint8), self._rng.get_state(), served.view(torch.uint8)])

    def unpack(self, packed: torch.Tensor) -> None:
        """Load what :meth:`pack` wrote (the same node's; same config)."""
        params, weights = self._params, self._weights()
        n_rng = self._rng.get_state().numel()
        sizes = [w.numel() for w in weights] + [len(params)] + [p.numel() for p in params] * 2
        n_float = 4 * sum(sizes)
        require(packed.dtype == torch.uint8 and packed.numel() == n_float + n_rng + 8, "state",
                f"node '{self.node_id}': packed state has {packed.numel()} bytes, this D_k needs "
                f"{n_float + n_rng + 8}", "load a state saved with the same tdgan.arch / width")
        dev = params[0].device
        parts = packed[:n_float].view(torch.float32).to(dev, copy=True).split(sizes)  # one copy, then views
        with torch.no_grad():
            for w, v in zip(weights, parts):
                w.copy_(v.view_as(w))
        k = len(weights)
        steps, first, second = parts[k].cpu(), parts[k + 1:k + 1 + len(params)], parts[k + 1 + len(params):]
        self.opt.state.clear()
        for i, p in enumerate(params):
            self.opt.state[p] = {"step": steps[i], "exp_avg": first[i].view_as(p), "exp_avg_sq": second[i].view_as(p)}
        self._rng.set_state(packed[n_float:n_float + n_rng].clone())
        self.requests_served = int(packed[n_float + n_rng:].view(torch.int64))

    def state_dict(self) -> dict[str, Any]:
        """The node's id and :meth:`pack`: enough to park and resume a virtual node."""
        return {"node_id": self.node_id, "packed": self.pack()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("node_id") != self.node_id:
            raise EdgeganError("node_id", f"state of '{state.get('node_id')}' loaded into '{self.node_id}'",
                               "load each node's own state")
        self.unpack(state["packed"])


def _feedback_stacked(D: nn.Module, opt: torch.optim.Optimizer, W: dict[str, torch.Tensor], m: dict[str, torch.Tensor],
                      v: dict[str, torch.Tensor], step: torch.Tensor, reals: list[torch.Tensor], fake: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, list[list[float]]]:
    """The vectorised node step of :meth:`PackedEdges.feedback` on K stacked D_k (``W``: name → (K, …)), their
    Adam moments ``m``/``v`` and step counts ``step`` (K, P), updated in place: per critic step in
    ``reals`` one Adam update of each D_k on −log D_k(x, y) − log(1 − D_k(x̂_k, y)) (torch's
    single-tensor Adam with each node's own step count), then the replies ∂(−log D_k(x̂_k, y))/∂x̂_k
    (K, B, C, H, W) and per node [d_loss, d_real, d_fake, g_loss]. ``D`` gives the architecture,
    ``opt`` the Adam hyper-parameters."""
    dev = fake.device
    names = list(W)
    group = opt.param_groups[0]
    lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]

    def d_loss(w: dict[str, torch.Tensor], real: torch.Tensor, x: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return d_loss_logloss(lambda a, b: functional_call(D, w, (a, b)), real, x, lab)

    def g_loss(x: torch.Tensor, w: dict[str, torch.Tensor], lab: torch.Tensor) -> torch.Tensor:
        return g_loss_logloss(lambda a, b: functional_call(D, w, (a, b)), x, lab)

    for real in reals:
        grads, loss = vmap(grad_and_value(d_loss))(W, real, fake, y)
        step += 1
        for i, n in enumerate(names):
            t = step[:, i].to(dev).view((-1,) + (1,) * (W[n].dim() - 1))
            m[n].lerp_(grads[n], 1 - b1)
            v[n].mul_(b2).addcmul_(grads[n], grads[n], value=1 - b2)
            denom = (v[n].sqrt() / (1 - b2 ** t).sqrt()).add_(eps)
            W[n].addcdiv_(m[n], denom * ((1 - b1 ** t) / lr), value=-1.0)
    with torch.no_grad():
        score = vmap(lambda w, a, b: functional_call(D, w, (a, b)))
        d_real, d_fake = score(W, reals[-1], y).mean(1), score(W, fake, y).mean(1)  # (K,)
    feedback, g = vmap(grad_and_value(g_loss))(fake, W, y)                      # (K, B, C, H, W), (K,)
    return feedback.detach(), torch.stack([loss.detach(), d_real, d_fake, g.detach()], 1).tolist()


STATS = ("d_loss", "d_real", "d_fake", "g_loss")


class PackedEdges:
    """Many virtual TDGAN edges of one config and data shape held as rows of packed state (the
    :meth:`TDGANEdge.pack` layout: D_k, Adam steps and moments, RNG, requests served), not as live
    objects: :meth:`fresh` is a new node's row (D_k under its seed, Adam at step 0, RNG seeded), and
    :meth:`feedback` answers a block of rows' requests in one vectorised pass (``torch.func.vmap`` over
    the stacked D_k: :meth:`TDGANEdge.feedback`'s maths per node, equal to float tolerance, and a
    node's result bit for bit the same whatever nodes share its pass) and updates the rows in place.
    A pool keeps its nodes this way so that an activation costs no model, optimizer or file per node.

    ``proto`` (any node of the data set) fixes the layout and serves the per-node path where the
    pass cannot stack (wgan-gp, D_k with buffers, mixed batch sizes)."""

    def __init__(self, cfg: TDGANConfig, proto_id: str, proto_data: TensorData, device: str | torch.device = "cpu") -> None:
        self.proto = TDGANEdge(proto_id, proto_data, cfg=cfg)
        self.proto.D.to(device)
        self.cfg, self.device = self.proto.cfg, torch.device(device)
        weights = self.proto._weights()
        self._names = [n for n, _ in self.proto.D.named_parameters()]
        self._shapes = [tuple(w.shape) for w in weights]
        P = len(self.proto._params)
        self._sizes = [w.numel() for w in weights] + [P] + [p.numel() for p in self.proto._params] * 2
        self.n_float = 4 * sum(self._sizes)
        self.n_rng = self.proto._rng.get_state().numel()
        self.nbytes = self.n_float + self.n_rng + 8
        self._zeros = torch.zeros(sum(self._sizes[len(weights):]))
        self._init = _SeededInit(self.cfg, proto_data)

    def fresh(self, node_id: str, data: TensorData) -> torch.Tensor:
        """Node ``node_id``'s initial row: equal, byte for byte, to ``TDGANEdge(node_id, data, cfg=cfg).pack()``
        (D_k depends on the data only through its image shape and class count, the same for every node)."""
        require(data.image_shape == self.proto._data.image_shape and data.num_classes == self.proto._data.num_classes,
                "data", f"node '{node_id}' does not fit this pool's D_k", "host nodes of one data set per worker")
        rng = torch.Generator().manual_seed(node_seed(self.cfg.seed, node_id)).get_state()
        floats = torch.cat([*self._init.flat(node_id), self._zeros])
        return torch.cat([floats.view(torch.uint8), rng, torch.zeros(8, dtype=torch.uint8)])

    def _rows(self, block: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Views of ``block`` (K, nbytes): float32 parts (weights…, steps, first moments…, second
        moments…) and the RNG states (K, n_rng)."""
        floats = block[:, :self.n_float].view(torch.float32)
        return list(floats.split(self._sizes, dim=1)), block[:, self.n_float:self.n_float + self.n_rng]

    def _check(self, nodes: Sequence[tuple[str, TensorData, dict[int, torch.Tensor]]],
               requests: Sequence[FeedbackRequest], labels: list[torch.Tensor]) -> None:
        """:func:`check_request` for every node, as whole-group tensor checks (each node's own check, for
        its one-line error, only where a group check fails)."""
        r0, C = requests[0], self.proto._data.num_classes
        ok = (r0.fake.dtype == torch.float32 and tuple(r0.fake.shape[1:]) == self.proto._data.image_shape
              and all(r.node_id == k and r.labels.dtype == torch.int64 and r.labels.shape == r0.labels.shape
                      for (k, _, _), r in zip(nodes, requests))
              and r0.labels.shape == r0.fake.shape[:1] and len(r0.labels) >= 1)
        if ok:
            held = torch.zeros(len(nodes), C + 1, dtype=torch.bool)  # column C: labels out of range
            for k, (_, _, pools) in enumerate(nodes):
                held[k, list(pools)] = True
            y = torch.stack(labels)
            ok = (bool(torch.isfinite(torch.stack([r.fake for r in requests])).all())
                  and bool(held.gather(1, torch.where((y >= 0) & (y < C), y, C)).all()))
        if not ok:
            for (node_id, data, pools), r in zip(nodes, requests):
                check_request(node_id, data.image_shape, pools, r)

    def feedback(self, block: torch.Tensor, nodes: Sequence[tuple[str, TensorData, dict[int, torch.Tensor]]],
                 requests: Sequence[FeedbackRequest]) -> list[FeedbackReply]:
        """Answer ``requests[k]`` as node ``nodes[k]`` = (id, private data, :func:`class_pools`) whose
        state is row k of ``block`` (K, nbytes) uint8, updated in place."""
        require(block.shape == (len(nodes), self.nbytes) and len(nodes) == len(requests), "requests",
                f"{len(requests)} requests for {len(nodes)} nodes and {tuple(block.shape)} state rows")
        e = self.proto
        shape = requests[0].fake.shape
        if self.cfg.loss != "logloss" or e._has_buffers or any(r.fake.shape != shape for r in requests):
            replies = []
            for k, ((node_id, data, _), r) in enumerate(zip(nodes, requests)):  # per node, through the proto edge
                e._bind(node_id, data)
                e.unpack(block[k])
                replies.append(e.feedback(r))
                block[k] = e.pack()
            return replies
        K, P, dev = len(nodes), len(self._names), self.device
        labels = [r.labels.cpu() for r in requests]
        self._check(nodes, requests, labels)
        parts, rngs = self._rows(block)
        draws: list[list[torch.Tensor]] = []
        gen = torch.Generator()
        for k, ((_, data, pools), lab) in enumerate(zip(nodes, labels)):  # each node's own RNG, as K calls draw
            gen.set_state(rngs[k].clone())
            draws.append([real_like(data.x, pools, lab, gen) for _ in range(self.cfg.critic_steps)])
            rngs[k] = gen.get_state()
        reals = [torch.stack([d[s] for d in draws]).to(dev) for s in range(self.cfg.critic_steps)]
        y = torch.stack(labels).to(dev)
        fake = torch.stack([r.fake.detach() for r in requests]).to(dev)

        def stacked(part: int, i: int) -> torch.Tensor:  # contiguous (K, *shape of parameter i)
            return parts[part].reshape((K,) + self._shapes[i]).to(dev, copy=True, memory_format=torch.contiguous_format)

        W = {n: stacked(i, i) for i, n in enumerate(self._names)}
        m = {n: stacked(P + 1 + i, i) for i, n in enumerate(self._names)}
        v = {n: stacked(2 * P + 1 + i, i) for i, n in enumerate(self._names)}
        step = parts[P].clone()
        feedback, stats = _feedback_stacked(e.D, e.opt, W, m, v, step, reals, fake, y)
        for i, n in enumerate(self._names):
            parts[i].copy_(W[n].flatten(1))
            parts[P + 1 + i].copy_(m[n].flatten(1))
            parts[2 * P + 1 + i].copy_(v[n].flatten(1))
        parts[P].copy_(step)
        served = block[:, self.n_float + self.n_rng:].clone().view(torch.int64)
        block[:, self.n_float + self.n_rng:] = (served + 1).view(torch.uint8)
        feedback = feedback.to(requests[0].fake.device, torch.float32)
        return [FeedbackReply(node_id, r.step, feedback[k], dict(zip(STATS, stats[k])))
                for k, ((node_id, _, _), r) in enumerate(zip(nodes, requests))]
