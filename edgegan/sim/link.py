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
from typing import Sequence

from edgegan.data.tensordata import TensorData
from edgegan.errors import FailureReason, require
from edgegan.runtime.roles import NodeFailure, TDGANServer
from edgegan.runtime.scheduled import Answer, OnStep, ScheduledLink
from edgegan.sim.batches import FeedbackBatch, ReplyBatch
from edgegan.sim.pool import WorkerLost, WorkerPool, error_line
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo
from edgegan.tdgan.schedule import Schedule

log = logging.getLogger("edgegan.sim")


@dataclass
class VirtualNodes:
    """What re-creates virtual TDGAN nodes on another worker: the TDGAN config, each node's private
    data and its scheduled crash step."""

    cfg: TDGANConfig
    data: dict[str, TensorData]
    crashes: dict[str, int]


class SimLink(ScheduledLink):
    """A :class:`~edgegan.runtime.scheduled.ScheduledLink` over a pool of virtual nodes.

    A worker whose call fails or times out is lost (its Ray node died): every node it hosted leaves
    at once, as crashed, and is re-created on the surviving worker with the fewest nodes when the
    schedule next lets it join (:meth:`~edgegan.sim.host.NodeHost.adopt_tdgan_nodes`: from its spill
    file where the survivor can read it, else with a fresh D_k); ``pool.lost`` records what happened.
    """

    def __init__(self, server: TDGANServer, pool: WorkerPool, host_of: dict[str, int],
                 infos: dict[str, NodeInfo], schedule: Schedule, on_step: OnStep, nodes: VirtualNodes) -> None:
        super().__init__(server, schedule, on_step)
        self.pool = pool
        self.host_of = host_of
        self.hosted = Counter(host_of.values())
        self.nodes = nodes
        self.orphans: dict[str, int] = {}  # node -> the lost worker that hosted it, until re-created
        for info in infos.values():
            server.register(info)

    def _connect(self, node_id: str, tick: int) -> None:
        if node_id in self.orphans:
            self._rehost(node_id, tick)
        super()._connect(node_id, tick)

    def _lose(self, host: int, why: str, tick: int) -> None:
        """Worker ``host`` is gone: its nodes become orphans; the connected ones leave now."""
        mine = sorted(k for k, h in self.host_of.items() if h == host)
        record = self.pool.lose(host, why)
        record.update(tick=tick, step=self.server.step, nodes=len(mine),
                      online=sorted(set(mine) & self.members), recreated={})
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

    async def _call(self, host: int, batch: FeedbackBatch, sent: float) -> tuple[ReplyBatch, float]:
        """Worker ``host``'s answers to ``batch`` and the seconds from ``sent`` until they arrived."""
        replies = await self.pool.call(host, "feedback", batch)
        return replies, time.perf_counter() - sent

    async def _send(self, requests: Sequence[FeedbackRequest], timeout_s: float, tick: int) -> dict[str, Answer]:
        t0 = time.perf_counter()
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
        self.server.count_traffic(sum(r.nbytes() for r in requests),
                                  sum(a.nbytes() for a in out.values() if isinstance(a, FeedbackReply)), roundtrips_s)
        return out
