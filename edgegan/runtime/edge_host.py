"""Many TDGAN nodes in one edge process: how a lab machine with one GPU serves many small nodes.

Each hosted node keeps what a node of its own process would: its Session stream, bearer token,
D_k state and data partition. Their D_k live as rows of one
:class:`~edgegan.tdgan.edge.PackedEdges` (the simulator's representation). Requests that are
pending together are answered in one vectorised pass on the host's compute thread, so the event
loop keeps every other node's stream, heartbeats included, alive while D_k steps (a pass whose
predecessor took under ``INLINE_PASS_S`` runs on the loop itself: the hand-off costs more); a node's
numbers do not depend on which nodes share its pass. A request refused for one node (wrong
labels, a non-finite batch) fails that node's stream only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, NodeCrashed, require
from edgegan.monitor.metrics import Metrics
from edgegan.runtime.edge_node import AheadTally, ahead_thread, record_feedback, timed_pass
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import Ahead, PackedEdges, class_pools
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo

log = logging.getLogger("edgegan.edge")

Waiting = tuple[FeedbackRequest, "asyncio.Future[FeedbackReply]"]
#: Seconds a pass may wait for the rest of a step's requests (see :meth:`EdgeHost._gather_step`).
COALESCE_S = 0.002


class EdgeHost:
    """The D_k rows of the nodes one edge process hosts, and the pass that answers them.

    Parameters
    ----------
    nodes : node id → that node's private data (one data set: same image shape and classes).
    device : where the passes run.
    metrics : the process's Prometheus metrics.
    crashes : simulation: node id → the generator step at which that node crashes (loses its D_k,
        its stream is cut; it rejoins with a fresh D_k), as a simulator worker's node does.
    die_at_step : simulation: SIGKILL this whole process when a node is asked for this step.
    """

    def __init__(self, nodes: dict[str, TensorData], device: torch.device | str = "cpu",
                 metrics: Metrics | None = None, crashes: dict[str, int] | None = None,
                 die_at_step: int | None = None) -> None:
        require(bool(nodes), "node_ids", "no nodes to host", "name at least one node")
        shapes = {(d.image_shape, d.num_classes) for d in nodes.values()}
        require(len(shapes) == 1, "nodes", f"hosted nodes hold different data shapes {sorted(shapes)}",
                "host nodes of one data set per process")
        self.data = nodes
        self.pools = {k: class_pools(d) for k, d in nodes.items()}
        self.device = torch.device(device)
        self.metrics = metrics or Metrics()
        self.cfg: TDGANConfig | None = None
        self.packed: PackedEdges | None = None
        self.rows: dict[str, torch.Tensor] = {}
        self.ahead: dict[str, Ahead | None] = {}  # tdgan.lookahead: each node's next update, begun
        self._to_begin: list[FeedbackRequest] = []  # replies sent this event-loop turn (look_ahead)
        self._looking: asyncio.Future | None = None  # the look-ahead job on its way, if any
        self._passing = threading.Lock()  # a pass and a look-ahead never share the critic (vmap swaps its weights)
        self._ahead_thread = ahead_thread()
        self.tally = AheadTally()
        self._pass_s = math.inf  # how long the last pass took: under INLINE_PASS_S the next runs on the loop
        self._waiting: list[Waiting] = []
        self._drainer: asyncio.Task | None = None
        self._arrived = asyncio.Event()
        self._step_sizes: dict[int, int] = {}  # requests answered per generator step (the last two steps)
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="edgegan-host")
        unknown = sorted(set(crashes or {}) - set(nodes))
        require(not unknown, "crash_at", f"nodes {unknown} are not hosted here", "crash only hosted nodes")
        self.crashes = dict(crashes or {})
        self.die_at_step = die_at_step

    def node(self, node_id: str) -> HostedNode:
        """The edge role of hosted node ``node_id`` (what :func:`~edgegan.runtime.grpc_edge.run_tdgan_edge` drives)."""
        require(node_id in self.data, "node_id", f"node '{node_id}' is not hosted here")
        return HostedNode(self, node_id)

    def configure(self, cfg: TDGANConfig, image_shape: Sequence[int]) -> None:
        """Build the rows for the cloud's settings once (every node's D_k under its seed)."""
        some = next(iter(self.data.values()))
        require(tuple(image_shape) == some.image_shape, "image_shape",
                f"the cloud generates {tuple(image_shape)}, this host's nodes hold {some.image_shape}",
                "use the cloud's data set")
        if self.packed is None:
            self.cfg, self.packed = cfg, PackedEdges(cfg, some, self.device)
            self.rows = {k: self.packed.fresh(k, d) for k, d in self.data.items()}
        elif self.cfg != cfg:
            raise EdgeganError("tdgan", "the cloud's TDGAN settings changed for this host",
                               "restart the edge host to follow the new settings")

    async def answer(self, req: FeedbackRequest) -> FeedbackReply:
        """Node ``req.node_id``'s reply, computed in the next pass over the pending requests."""
        if self.die_at_step is not None and req.step >= self.die_at_step:
            log.warning("asked for step %d: this host dies now (SIGKILL, simulated)", req.step)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.crashes.get(req.node_id) == req.step:
            del self.crashes[req.node_id]
            assert self.packed is not None
            self.rows[req.node_id] = self.packed.fresh(req.node_id, self.data[req.node_id])
            self.ahead.pop(req.node_id, None)
            raise NodeCrashed(f"node '{req.node_id}' crashes at step {req.step} (its D_k is lost)")
        fut: asyncio.Future[FeedbackReply] = asyncio.get_running_loop().create_future()
        self._waiting.append((req, fut))
        self._arrived.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._waiting:
            await self._gather_step()
            if self._looking is not None:  # D_k must not move under updates being begun
                looking, self._looking = self._looking, None
                await looking
            batch, self._waiting = self._waiting, []
            try:
                reqs = [r for r, _ in batch]
                answers, self._pass_s = await timed_pass(lambda: self._pass(reqs), self._pass_s, self._compute)
            except Exception as e:  # an unexpected failure of the pass fails its waiters, never hangs them
                answers = [e] * len(batch)
            for (req, fut), ans in zip(batch, answers):
                if fut.done():
                    continue
                if isinstance(ans, BaseException):
                    fut.set_exception(ans)
                else:
                    fut.set_result(ans)
                    record_feedback(self.metrics, req, ans)

    async def _gather_step(self) -> None:
        """Wait, at most ``COALESCE_S``, until as many requests of the first waiting step have arrived
        as the previous step brought: the cloud sends a step's requests together, but they arrive
        on separate streams, and one pass for all is cheaper than several. A node's numbers do not
        depend on how its pass is grouped (``tdgan.exact_grouping``), so this only saves time."""
        step = self._waiting[0][0].step
        expect = self._step_sizes.get(step - 1, 1) - self._step_sizes.get(step, 0)
        deadline = time.monotonic() + COALESCE_S
        while sum(r.step == step for r, _ in self._waiting) < expect and time.monotonic() < deadline:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        for r, _ in self._waiting:
            self._step_sizes[r.step] = self._step_sizes.get(r.step, 0) + 1
        for old in [k for k in self._step_sizes if k < step - 1]:
            del self._step_sizes[old]

    def _pass(self, requests: list[FeedbackRequest]) -> list[FeedbackReply | BaseException]:
        """One vectorised pass over ``requests`` (one per node); where the group is refused,
        each node alone, so that only the node at fault gets the error."""
        try:
            return list(self._feedback(requests))
        except EdgeganError:
            out: list[FeedbackReply | BaseException] = []
            for r in requests:
                try:
                    out.extend(self._feedback([r]))
                except EdgeganError as e:
                    out.append(e)
            return out

    def look_ahead(self, req: FeedbackRequest) -> None:
        """With ``tdgan.lookahead``: once the reply to ``req`` is on its way, begin node
        ``req.node_id``'s next update at the lowest priority (:func:`ahead_thread`); the replies sent
        in one event-loop turn begin as one job, which the next pass waits for."""
        if req.next_labels is None or self.cfg is None or not self.cfg.lookahead:
            return
        self._to_begin.append(req)
        if len(self._to_begin) == 1:
            asyncio.get_running_loop().call_soon(self._begin)

    def _begin(self) -> None:
        reqs, self._to_begin = self._to_begin, []
        self._looking = asyncio.get_running_loop().run_in_executor(self._ahead_thread, self._look_ahead, reqs)

    def _look_ahead(self, requests: list[FeedbackRequest]) -> None:
        """Begin the answered nodes' next updates (:meth:`PackedEdges.look_ahead`) while the cloud steps."""
        assert self.packed is not None
        ids = [r.node_id for r in requests]
        try:
            with self._passing:
                block = torch.stack([self.rows[k] for k in ids])
                nodes = [(k, self.data[k], self.pools[k]) for k in ids]
                self.ahead.update(zip(ids, self.packed.look_ahead(block, nodes, [r.next_labels for r in requests])))
        except Exception:  # the next pass then computes the whole update: the same numbers
            log.exception("could not begin the next update of %d nodes", len(ids))

    def _feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackReply]:
        assert self.packed is not None
        ids = [r.node_id for r in requests]
        require(len(set(ids)) == len(ids), "requests", "two requests of one node in one pass")
        with self._passing:
            block = torch.stack([self.rows[k] for k in ids])
            replies = self.packed.feedback(block, [(k, self.data[k], self.pools[k]) for k in ids], requests,
                                           [self.ahead.pop(k, None) for k in ids])
            for k, row in zip(ids, block):
                self.rows[k] = row
        self.tally.add(self.packed, self.metrics)
        return replies

    def close(self) -> None:
        self._compute.shutdown(wait=False)
        self._ahead_thread.shutdown(wait=False)


class HostedNode:
    """One node of an :class:`EdgeHost`, with the edge role's interface (``node_id``, ``info``,
    ``configure_tdgan``, ``answer``)."""

    def __init__(self, host: EdgeHost, node_id: str) -> None:
        self.host, self.node_id = host, node_id

    def info(self) -> NodeInfo:
        return NodeInfo.of(self.node_id, self.host.data[self.node_id])

    def configure_tdgan(self, cfg: TDGANConfig, image_shape: Sequence[int]) -> None:
        self.host.configure(cfg, image_shape)

    async def answer(self, req: FeedbackRequest) -> FeedbackReply:
        return await self.host.answer(req)

    def look_ahead(self, req: FeedbackRequest) -> None:
        self.host.look_ahead(req)
