"""The cloud side of TDGAN (seed 003, eq. 1 and Alg. 1): one conditional generator G(u, y)
trained from the feedback of temporary edge discriminators plus a reminding loss.

    min_G  Σ_{k online} π_k · loss_k(G)  +  λ · E_{y∼s_{t−1}, u} ‖G_t(u, y) − G_{t−1}(u, y)‖²

π_k = n_k / Σ_{online} n. Edge k returns g_k = ∂ loss_k / ∂ x̂_k for its fake batch x̂_k, so the
digesting term is back-propagated through the surrogate Σ_k π_k ⟨x̂_k, g_k⟩ (same gradient in
θ_G). G_{t−1} is frozen and s_{t−1} (label counts of every node seen before) stored at each
membership change (join or leave). The latent u is N(0, I) here (the paper writes unif(0, 1)).

One step is batched: the K online nodes' (u_k, y_k) are concatenated into one forward of G and
the K feedback tensors into one backward, with each node's BatchNorm statistics taken over its
own minibatch only (:func:`per_node_batch_norm`), so the maths is the per-node loop's.
A step reports :class:`StepStats`: its scalars by name and each node's own statistics.
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.gan.train import adam
from edgegan.nn.base import Generator
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.messages import (
    FeedbackRejected,
    FeedbackReply,
    FeedbackRequest,
    NodeInfo,
    check_class_count,
    stat_mean,
    validate_feedback,
)

log = logging.getLogger("edgegan.tdgan")


@dataclass
class _Pending:
    request: FeedbackRequest
    fake: torch.Tensor  # G(u, y) with its graph, (B, C, H, W): rows ``rows`` of the step's batched forward
    pi: float
    rows: slice


#: The BatchNorm modules whose statistics :func:`per_node_batch_norm` takes per node.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d


def _grouped_batch_norm(bn: BatchNorm, groups: int, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm of ``x`` (groups·B, C, *S) with each group's own batch statistics:
    x̂ = (x − μ_g) / √(σ²_g + ε) · γ + β; running stats updated as by ``groups`` calls in a row."""
    b = x.shape[0] // groups
    xg = x.reshape(groups, b, *x.shape[1:])  # (K, B, C, *S)
    dims = [1, *range(3, xg.dim())]
    var, mean = torch.var_mean(xg, dims, correction=0, keepdim=True)  # (K, 1, C, 1...)
    out = (xg - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        view = (1, 1, -1) + (1,) * (xg.dim() - 3)
        out = out * bn.weight.view(view) + bn.bias.view(view)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            n = xg.numel() // (groups * xg.shape[2])
            mu, v = mean.flatten(1).to(bn.running_mean.dtype), var.flatten(1).to(bn.running_var.dtype) * (n / max(n - 1, 1))
            t = int(bn.num_batches_tracked)
            if bn.momentum is None:  # cumulative average over every batch so far
                bn.running_mean.mul_(t).add_(mu.sum(0)).div_(t + groups)
                bn.running_var.mul_(t).add_(v.sum(0)).div_(t + groups)
            else:  # r ← (1 − m)^K r + Σ_k m (1 − m)^{K−1−k} μ_k, the K updates of the per-node loop
                m = float(bn.momentum)
                w = m * (1 - m) ** torch.arange(groups - 1, -1, -1, dtype=mu.dtype, device=mu.device)
                bn.running_mean.mul_((1 - m) ** groups).add_(w @ mu)
                bn.running_var.mul_((1 - m) ** groups).add_(w @ v)
            bn.num_batches_tracked.add_(groups)
    return out.reshape(x.shape)


class GroupedBatchNorm(nn.Module):
    """Stands in for the BatchNorm ``bn`` (its parameters and buffers, not copies): normalises each
    of ``groups`` equal consecutive row blocks of its input with that block's own statistics."""

    def __init__(self, bn: BatchNorm, groups: int) -> None:
        super().__init__()
        self.bn = bn
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _grouped_batch_norm(self.bn, self.groups, x)


@contextmanager
def per_node_batch_norm(model: nn.Module, groups: int) -> Iterator[nn.Module]:
    """Inside the block every training-mode BatchNorm of ``model`` is swapped for a
    :class:`GroupedBatchNorm` over ``groups`` equal consecutive row blocks of its input (the
    modules are put back after the block); yields the model to call (``model`` itself, or its
    stand-in when ``model`` is a BatchNorm).

    TDGAN's generator normalises each node's minibatch of m labels on its own (seed 003 §4.1: G
    uses batch norm, Alg. 1 lines 4 and 11: one minibatch per node), so a node's fake batch must
    not depend on the other nodes' labels when the K minibatches share one forward. Per-node
    statistics keep exactly that maths (forward, backward and running statistics); standing /
    eval-mode statistics or a per-sample norm would change the model. Eval-mode BatchNorm is
    already per sample and is left as it is.
    """
    def grouped(m: nn.Module) -> bool:
        return isinstance(m, BATCH_NORMS) and (m.training or not m.track_running_stats)

    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if grouped(child)]
    for parent, name, bn in swapped:
        setattr(parent, name, GroupedBatchNorm(bn, groups))
    try:
        if isinstance(model, BATCH_NORMS) and grouped(model):
            yield GroupedBatchNorm(model, groups)
        else:
            yield model
    finally:
        for parent, name, bn in swapped:
            setattr(parent, name, bn)


