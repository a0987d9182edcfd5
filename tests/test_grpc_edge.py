"""The edge's side of liveness (issue 7): a cloud that keeps the stream open but goes silent
is detected by missed heartbeats, and the edge reconnects and registers again."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
from edgegan.runtime.roles import EdgeNode, config_json
from edgegan.tdgan.config import TDGANConfig


class SilentCloud(pb_grpc.EdgeGANServicer):
    """Registers nodes, then holds their Session streams open without ever writing."""

    def __init__(self) -> None:
        self.registrations = 0
        self.heartbeats = 0

    async def Register(self, request, context):
        self.registrations += 1
        return pb.RegisterReply(run_id="silent", heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0,
                                max_message_bytes=1 << 20, chunk_bytes=1 << 16, mode="tdgan",
                                tdgan_config_json=config_json(TDGANConfig(width=16)), image_shape=[1, 8, 8])

    async def Session(self, request_iterator, context):
        async for msg in request_iterator:
            self.heartbeats += msg.WhichOneof("kind") == "heartbeat"


def test_edge_detects_a_silent_cloud_and_reconnects(digits) -> None:
    async def main() -> SilentCloud:
        servicer = SilentCloud()
        server = grpc.aio.server()
        pb_grpc.add_EdgeGANServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        edge = asyncio.ensure_future(run_tdgan_edge(EdgeNode("e0", digits.subset(range(50))),
                                                    EdgeConnection(f"127.0.0.1:{port}", retry_s=30)))
        for _ in range(300):  # until it has noticed the silence and registered again
            if servicer.registrations >= 2 or edge.done():
                break
            await asyncio.sleep(0.1)
        assert not edge.done(), edge.exception() if edge.done() else None
        edge.cancel()
        with pytest.raises(asyncio.CancelledError):
            await edge
        await server.stop(0)
        return servicer

    servicer = asyncio.run(main())
    assert servicer.registrations == 2
    assert servicer.heartbeats >= 3  # the edge kept sending its own heartbeats (every 0.2 s) meanwhile
