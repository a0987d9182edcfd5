"""Every way the cloud ends a Session stream reaches the edge as the cloud's own status and reason.

A real ``edgegan cloud`` process ends streams for four reasons: a member misses its feedback
deadline (dropped, then benched), a newer stream of the same node supersedes it, the guard
refuses a message on it, and the cloud shuts down. Each ending is repeated many times against a
client that writes as fast as it can until the cloud's ``Closing`` arrives and then half-closes,
the worst case for the race in which a write in flight turns the status into grpc's
``INTERNAL: Internal error from Core``. Before the cloud drained its streams, the dropped member
read INTERNAL in 6 of 35 runs of the hostile-peer test.
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from grpc_procs import Procs, start_cloud, write_config

METHOD = "/edgegan.v1.EdgeGAN/"
REPEATS = 50
TOKENS = {f"n{i}": f"tok{i}" for i in range(REPEATS)}
HEARTBEAT = pb.EdgeMessage(heartbeat=pb.Heartbeat(time_s=0.0))


def md(node: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[node]}"),)


async def register(ch: grpc.aio.Channel, node: str) -> None:
    call = ch.unary_unary(METHOD + "Register", request_serializer=pb.RegisterRequest.SerializeToString,
                          response_deserializer=pb.RegisterReply.FromString)
    await call(pb.RegisterRequest(node_id=node, n_samples=10, label_histogram=[1] * 10), metadata=md(node),
               timeout=20)


class Member:
    """One Session that writes ``message`` every 2 ms until it reads ``Closing``, then half-closes."""

    def __init__(self, ch: grpc.aio.Channel, node: str, message: pb.EdgeMessage = HEARTBEAT) -> None:
        self.call = ch.stream_stream(METHOD + "Session", request_serializer=pb.EdgeMessage.SerializeToString,
                                     response_deserializer=pb.CloudMessage.FromString)(metadata=md(node), timeout=60)
        self.message = message
        self.closing: pb.Closing | None = None
        self.opened = asyncio.Event()

    async def run(self) -> tuple[str, pb.Closing | None]:
        """(status code name, the Closing message read before it)."""
        stop = asyncio.Event()

        async def write() -> None:
            while not stop.is_set():
                await self.call.write(self.message)
                self.opened.set()
                await asyncio.sleep(0.002)
            await self.call.done_writing()

        writer = asyncio.ensure_future(write())
        try:
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                if msg.WhichOneof("kind") == "closing":
                    self.closing = msg.closing
                    stop.set()
            code = (await self.call.code()).name
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        finally:
            stop.set()
            await asyncio.wait([writer], timeout=5)
            writer.cancel()
        return code, self.closing


def assert_all(results: list[tuple[str, pb.Closing | None]], code: str, reason: str) -> None:
    codes = [c for c, _ in results]
    assert codes == [code] * len(results), f"statuses: {sorted(set(codes))} ({codes.count(code)} of {len(codes)})"
    for _, closing in results:
        assert closing is not None and closing.code == code and reason in closing.reason, closing


def start(tmp_path, start_nodes: int, bench_s: float = 0.0) -> dict:
    cfg = write_config(tmp_path / "cloud.yaml", tokens=TOKENS, start_nodes=start_nodes, min_nodes=1, steps=100000,
                       feedback_timeout_s=0.5, eval_dataset=None,
                       guard={"calls_per_s": 1000.0, "call_burst": 1000, "timeout_bench_s": bench_s})
    procs = Procs(tmp_path)
    p, port, _ = start_cloud(procs, cfg)
    return {"proc": p, "port": port, "procs": procs}


@pytest.fixture
def cloud(tmp_path):
    """A cloud that never steps (it waits for more nodes than ever join)."""
    c = start(tmp_path, start_nodes=len(TOKENS))
    yield c
    c["procs"].kill_all()


@pytest.fixture
def stepping_cloud(tmp_path):
    """A cloud that steps with one node, drops a member after 0.5 s without feedback and benches
    nobody (so that the same member can be dropped again and again)."""
    c = start(tmp_path, start_nodes=1)
    yield c
    c["procs"].kill_all()


def test_superseded_streams_read_aborted_and_the_reason(cloud) -> None:
    async def main() -> list[tuple[str, pb.Closing | None]]:
        out = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cloud['port']}") as ch:
            await register(ch, "n0")
            old = Member(ch, "n0", pb.EdgeMessage())  # an empty message: nothing to answer, no step
            running = asyncio.ensure_future(old.run())
            for _ in range(REPEATS):
                await asyncio.wait_for(old.opened.wait(), 10)
                new = Member(ch, "n0", pb.EdgeMessage())
                nxt = asyncio.ensure_future(new.run())
                out.append(await asyncio.wait_for(running, 20))
                old, running = new, nxt
            running.cancel()
        return out

    assert_all(asyncio.run(main()), "ABORTED", "superseded by a newer stream")


def test_refused_feedback_reads_invalid_argument_and_the_reason(cloud) -> None:
    bad = pb.EdgeMessage(reply=pb.FeedbackReply(step=0, stats={f"s{i}": 0.0 for i in range(17)}))

    async def main() -> list[tuple[str, pb.Closing | None]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cloud['port']}") as ch:
            await register(ch, "n1")
            return [await asyncio.wait_for(Member(ch, "n1", bad).run(), 20) for _ in range(REPEATS)]

    assert_all(asyncio.run(main()), "INVALID_ARGUMENT", "feedback.stats: 17 entries")


def test_a_member_dropped_for_its_deadline_reads_deadline_exceeded_and_the_reason(stepping_cloud) -> None:
    """Heartbeats, never answers: each time the cloud steps, waits 0.5 s and drops it."""
    async def main() -> list[tuple[str, pb.Closing | None]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stepping_cloud['port']}") as ch:
            await register(ch, "n2")
            return [await asyncio.wait_for(Member(ch, "n2").run(), 20) for _ in range(REPEATS // 2)]

    assert_all(asyncio.run(main()), "DEADLINE_EXCEEDED", "no feedback within 0.5 s")


def test_a_benched_member_reads_resource_exhausted_and_the_reason(tmp_path) -> None:
    """Dropped for its deadline, then refused a new Session while benched: both with Closing."""
    c = start(tmp_path, start_nodes=1, bench_s=60.0)

    async def main() -> list[tuple[str, pb.Closing | None]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c['port']}") as ch:
            await register(ch, "n2")
            first = await asyncio.wait_for(Member(ch, "n2").run(), 20)
            return [first] + [await asyncio.wait_for(Member(ch, "n2").run(), 20) for _ in range(REPEATS // 2)]

    try:
        results = asyncio.run(main())
    finally:
        c["procs"].kill_all()
    assert_all(results[:1], "DEADLINE_EXCEEDED", "no feedback within 0.5 s")
    assert_all(results[1:], "RESOURCE_EXHAUSTED", "missed its feedback deadline")


def test_shutdown_reads_unavailable_and_the_reason_on_every_stream(cloud) -> None:
    async def main() -> list[tuple[str, pb.Closing | None]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cloud['port']}") as ch:
            nodes = [f"n{i}" for i in range(3, 3 + 24)]
            for n in nodes:
                await register(ch, n)
            members = [Member(ch, n, pb.EdgeMessage()) for n in nodes]
            runs = [asyncio.ensure_future(m.run()) for m in members]
            await asyncio.wait_for(asyncio.gather(*(m.opened.wait() for m in members)), 20)
            await asyncio.sleep(0.3)
            cloud["proc"].send_signal(signal.SIGTERM)
            return list(await asyncio.wait_for(asyncio.gather(*runs), 30))

    assert_all(asyncio.run(main()), "UNAVAILABLE", "the cloud is shutting down")
    assert cloud["procs"].wait(cloud["proc"], 30) == 0