def capped_shares(n: dict[str, int], cap: float) -> dict[str, float]:
    """π_k ∝ n_k with Σ π = 1 and π_k ≤ ``cap``: shares above the cap are clipped to it and the
    remaining mass is split ∝ n_k among the others (water-filling); uniform when K·cap < 1."""
    if len(n) * cap <= 1.0:
        return {k: 1.0 / len(n) for k in n}
    pi: dict[str, float] = {}
    while True:
        rest = {k: v for k, v in n.items() if k not in pi}
        mass, total = 1.0 - cap * len(pi), sum(rest.values())
        over = [k for k, v in rest.items() if mass * v / total > cap]
        if not over:
            return {**pi, **{k: mass * v / total for k, v in rest.items()}}
        pi.update({k: cap for k in over})


class StepStats(Mapping[str, float]):
    """What one generator step reports: its scalars by name (``step``, ``accepted``, ``rejected``,
    ``missing``, ``bytes_in``, ``g_stepped``; ``reminding_loss`` and ``digest_pi_mass`` when G stepped)
    and each accepted node's own statistics, ``per_node[node_id][kind]`` (``d_loss``, ``g_loss``)."""

    def __init__(self, scalars: dict[str, float], per_node: dict[str, dict[str, float]]) -> None:
        self.scalars = scalars
        self.per_node = per_node

    def __getitem__(self, name: str) -> float:
        return self.scalars[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scalars)

    def __len__(self) -> int:
        return len(self.scalars)

    def node_mean(self, kind: str) -> float | None:
        """Mean of statistic ``kind`` over the nodes that reported it (None when none did)."""
        return stat_mean(self.per_node.values(), kind)


