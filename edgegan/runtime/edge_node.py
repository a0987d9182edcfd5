"""The edge role (DESIGN.md, Runtime): a node's private data and what it does with it, with no
transport inside. It answers :class:`~edgegan.tdgan.messages.FeedbackRequest` s with its TDGAN
local discriminator (seed 003), pre-trains and uploads (seed 000 Stage I) and adapts (Stage II);
``grpc_edge`` carries it over the network, ``inproc`` in the cloud's process."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, require
from edgegan.gan import WGANConfig, train_wgan_gp
from edgegan.monitor.metrics import Metrics
from edgegan.nn import build_gan
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import PackedEdges, TDGANEdge
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo


log = logging.getLogger("edgegan.edge")

#: Nice value of the thread that begins updates ahead (``tdgan.lookahead``): speculative work yields
#: the core to the reply on its way and, where cloud and edges share a machine, to the cloud's step.
AHEAD_NICE = 19


#: A node's feedback pass that took less than this the last time runs on the event loop's own
#: thread: a hand-off to a worker thread and back costs 0.1–1 ms on a shared VM, a digits pass
#: about 2 ms, and heartbeats then wait at most this long.
INLINE_PASS_S = 0.025


T = TypeVar("T")


async def timed_pass(fn: Callable[[], T], last_s: float, executor: ThreadPoolExecutor | None = None) -> tuple[T, float]:
    """``fn()`` on the event loop if the last pass took under :data:`INLINE_PASS_S`, else on
    ``executor`` (asyncio's default: None); its result and the seconds it took."""
    t0 = time.perf_counter()
    out = fn() if last_s < INLINE_PASS_S else await asyncio.get_running_loop().run_in_executor(executor, fn)
    return out, time.perf_counter() - t0


def _lower_priority() -> None:
    if sys.platform.startswith("linux"):  # there a thread id names the thread alone
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), AHEAD_NICE)
        except OSError:
            pass


def ahead_thread() -> ThreadPoolExecutor:
    """One worker thread at the lowest CPU priority (:data:`AHEAD_NICE`, Linux; elsewhere the default)."""
    return ThreadPoolExecutor(1, thread_name_prefix="edgegan-ahead", initializer=_lower_priority)


@dataclass
class AheadTally:
    """``tdgan.lookahead`` at work on an edge: D_k updates finished from a look-ahead (``begun``) and
    look-aheads thrown away (``discarded``: begun for other labels, or D_k moved since)."""

    begun: int = 0
    discarded: int = 0

    def add(self, rows: PackedEdges, metrics: Metrics) -> None:
        """Count ``rows``' last :meth:`PackedEdges.feedback` here and in ``metrics``."""
        self.begun += rows.begun
        self.discarded += rows.discarded
        metrics.begun_ahead.inc(rows.begun)
        metrics.discarded_ahead.inc(rows.discarded)


def record_feedback(m: Metrics, req: FeedbackRequest, reply: FeedbackReply) -> None:
    """An edge's metrics for one answered request: bytes both ways, the step, the last losses."""
    m.bytes_received.inc(req.nbytes())
    m.bytes_sent.inc(reply.nbytes())
    m.generator_step.set(req.step)
    for kind in ("d_loss", "g_loss"):
        if kind in reply.stats:
            m.loss.labels(kind).set(reply.stats[kind])


