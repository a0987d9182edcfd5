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


def test_cloud_heartbeats_an_idle_stream_on_its_interval(tmp_path) -> None:
    """The cloud's side: a Session with nothing to carry (the run waits for a second node) gets a
    heartbeat about every ``heartbeat_interval_s`` from the writer's timer: neither silence, which
    an edge would take for a dead cloud, nor one per loop turn."""
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.grpc_server import EdgeGANServicer, GrpcLink
    from edgegan.runtime.guard import Guard
    from edgegan.runtime.roles import TDGANServer

    interval = 0.2
    cfg = CloudConfig(allow_anonymous=True, steps=5, image_shape=[1, 8, 8], checkpoint_dir=str(tmp_path),
                      heartbeat_interval_s=interval, start_nodes=2, device="cpu", tdgan=TDGANConfig(width=16),
                      eval_dataset=None)

    async def main() -> list[float]:
        server = TDGANServer(cfg)
        guard = Guard(cfg, server.metrics)
        grpc_server = grpc.aio.server(interceptors=[guard], options=guard.server_options(cfg.max_message_bytes))
        pb_grpc.add_EdgeGANServicer_to_server(EdgeGANServicer(server, GrpcLink(server)), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        beats: list[float] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.EdgeGANStub(ch)
                md = (("x-edgegan-node-id", "e0"),)
                await stub.Register(pb.RegisterRequest(node_id="e0", n_samples=10, label_histogram=[1] * 10),
                                    metadata=md, timeout=20)
                call = stub.Session(metadata=md)
                loop = asyncio.get_running_loop()
                t_end = loop.time() + 12 * interval
                while (left := t_end - loop.time()) > 0:
                    try:
                        msg = await asyncio.wait_for(call.read(), left)
                    except asyncio.TimeoutError:
                        break
                    assert msg is not grpc.aio.EOF and msg.WhichOneof("kind") == "heartbeat", msg
                    beats.append(loop.time())
                call.cancel()
        finally:
            await grpc_server.stop(0)
            server.close()
            guard.close()
        return beats

    beats = asyncio.run(main())
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert len(beats) >= 6, beats  # ~11 in 12 intervals; at least half of them on a busy machine
    assert min(gaps) >= 0.8 * interval, gaps  # one per idle interval, not one per loop turn