class TDGANCloud:
    """Central conditional generator with membership, feedback validation and the TDGAN step.

    Parameters
    ----------
    generator : a conditional :class:`edgegan.nn.Generator` (``num_classes > 0``).
    cfg : shared :class:`TDGANConfig`; ``reminding_weight = 0`` gives sequential fine-tuning.
    """

    def __init__(self, generator: Generator, cfg: TDGANConfig | None = None) -> None:
        require(isinstance(generator, Generator) and generator.num_classes > 0, "generator",
                "TDGAN needs a conditional generator G(u, y)", "build it with num_classes > 0")
        self.cfg = cfg or TDGANConfig()
        self.cfg.validate("tdgan")
        self.G = generator
        self.num_classes = int(generator.num_classes)
        self.device = next(generator.parameters()).device
        self.opt = adam(self.G.parameters(), self.cfg)
        self._G_prev: Generator | None = None         # G_{t−1}, frozen at the last membership change
        self._prev_stale = False                      # membership changed since _G_prev was copied from G
        self.remind_hist: torch.Tensor | None = None  # s_{t−1}: label counts of nodes seen before
        self._online: dict[str, NodeInfo] = {}
        self._seen: dict[str, NodeInfo] = {}
        self._seen_hist = torch.zeros(self.num_classes, dtype=torch.float64)  # Σ label counts over _seen
        self._pending: dict[str, _Pending] = {}
        self._fake: torch.Tensor | None = None  # this step's batched G(u, y) with its graph
        self._ahead: dict[str, torch.Tensor] = {}  # tdgan.lookahead: each node's labels of the next step
        self.step = 0
        self.totals = {"rejected": 0, "accepted": 0, "bytes_in": 0, "bytes_out": 0, "membership_changes": 0}
        self._label_rng = torch.Generator().manual_seed(self.cfg.seed)
        self._latent_rng = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1)

    # ---------------------------------------------------------------- membership
    @property
    def online(self) -> list[str]:
        """Ids of the online nodes, in join order."""
        return list(self._online)

    @property
    def seen(self) -> list[str]:
        """Ids of every node that has ever joined."""
        return list(self._seen)

    @property
    def pi(self) -> dict[str, float]:
        """π_k = n_k / Σ_{online} n (seed 003 §3.3), capped at ``cfg.max_share`` (:func:`capped_shares`)."""
        return capped_shares({k: i.n_samples for k, i in self._online.items()}, self.cfg.max_share)

    @property
    def G_prev(self) -> Generator | None:
        """G_{t−1}: G as it was at the last membership change (None before the first)."""
        self._freeze_prev()
        return self._G_prev

    def _freeze_prev(self) -> None:
        """Copy G into G_{t−1} if membership changed since the last copy. G does not move between a
        change and this copy (only :meth:`make_requests` and :meth:`apply_feedback` move it, and
        both copy first), so a burst of joins and leaves costs one copy instead of one each."""
        if self._prev_stale and self._G_prev is not None:
            with torch.no_grad():
                for prev, now in zip([*self._G_prev.parameters(), *self._G_prev.buffers()],
                                     [*self.G.parameters(), *self.G.buffers()]):
                    prev.copy_(now)
            self._G_prev.train(self.G.training)
        self._prev_stale = False

    def _membership_changed(self) -> None:
        """Freeze G_{t−1} ← G (copied when next used: :meth:`_freeze_prev`) and s_{t−1} ← label counts
        of every node seen so far (O(classes): churn over thousands of nodes changes membership
        thousands of times per step)."""
        if self._G_prev is None:
            self._G_prev = copy.deepcopy(self.G).requires_grad_(False)
        else:
            self._prev_stale = True
        self.remind_hist = self._seen_hist.clone() if self._seen else None
        self.totals["membership_changes"] += 1

    def _see(self, info: NodeInfo) -> None:
        """Add (or update) ``info`` in the nodes seen and their label-count sum."""
        old = self._seen.get(info.node_id)
        if old is not None:
            self._seen_hist -= torch.tensor(old.label_histogram, dtype=torch.float64)
        self._seen_hist += torch.tensor(info.label_histogram, dtype=torch.float64)
        self._seen[info.node_id] = info

    def join(self, info: NodeInfo) -> None:
        """Node ``info.node_id`` comes online (first time or again)."""
        require(isinstance(info, NodeInfo), "info", f"expected NodeInfo, got {type(info).__name__}")
        require(info.node_id not in self._online, "node_id", f"node '{info.node_id}' is already online",
                "call leave() before joining again")
        check_class_count(info.node_id, info.label_histogram, self.num_classes)
        self._membership_changed()  # s_{t−1} holds the nodes seen *before* this join
        self._online[info.node_id] = info
        self._see(info)
        log.info("tdgan: node %s joined (n=%d), online %d", info.node_id, info.n_samples, len(self._online))

    def leave(self, node_id: str) -> None:
        """Node ``node_id`` goes offline; its pending request, if any, is dropped."""
        self._require_known(node_id)
        require(node_id in self._online, "node_id", f"node '{node_id}' is not online", "only online nodes can leave")
        del self._online[node_id]
        self._pending.pop(node_id, None)
        self._ahead.pop(node_id, None)
        self._membership_changed()
        log.info("tdgan: node %s left, online %d", node_id, len(self._online))

    def _require_known(self, node_id: str) -> None:
        if node_id not in self._seen:  # the message lists every seen node: built only on failure
            raise EdgeganError("node_id", f"unknown node '{node_id}'",
                               "known nodes: " + (", ".join(self._seen) or "none (join first)"))

    # ---------------------------------------------------------------- one step
    def _latent(self, n: int) -> torch.Tensor:
        return self.G.sample_latent(n, self.device, generator=self._latent_rng)

    def _labels(self, hist: torch.Tensor, n: int) -> torch.Tensor:
        return torch.multinomial(hist.double(), n, replacement=True, generator=self._label_rng)

    def make_requests(self, step: int | None = None) -> list[FeedbackRequest]:
        """One request per online node k: y_k ∼ g_k (its histogram), u_k ∼ N(0, I), x̂_k = G(u_k, y_k)
        sent detached. The K minibatches go through G as one forward (rows in join order, BatchNorm
        statistics per node: :func:`per_node_batch_norm`); the graph is kept for :meth:`apply_feedback`."""
        if step is not None:
            self.step = int(step)
        self._freeze_prev()  # before this forward moves G's BatchNorm statistics
        self._pending.clear()
        self._fake = None
        if not self._online:
            return []
        pis, b = self.pi, self.cfg.batch_size
        ids = list(self._online)
        # per node in join order, from the same two RNG streams as one G call per node would use;
        # with tdgan.lookahead the labels drawn a step ahead, then the next step's for every node
        hist = {k: torch.tensor(self._online[k].label_histogram) for k in ids}
        y = torch.cat([self._ahead.pop(k) if k in self._ahead else self._labels(hist[k], b) for k in ids]
                      ).to(self.device)
        if self.cfg.lookahead:
            self._ahead = {k: self._labels(hist[k], b) for k in ids}
        u = torch.cat([self._latent(b) for _ in ids])
        with per_node_batch_norm(self.G, len(ids)):
            self._fake = self.G(u, y)  # (K·B, C, H, W)
        sent = self._fake.detach().float()
        requests = []
        for i, node_id in enumerate(ids):
            rows = slice(i * b, (i + 1) * b)
            # clones: a view would carry (and pickle) the whole step's storage to every node
            req = FeedbackRequest(node_id, self.step, sent[rows].clone(), y[rows].clone(), self._ahead.get(node_id))
            self._pending[node_id] = _Pending(req, self._fake[rows], pis[node_id], rows)
            self.totals["bytes_out"] += req.nbytes()
            requests.append(req)
        return requests

    def reminding_loss(self) -> torch.Tensor:
        """E_{y∼s_{t−1}, u} ‖G(u, y) − G_{t−1}(u, y)‖² (squared L2 over the sample, mean over the batch)."""
        if self.G_prev is None or self.remind_hist is None:
            return torch.zeros((), device=self.device)
        y = self._labels(self.remind_hist, self.cfg.remind_batch_size).to(self.device)
        u = self._latent(len(y))
        with torch.no_grad():
            target = self.G_prev(u, y)
        return (self.G(u, y) - target).flatten(1).pow(2).sum(1).mean()

    def apply_feedback(self, replies: list[FeedbackReply],
                       on_reject: Callable[[str, FeedbackRejected], Any] | None = None) -> StepStats:
        """Validate replies against this step's requests and take one generator step.

        A reply that fails :func:`validate_feedback`, answers no pending request, or repeats one
        is skipped for that node, counted in ``stats['rejected']``, logged and passed to
        ``on_reject(node_id, error)`` (``error.reason`` is typed); it never touches G.
        With no accepted reply the generator does not step (``stats['g_stepped'] = 0``).
        Unknown node ids raise :class:`EdgeganError`.
        """
        self._freeze_prev()  # G_{t−1} as of the last membership change, before G steps
        accepted: list[tuple[_Pending, torch.Tensor]] = []
        rejected, bytes_in = 0, 0
        per_node: dict[str, dict[str, float]] = {}
        for reply in replies:
            require(isinstance(reply, FeedbackReply), "reply", f"expected FeedbackReply, got {type(reply).__name__}")
            self._require_known(reply.node_id)
            pending = self._pending.pop(reply.node_id, None)
            try:
                if pending is None:
                    raise FeedbackRejected("feedback.node_id", f"node '{reply.node_id}' has no pending request "
                                           f"(left, duplicate or stale reply)", reason=FailureReason.STALE)
                grad = validate_feedback(reply, pending.request, self.cfg.max_feedback_norm)
                bytes_in += reply.nbytes()
            except FeedbackRejected as e:
                rejected += 1
                log.warning("tdgan: rejected feedback at step %d: %s", self.step, e)
                if on_reject is not None:
                    on_reject(reply.node_id, e)
                continue
            accepted.append((pending, grad))
            per_node[reply.node_id] = {k: float(v) for k, v in reply.stats.items()}
        missing = len(self._pending)
        self._pending.clear()
        fake, self._fake = self._fake, None
        self.totals["rejected"] += rejected
        self.totals["accepted"] += len(accepted)
        self.totals["bytes_in"] += bytes_in
        stats = {"step": float(self.step), "rejected": float(rejected), "accepted": float(len(accepted)),
                 "missing": float(missing), "bytes_in": float(bytes_in), "g_stepped": 0.0}
        if accepted:
            # Σ_k π_k ⟨x̂_k, g_k⟩ as one product over the step's batch (rows of other nodes get 0)
            weighted = torch.zeros_like(fake)
            for p, g in accepted:
                weighted[p.rows] = p.pi * g.to(fake.device, fake.dtype)
            digest = (fake * weighted).sum()
            remind = self.reminding_loss()
            loss = digest + self.cfg.reminding_weight * remind
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            stats.update({"reminding_loss": float(remind.detach()), "g_stepped": 1.0,
                          "digest_pi_mass": math.fsum(p.pi for p, _ in accepted)})
        self.step += 1
        return StepStats(stats, per_node)

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Generator, frozen G_{t−1}, s_{t−1}, optimizer, step, membership, counters, RNGs."""
        return {
            "generator": self.G.state_dict(),
            "generator_prev": None if self.G_prev is None else self.G_prev.state_dict(),
            "remind_hist": self.remind_hist,
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "online": {k: i.to_dict() for k, i in self._online.items()},
            "seen": {k: i.to_dict() for k, i in self._seen.items()},
            "totals": dict(self.totals),
            "label_rng": self._label_rng.get_state(),
            "latent_rng": self._latent_rng.get_state(),
            "ahead": dict(self._ahead),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.G.load_state_dict(state["generator"])
            self._prev_stale = False
            if state["generator_prev"] is None:
                self._G_prev = None
            else:
                self._G_prev = copy.deepcopy(self.G).requires_grad_(False)
                self._G_prev.load_state_dict(state["generator_prev"])
            self.remind_hist = state["remind_hist"]
            self.opt.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self._seen, self._seen_hist = {}, torch.zeros(self.num_classes, dtype=torch.float64)
            for k, d in state["seen"].items():
                self._see(NodeInfo.from_dict(k, d))
            self._online = {k: NodeInfo.from_dict(k, d) for k, d in state["online"].items()}
            self.totals = dict(state["totals"])
            self._label_rng.set_state(state["label_rng"])
            self._latent_rng.set_state(state["latent_rng"])
            self._ahead = dict(state.get("ahead", {}))  # absent in checkpoints from before tdgan.lookahead
        except KeyError as e:
            raise EdgeganError("checkpoint", f"TDGAN cloud state lacks {e}", "use a checkpoint written by "
                               "TDGANCloud.state_dict()") from None
        self._pending.clear()
        self._fake = None
