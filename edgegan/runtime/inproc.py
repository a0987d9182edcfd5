"""The in-process transport: edges are objects in the cloud's process, replies are direct calls.

Used by tests and as the baseline of ``benchmarks/feedback_latency.py``: the cloud role, its
compute thread and its step loop are the same as over gRPC, only the wire is missing.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from edgegan.errors import FailureReason
from edgegan.runtime.edge_host import HostedNode
from edgegan.runtime.roles import EdgeNode, NodeFailure, TDGANServer
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest


class InprocLink:
    """A :class:`~edgegan.runtime.roles.FeedbackLink` over edge objects in this process: edge roles
    (:class:`EdgeNode`, or the nodes of an :class:`~edgegan.runtime.edge_host.EdgeHost`, answered
    together in one pass) awaited as a transport awaits them."""

    def __init__(self, server: TDGANServer, edges: Sequence[EdgeNode | HostedNode]) -> None:
        self.server = server
        self.edges = {e.node_id: e for e in edges}
        self.done: tuple[int, str] | None = None
        for e in edges:
            e.configure_tdgan(server.cfg.tdgan, server.cfg.image_shape)
            server.register(e.info())
            server.connected(e.node_id)

    async def exchange(self, requests: Sequence[FeedbackRequest],
                       timeout_s: float) -> dict[str, FeedbackReply | NodeFailure]:
        gone = NodeFailure(FailureReason.DISCONNECTED, "not connected")
        live = [r for r in requests if r.node_id in self.edges]
        replies = await asyncio.gather(*(self.edges[r.node_id].answer(r) for r in live))
        out: dict[str, FeedbackReply | NodeFailure] = {r.node_id: gone for r in requests}
        out.update((r.node_id, reply) for r, reply in zip(live, replies))
        return out

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        if self.edges.pop(node_id, None) is not None:
            self.server.disconnected(node_id)

    async def finish(self, step: int, reason: str) -> None:
        self.done = (step, reason)


async def run_inproc(server: TDGANServer, edges: Sequence[EdgeNode | HostedNode]) -> str:
    """Run ``server``'s configured pipeline with ``edges`` in this process until it finishes."""
    link = InprocLink(server, edges)
    return await server.run(link, asyncio.Event())