class EdgeNode:
    """The edge role: private data, TDGAN local discriminator, Stage I pre-training, Stage II adaptation.

    Nothing but :meth:`info` (n_k, label histogram), feedback tensors and uploaded models
    (Stage I) leaves the node; the data never does.
    """

    def __init__(self, node_id: str, data: TensorData, device: torch.device | None = None,
                 metrics: Metrics | None = None) -> None:
        require(bool(node_id), "node_id", "empty", "give every node a non-empty id")
        self.node_id = node_id
        self.data = data
        self.device = device or torch.device("cpu")
        self.metrics = metrics or Metrics()
        self._tdgan: TDGANEdge | None = None
        self._tdgan_cfg: TDGANConfig | None = None
        self._looking: asyncio.Future | None = None  # tdgan.lookahead: the next update, begun
        self._ahead_thread: ThreadPoolExecutor | None = None
        self.tally = AheadTally()
        self._pass_s = math.inf  # how long the last feedback pass took (INLINE_PASS_S)

    def info(self) -> NodeInfo:
        return NodeInfo.of(self.node_id, self.data)

    def configure_tdgan(self, cfg: TDGANConfig, image_shape: Sequence[int]) -> None:
        """Build D_k for the cloud's settings once; the same D_k serves every reconnection."""
        require(tuple(image_shape) == self.data.image_shape, "image_shape",
                f"the cloud generates {tuple(image_shape)}, node '{self.node_id}' holds {self.data.image_shape}",
                "use the cloud's data set")
        if self._tdgan is None:
            self._tdgan = TDGANEdge(self.node_id, self.data, cfg=cfg, device=self.device)
            self._tdgan_cfg = cfg
        elif self._tdgan_cfg != cfg:
            raise EdgeganError("tdgan", f"the cloud's TDGAN settings changed for node '{self.node_id}'",
                               "restart the edge to follow the new settings")

    def feedback(self, req: FeedbackRequest) -> FeedbackReply:
        """Seed 003 Alg. 1 on the node: update D_k, reply ∂loss_G/∂fake."""
        require(self._tdgan is not None, "tdgan", "feedback before configure_tdgan")
        assert self._tdgan is not None
        reply = self._tdgan.feedback(req)
        record_feedback(self.metrics, req, reply)
        self.tally.add(self._tdgan.rows, self.metrics)
        return reply

    async def answer(self, req: FeedbackRequest) -> FeedbackReply:
        """:meth:`feedback` for a transport's event loop: on a worker thread, so that the loop keeps
        the stream's heartbeats going while D_k steps, unless the last pass took less than
        :data:`INLINE_PASS_S`; after the update :meth:`look_ahead` began, if any (D_k must not move
        under it)."""
        if self._looking is not None:
            looking, self._looking = self._looking, None
            if not looking.done():
                await asyncio.wait([looking])  # if it failed (logged), the update is computed whole: the same numbers
        reply, self._pass_s = await timed_pass(lambda: self.feedback(req), self._pass_s)
        return reply

    def look_ahead(self, req: FeedbackRequest) -> None:
        """With ``tdgan.lookahead``: once the reply to ``req`` is on its way, begin the next update
        for ``req.next_labels`` on a worker thread while the cloud steps (:meth:`TDGANEdge.look_ahead`:
        the same numbers, sooner), at the lowest priority (:func:`ahead_thread`)."""
        if req.next_labels is not None and self._tdgan is not None and self._tdgan.cfg.lookahead:
            self._ahead_thread = self._ahead_thread or ahead_thread()
            self._looking = asyncio.get_running_loop().run_in_executor(self._ahead_thread, self._tdgan.look_ahead,
                                                                       req.next_labels)
            self._looking.add_done_callback(self._log_failure)

    def _log_failure(self, fut: asyncio.Future) -> None:
        e = None if fut.cancelled() else fut.exception()
        if e is not None:
            log.error("node %s: could not begin its next update: %s", self.node_id, e)

    def pretrain(self, arch: str, steps: int, cfg: WGANConfig, width: int | None = None) -> dict[str, nn.Module]:
        """Stage I on the node: a local WGAN-GP (G_k, D_k) on its own data (seed 000 §3)."""
        G, D = build_gan(arch, self.data.image_shape, cfg.latent_dim, 0, width)
        G, D = G.to(self.device), D.to(self.device)
        x = self.data.x.to(self.device)
        train_wgan_gp(G, D, lambda m: x[torch.randint(0, len(x), (m,), device=x.device)], steps, cfg)
        return {"generator": G, "critic": D}

    def adapt(self, barycenter: dict[str, nn.Module], steps: int, ternary: bool = False,
              cfg: WGANConfig | None = None) -> nn.Module:
        """Stage II on the node: fast adaptation of the barycenter to local data (seed 000, Alg. 2)."""
        from edgegan.adapt.fast_adapt import fast_adapt

        res = fast_adapt(barycenter["generator"].to(self.device), barycenter["critic_prev"].to(self.device),
                         barycenter["critic_new"].to(self.device), self.data.x.to(self.device), steps,
                         ternary=ternary, cfg=cfg)
        return res.generator
