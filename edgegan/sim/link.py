"""The simulator's transport: :class:`SimLink` is a :class:`~edgegan.runtime.roles.FeedbackLink`, so
:class:`~edgegan.runtime.roles.TDGANServer` drives TDGAN over a pool of virtual nodes exactly as over
gRPC, while the link applies the availability schedule's join/leave events
(:meth:`~edgegan.tdgan.schedule.Schedule.apply_events`) between steps through ``connected`` /
``disconnected``, as a transport reports streams opening and closing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgegan.data.tensordata import TensorData
from edgegan.errors import FailureReason, require
from edgegan.runtime.roles import NodeFailure, TDGANServer
from edgegan.sim.batches import FeedbackBatch, ReplyBatch
from edgegan.sim.pool import WorkerLost, WorkerPool, error_line
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo, stat_mean
from edgegan.tdgan.schedule import Schedule

log = logging.getLogger("edgegan.sim")

Answer = FeedbackReply | NodeFailure


@dataclass
class VirtualNodes:
    """What re-creates virtual TDGAN nodes on another worker: the TDGAN config, each node's private
    data and its scheduled crash step."""

    cfg: TDGANConfig
    data: dict[str, TensorData]
    crashes: dict[str, int]


class SimLink:
    """A :class:`~edgegan.runtime.roles.FeedbackLink` over a pool of virtual nodes that follows a
    :class:`Schedule`.

    Step (tick) ``t`` of the schedule is one generator step. Before step ``t`` the link applies the
    schedule's events at ``t`` through ``server.connected`` / ``server.disconnected``; a tick where
    nobody is online runs no generator step (recorded as idle, like a cloud waiting for nodes).
    A node that fails during its step (crash, dead worker) is dropped like a closed stream.

    A worker whose call fails or times out is lost (its Ray node died): every node it hosted leaves
    at once, as crashed, and is re-created on the surviving worker with the fewest nodes when the
    schedule next lets it join (:meth:`~edgegan.sim.host.NodeHost.adopt_tdgan_nodes`: from its spill
    file where the survivor can read it, else with a fresh D_k); ``pool.lost`` records what happened.

    ``on_step(row)`` receives one dict per tick (``kind`` ``step`` or ``idle``) once its
    generator step is applied.
    """

    def __init__(self, server: TDGANServer, pool: WorkerPool, host_of: dict[str, int],
                 infos: dict[str, NodeInfo], schedule: Schedule, on_step: Callable[[dict[str, Any]], None],
                 nodes: VirtualNodes) -> None:
        self.server = server
        self.pool = pool
        self.host_of = host_of
        self.hosted = Counter(host_of.values())
        self.nodes = nodes
        self.schedule = schedule
        self.on_step = on_step
        self.connected: set[str] = set()
        self.orphans: dict[str, int] = {}  # node -> the lost worker that hosted it, until re-created
        self.tick = 0
        self.done: tuple[int, str] | None = None
        self._row: dict[str, Any] | None = None
        self._idle: list[dict[str, Any]] = []
        self.exchange_s = 0.0
        self.activations = 0
        for info in infos.values():
            server.register(info)

    def start(self) -> None:
        self._advance(0)

    def _connect(self, node_id: str, tick: int) -> None:
        if node_id in self.orphans:
            self._rehost(node_id, tick)
        self.connected.add(node_id)
        self.server.connected(node_id)

    def _disconnect(self, node_id: str) -> None:
        if node_id in self.connected:
            self.connected.discard(node_id)
            self.server.disconnected(node_id)

    def _advance(self, t: int) -> None:
        """Apply membership for tick ``t`` (and skip idle ticks after it)."""
        while t < self.schedule.total_steps:
            self.schedule.apply_events(t, self.connected.__contains__, lambda k: self._connect(k, t),
                                       self._disconnect)
            if self.connected:
                break
            self._idle.append({"kind": "idle", "tick": t, "step": self.server.step, "online": []})
            t += 1
        self.tick = t

    def _lose(self, host: int, why: str, tick: int) -> None:
        """Worker ``host`` is gone: its nodes become orphans; the connected ones leave now."""
        mine = sorted(k for k, h in self.host_of.items() if h == host)
        record = self.pool.lose(host, why)
        record.update(tick=tick, step=self.server.step, nodes=len(mine),
                      online=sorted(set(mine) & self.connected), recreated={})
        log.warning("worker %d lost at tick %d (%s): its %d node(s) leave and are re-created on a surviving "
                    "worker when they next join", host, tick, why, len(mine))
        require(bool(self.pool.alive()), "engine.workers",
                f"every pool worker is lost (the last: worker {host}, {why})",
                "restart the Ray nodes (`ray start`) and run the scenario again")
        for node_id in mine:
            self.orphans[node_id] = host
            self.hosted[host] -= 1
            self._disconnect(node_id)

    def _rehost(self, node_id: str, tick: int) -> None:
        """Re-create an orphan on the surviving worker hosting the fewest nodes."""
        while True:
            to = min(self.pool.alive(), key=lambda h: (self.hosted[h], h))
            lost = self.pool.lost[self.orphans[node_id]]
            crash = {node_id: self.nodes.crashes[node_id]} if node_id in self.nodes.crashes else {}
            try:
                how = self.pool.call_sync(to, "adopt_tdgan_nodes", self.nodes.cfg,
                                          [(node_id, self.nodes.data[node_id])], crash, lost["spill_dir"])
                break
            except WorkerLost as e:  # the survivor died too
                self._lose(to, e.detail, tick)
        del self.orphans[node_id]
        self.host_of[node_id] = to
        self.hosted[to] += 1
        lost["recreated"][node_id] = {"worker": to, "tick": tick, "state": how[node_id]}
        log.info("node %s re-created on worker %d (%s state)", node_id, to, how[node_id])

    def _complete(self) -> None:
        if self._row is not None:
            self._row.update({k: v for k, v in self.server.last_stats.items() if k != "step"})
            row, self._row = self._row, None
            self.on_step(row)
        for row in self._idle:
            self.on_step(row)
        self._idle = []

    async def _call(self, host: int, batch: FeedbackBatch, sent: float) -> tuple[ReplyBatch, float]:
        """Worker ``host``'s answers to ``batch`` and the seconds from ``sent`` until they arrived."""
        replies = await self.pool.call(host, "feedback", batch)
        return replies, time.perf_counter() - sent

    async def exchange(self, requests: Sequence[FeedbackRequest], timeout_s: float) -> dict[str, Answer]:
        self._complete()
        t0 = time.perf_counter()
        tick = self.tick
        groups: dict[int, list[FeedbackRequest]] = {}
        for req in requests:
            groups.setdefault(self.host_of[req.node_id], []).append(req)
        tasks = {h: asyncio.ensure_future(self._call(h, FeedbackBatch.of(reqs), t0)) for h, reqs in groups.items()}
        done, _ = await asyncio.wait(tasks.values(), timeout=timeout_s)
        out: dict[str, Answer] = {}
        roundtrips_s: list[float] = []  # one per reply: its worker call's send → answer
        for h, task in tasks.items():
            if task in done and task.exception() is None:
                answers, seconds = task.result()
                for req, ans in zip(groups[h], answers):
                    out[req.node_id] = ans
                    if isinstance(ans, FeedbackReply):
                        roundtrips_s.append(seconds)
            else:  # any failure of a worker call means the worker is gone
                why = f"timed out after {timeout_s:g} s" if task not in done else error_line(task.exception())
                task.cancel()
                out.update((req.node_id, NodeFailure(FailureReason.WORKER_LOST, why)) for req in groups[h])
                self._lose(h, why, tick)
        failed = sorted(k for k, v in out.items() if isinstance(v, NodeFailure))
        for node_id in failed:  # a crashed node, or one of a lost worker, may rejoin in a later window
            self._disconnect(node_id)
        replies = [a.stats for a in out.values() if isinstance(a, FeedbackReply)]
        self.server.count_traffic(sum(r.nbytes() for r in requests),
                                  sum(a.nbytes() for a in out.values() if isinstance(a, FeedbackReply)), roundtrips_s)
        dt = time.perf_counter() - t0
        self.exchange_s += dt
        self.activations += len(requests)
        self._row = {"kind": "step", "tick": tick, "step": requests[0].step if requests else self.server.step,
                     "online": sorted(r.node_id for r in requests), "failed": failed, "exchange_s": dt,
                     **{f"{kind}_mean": stat_mean(replies, kind) for kind in ("d_loss", "g_loss")}}
        self._advance(tick + 1)
        return out

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        self._disconnect(node_id)

    async def finish(self, step: int, reason: str) -> None:
        self._complete()
        self.done = (step, reason)


