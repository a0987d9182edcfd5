"""The cloud's side of the nodes' Session streams (:mod:`~edgegan.runtime.grpc_server` serves them):
per node an outbox, the requests awaiting replies and liveness; :class:`GrpcLink` is the
:class:`~edgegan.runtime.roles.FeedbackLink` that sends a step's fake batches over them and
gathers the feedback, and drops nodes that miss their heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol, Sequence

import grpc

from edgegan.errors import FailureReason
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.roles import CloudServer, NodeFailure
from edgegan.runtime.tensor_codec import WireError, decode_tensor, encode_tensor
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest

log = logging.getLogger("edgegan.grpc")


class Membership(Protocol):
    """Who hears of a node's stream opening and closing: the TDGAN server, or a schedule's gate."""

    def connected(self, node_id: str) -> None: ...

    def disconnected(self, node_id: str) -> None: ...


class OpenSession:
    """One node's open Session stream: an outbox, the requests awaiting replies, liveness."""

    def __init__(self, node_id: str, server: "GrpcLink") -> None:
        self.node_id = node_id
        self.link = server
        self.outbox: asyncio.Queue[pb.CloudMessage | None] = asyncio.Queue()  # None: stop writing
        self.pending: dict[int, tuple[FeedbackRequest, asyncio.Future, float]] = {}
        self.last_seen = time.monotonic()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def close(self, code: grpc.StatusCode, detail: str) -> None:
        """End the stream with ``code`` (idempotent): the writer stops after its current message."""
        if not self.closed.done():
            self.closed.set_result((code, detail))
            self.outbox.put_nowait(None)

    def heartbeat(self) -> None:
        """Queue a heartbeat (the writer's timer, when the stream was idle)."""
        self.outbox.put_nowait(pb.CloudMessage(heartbeat=pb.Heartbeat(time_s=time.time())))

    def fail_pending(self, failure: NodeFailure) -> None:
        for _req, fut, _t in self.pending.values():
            if not fut.done():
                fut.set_result(failure)
        self.pending.clear()

    def on_reply(self, msg: pb.FeedbackReply) -> None:
        entry = self.pending.pop(msg.step, None)
        if entry is None:  # answered after its deadline, or a step never asked
            self.link.server.metrics.reject(FailureReason.STALE)
            return
        req, fut, t_sent = entry
        self.link.server.metrics.roundtrip.observe(time.perf_counter() - t_sent)
        try:  # values are checked where all feedback is, before G moves (validate_feedback)
            grad = decode_tensor(msg.grad, "feedback.grad", dtype="float32", shape=tuple(req.fake.shape))
        except WireError as e:
            failure = NodeFailure(e.reason, str(e))
            if not fut.done():
                fut.set_result(failure)
            self.close(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        if not fut.done():
            fut.set_result(FeedbackReply(self.node_id, int(msg.step), grad, dict(msg.stats)))


class GrpcLink:
    """The :class:`~edgegan.runtime.roles.FeedbackLink` over the nodes' Session streams."""

    def __init__(self, server: CloudServer) -> None:
        self.server = server
        self.sessions: dict[str, OpenSession] = {}
        self.done: pb.Done | None = None
        self.closing = False
        self.waiting = 0  # DownloadModels calls waiting for a bundle
        self.streams = 0  # Session handlers still running (draining included)
        self.on_drop: Callable[[str, FailureReason], None] | None = None  # the guard's hook
        self.membership: Membership = server  # told when streams open and close (a StreamGate replays a schedule)
        self.told_done: set[str] = set()  # nodes whose stream has carried the run's Done

    async def exchange(self, requests: Sequence[FeedbackRequest],
                       timeout_s: float) -> dict[str, FeedbackReply | NodeFailure]:
        out: dict[str, FeedbackReply | NodeFailure] = {}
        futs: dict[str, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        for req in requests:
            s = self.sessions.get(req.node_id)
            if s is None or s.closed.done():
                out[req.node_id] = NodeFailure(FailureReason.DISCONNECTED, "no open stream")
                continue
            msg = pb.CloudMessage()
            msg.request.step = req.step
            encode_tensor(req.fake, msg.request.fake)
            encode_tensor(req.labels, msg.request.labels)
            if req.next_labels is not None:
                encode_tensor(req.next_labels, msg.request.next_labels)
            fut = loop.create_future()
            s.pending[req.step] = (req, fut, time.perf_counter())
            s.outbox.put_nowait(msg)
            futs[req.node_id] = fut
        try:  # one deadline for all; a future awaited alone wakes this task in one loop turn
            async with asyncio.timeout(timeout_s):
                for fut in futs.values():
                    await fut
        except TimeoutError:
            pass  # the one awaited when the deadline passed is cancelled: no reply in time
        for node_id, fut in futs.items():
            if fut.done() and not fut.cancelled():
                out[node_id] = fut.result()
            else:
                fut.cancel()
                failure = NodeFailure(FailureReason.TIMEOUT, f"no feedback within {timeout_s:g} s")
                out[node_id] = failure
                self.drop(node_id, failure)
        return out

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        if self.on_drop is not None:
            self.on_drop(node_id, failure.reason)
        s = self.sessions.get(node_id)
        if s is not None:
            s.close(grpc.StatusCode[failure.code], failure.detail)

    async def finish(self, step: int, reason: str) -> None:
        self.done = pb.Done(step=step, reason=reason)
        for s in list(self.sessions.values()):
            self.tell_done(s)

    def tell_done(self, session: OpenSession) -> None:
        """Queue the run's Done on ``session``; its writer records the node in ``told_done`` once written."""
        session.outbox.put_nowait(pb.CloudMessage(done=self.done))

    async def close_all(self, grace_s: float) -> None:
        """End every open Session and waiting download with UNAVAILABLE (the cloud is stopping)
        and give the handlers ``grace_s`` to return, so stopping the server cancels no call
        mid-flight; streams opened from now on are refused."""
        self.closing = True
        self.server.stopping.set()
        for s in list(self.sessions.values()):
            s.close(grpc.StatusCode.UNAVAILABLE, "the cloud is shutting down")
        deadline = time.monotonic() + grace_s
        while (self.streams or self.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def watchdog(self, interval_s: float, timeout_s: float) -> None:
        """Drop nodes silent for longer than ``timeout_s`` (missed heartbeats)."""
        while True:
            await asyncio.sleep(interval_s / 2)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if now - s.last_seen > timeout_s:
                    log.warning("node %s missed heartbeats for %.1f s: dropping it", s.node_id, now - s.last_seen)
                    s.close(grpc.StatusCode.DEADLINE_EXCEEDED, f"no message for {timeout_s:g} s")
