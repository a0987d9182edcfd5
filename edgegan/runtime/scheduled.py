"""Membership that follows a :class:`~edgegan.tdgan.schedule.Schedule`, whatever the transport.

:class:`ScheduledLink` is the part of a :class:`~edgegan.runtime.roles.FeedbackLink` that turns a
schedule into ``server.connected`` / ``server.disconnected`` calls between generator steps and
one row per tick; a subclass says how requests reach the nodes (:meth:`ScheduledLink._send`).
The simulator's :class:`~edgegan.sim.link.SimLink` sends them to a worker pool;
:class:`StreamGate` sends them over the cloud's real gRPC Session streams
(``edgegan simulate --backend grpc``, or a cloud replaying a scenario), where a node is a member
at tick t exactly when the schedule has it online *and* its stream is open. Because joins and
leaves happen at ticks, not when a stream happens to open, every backend runs the same steps on
the same nodes (seed 003's schedule, §4.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from edgegan.errors import FailureReason
from edgegan.runtime.cloud_base import NodeFailure
from edgegan.runtime.roles import TDGANServer
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, stat_mean
from edgegan.tdgan.schedule import Event, Schedule, Task

log = logging.getLogger("edgegan.runtime")

Answer = FeedbackReply | NodeFailure
#: ``on_step(row)``: one dict per tick (``kind`` ``step`` or ``idle``) once its generator step is applied.
OnStep = Callable[[dict[str, Any]], None]


def schedule_to_dict(s: Schedule) -> dict[str, Any]:
    """A JSON-able form of ``s`` (tasks and events)."""
    return {"tasks": [{"name": t.name, "nodes": list(t.nodes), "steps": t.steps} for t in s.tasks],
            "events": [{"step": e.step, "kind": e.kind, "node_id": e.node_id} for e in s.events]}


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """The inverse of :func:`schedule_to_dict` (validated by :class:`Schedule`)."""
    return Schedule([Task(t["name"], tuple(t["nodes"]), int(t["steps"])) for t in d["tasks"]],
                    [Event(int(e["step"]), e["kind"], e["node_id"]) for e in d.get("events", [])])


class ScheduledLink:
    """Tick ``t`` of the schedule is one generator step. Before step ``t`` the link applies the
    schedule's events at ``t`` (:meth:`Schedule.apply_events`: leaves, then joins, in schedule order)
    through ``server.connected`` / ``server.disconnected``; a tick where nobody is online runs no
    generator step (recorded as idle, like a cloud waiting for nodes). A node that fails during
    its step (crash, lost stream or worker) leaves like a closed stream, and comes back at its
    next scheduled join.

    Subclasses implement :meth:`_send` and may refine :meth:`_connect` / :meth:`_disconnect` and
    :meth:`_admit` (called once a tick's events are applied, before the tick runs).
    """

    def __init__(self, server: TDGANServer, schedule: Schedule, on_step: OnStep) -> None:
        self.server = server
        self.schedule = schedule
        self.on_step = on_step
        self.members: set[str] = set()  # online by the schedule (and, over gRPC, with an open stream)
        self.tick = 0
        self.done: tuple[int, str] | None = None
        self._row: dict[str, Any] | None = None
        self._idle: list[dict[str, Any]] = []
        self.exchange_s = 0.0
        self.activations = 0

    @property
    def exhausted(self) -> bool:
        """True once every tick of the schedule has run (or idled)."""
        return self.tick >= self.schedule.total_steps

    async def start(self) -> None:
        await self._advance(0)

    def _connect(self, node_id: str, tick: int) -> None:
        self.members.add(node_id)
        self.server.connected(node_id)

    def _disconnect(self, node_id: str) -> None:
        if node_id in self.members:
            self.members.discard(node_id)
            self.server.disconnected(node_id)

    async def _admit(self, tick: int) -> None:
        """Hook: complete the joins of ``tick`` before it runs (no-op)."""

    async def _advance(self, t: int) -> None:
        """Apply membership for tick ``t`` (and skip idle ticks after it)."""
        while t < self.schedule.total_steps:
            self.schedule.apply_events(t, self.members.__contains__, lambda k: self._connect(k, t),
                                       self._disconnect)
            await self._admit(t)
            if self.members:
                break
            self._idle.append({"kind": "idle", "tick": t, "step": self.server.step, "online": []})
            t += 1
        self.tick = t

    def _complete(self) -> None:
        if self._row is not None:
            self._row.update({k: v for k, v in self.server.last_stats.items() if k != "step"})
            row, self._row = self._row, None
            self.on_step(row)
        for row in self._idle:
            self.on_step(row)
        self._idle = []

    async def _send(self, requests: Sequence[FeedbackRequest], timeout_s: float, tick: int) -> dict[str, Answer]:
        """Every request's answer (a reply or why there is none) within ``timeout_s``."""
        raise NotImplementedError

    async def exchange(self, requests: Sequence[FeedbackRequest], timeout_s: float) -> dict[str, Answer]:
        self._complete()
        t0 = time.perf_counter()
        tick = self.tick
        out = await self._send(requests, timeout_s, tick)
        failed = sorted(k for k, v in out.items() if isinstance(v, NodeFailure))
        for node_id in failed:  # a crashed node, or one of a lost worker, may rejoin in a later window
            self._disconnect(node_id)
        replies = [a.stats for a in out.values() if isinstance(a, FeedbackReply)]
        dt = time.perf_counter() - t0
        self.exchange_s += dt
        self.activations += len(requests)
        self._row = {"kind": "step", "tick": tick, "step": requests[0].step if requests else self.server.step,
                     "online": sorted(r.node_id for r in requests), "failed": failed, "exchange_s": dt,
                     **{f"{kind}_mean": stat_mean(replies, kind) for kind in ("d_loss", "g_loss")}}
        await self._advance(tick + 1)
        return out

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        self._disconnect(node_id)

    async def finish(self, step: int, reason: str) -> None:
        self._complete()
        self.done = (step, reason)


class Sessions(Protocol):
    """What :class:`StreamGate` needs of the cloud's gRPC link (:class:`~edgegan.runtime.grpc_link.GrpcLink`)."""

    membership: Any

    async def exchange(self, requests: Sequence[FeedbackRequest], timeout_s: float) -> dict[str, Answer]: ...

    def drop(self, node_id: str, failure: NodeFailure) -> None: ...

    async def finish(self, step: int, reason: str) -> None: ...


class StreamGate(ScheduledLink):
    """A cloud whose membership is schedule ∩ open streams.

    The transport reports streams opening and closing to the gate (``sessions.membership``), not to
    the server. A node the schedule brings online at tick t joins once its stream is open: the
    tick waits up to ``join_wait_s`` for it (a node still without a stream sits this window out).
    A scheduled leave ends the node's Session (the edge reconnects and waits for its next
    window); a stream that closes on its own (crash, killed host) is a leave at once.

    ``out_dir`` receives ``ticks.jsonl`` (one row per tick, as the simulator records them) and, every
    ``snapshot_every`` generator steps and at the end, ``snapshots/step-N.pt`` with G's weights and
    the nodes seen so far. ``stop`` is set once the schedule's last tick ran (the run then ends
``finished`` if it took ``server.cfg.steps`` steps, else stopped: a node absent for good idles ticks).
    """

    def __init__(self, server: TDGANServer, schedule: Schedule, sessions: Sessions, join_wait_s: float,
                 out_dir: str | Path, snapshot_every: int, stop: asyncio.Event) -> None:
        self.out_dir = Path(out_dir)
        (self.out_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        self._ticks = open(self.out_dir / "ticks.jsonl", "w")
        super().__init__(server, schedule, self._write)
        self.sessions = sessions
        sessions.membership = self
        self.join_wait_s = join_wait_s
        self.snapshot_every = snapshot_every
        self.stop = stop
        self.streams: set[str] = set()
        self._joining: list[str] = []
        self._opened = asyncio.Event()

    # ------------------------------------------------------------------ the transport's membership calls
    def connected(self, node_id: str) -> None:
        """``node_id``'s stream opened: it joins at its next scheduled join (or now, if one waits)."""
        self.streams.add(node_id)
        self._opened.set()

    def disconnected(self, node_id: str) -> None:
        """``node_id``'s stream closed: it leaves now."""
        self.streams.discard(node_id)
        self._disconnect(node_id)

    # ------------------------------------------------------------------ the schedule's side
    def _connect(self, node_id: str, tick: int) -> None:
        self._joining.append(node_id)

    def _disconnect(self, node_id: str) -> None:
        was = node_id in self.members
        super()._disconnect(node_id)
        if was and node_id in self.streams:  # the schedule takes it offline: its Session ends
            self.sessions.drop(node_id, NodeFailure(
                FailureReason.DISCONNECTED, f"the schedule takes node '{node_id}' offline; reconnect to wait for "
                                            "its next window"))

    async def _admit(self, tick: int) -> None:
        """Join this tick's nodes in schedule order once their streams are open (each waits at most
        ``join_wait_s`` in all)."""
        joining, self._joining = self._joining, []
        deadline = time.monotonic() + self.join_wait_s
        while set(joining) - self.streams and time.monotonic() < deadline and not self.stop.is_set():
            self._opened.clear()
            try:
                await asyncio.wait_for(self._opened.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        for node_id in joining:
            if node_id in self.streams:
                super()._connect(node_id, tick)
            else:
                log.warning("node %s is scheduled to join at tick %d but has no open stream after %g s: "
                            "it sits this window out", node_id, tick, self.join_wait_s)

    async def _advance(self, t: int) -> None:
        await super()._advance(t)
        if self.exhausted:  # the last tick ran: stop, finished or not (nodes absent for good leave steps undone)
            self.stop.set()

    async def _send(self, requests: Sequence[FeedbackRequest], timeout_s: float, tick: int) -> dict[str, Answer]:
        return await self.sessions.exchange(requests, timeout_s)

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        super().drop(node_id, failure)
        self.sessions.drop(node_id, failure)

    async def finish(self, step: int, reason: str) -> None:
        await super().finish(step, reason)
        await self.sessions.finish(step, reason)

    # ------------------------------------------------------------------ what the run leaves behind
    def _write(self, row: dict[str, Any]) -> None:
        self._ticks.write(json.dumps(row) + "\n")
        self._ticks.flush()
        step = self.server.step
        if row["kind"] == "step" and self.snapshot_every and step % self.snapshot_every == 0:
            self.snapshot()

    def snapshot(self) -> Path:
        """G's weights and the nodes seen so far at the current step (``snapshots/step-N.pt``)."""
        import torch

        path = self.out_dir / "snapshots" / f"step-{self.server.step:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"step": self.server.step, "seen": list(self.server.tdgan.seen),
                    "generator": self.server.tdgan.G.state_dict()}, tmp)
        tmp.replace(path)
        return path

    def close(self) -> None:
        """The last snapshot (finished or stopped) and the tick log closed."""
        self._complete()
        self.snapshot()
        self._ticks.close()
