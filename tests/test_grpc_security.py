"""Security of the cloud process: mutual TLS, per-node bearer tokens, identity binding, and
feedback validation that leaves the generator bit-identical (issue 7)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import torch

from edgegan.runtime.grpc_edge import EdgeConnection, download_models
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
from edgegan.runtime.tensor_codec import encode_tensor
from grpc_procs import Procs, make_certs, scrape, start_cloud, write_config

TOKENS = {"e0": "t0", "mal": "tm", **{f"n{i:03d}": f"s{i}" for i in range(200)}}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    certs = make_certs(tmp / "certs", ("client",))
    cfg = write_config(tmp / "cloud.yaml", tokens=TOKENS, steps=100000, max_message_bytes=1 << 20,
                       chunk_bytes=256 << 10,
                       guard={"bind_certificate": False},  # one client certificate for 200 node ids
                       tls={"cert": str(certs["server.cert"]), "key": str(certs["server.key"]),
                            "client_ca": str(certs["ca"])})
    procs = Procs(tmp)
    try:
        p, port, mport = start_cloud(procs, cfg, tls_ca=certs["ca"],
                                     tls_client=(certs["client.cert"], certs["client.key"]))
        yield {"port": port, "metrics": mport, "certs": certs, "pid": p.pid}
    finally:
        procs.kill_all()


def _conn(cloud: dict, token: str, client_cert: bool = True) -> EdgeConnection:
    c = cloud["certs"]
    return EdgeConnection(f"127.0.0.1:{cloud['port']}", token, str(c["ca"]),
                          str(c["client.cert"]) if client_cert else None,
                          str(c["client.key"]) if client_cert else None, max_message_bytes=32 << 20)


def _register_req(node_id: str) -> pb.RegisterRequest:
    return pb.RegisterRequest(node_id=node_id, n_samples=10, label_histogram=[1] * 10)


async def _call_register(conn: EdgeConnection, node_id: str) -> pb.RegisterReply:
    async with conn.channel() as ch:
        return await pb_grpc.EdgeGANStub(ch).Register(_register_req(node_id), metadata=conn.metadata(node_id),
                                                      timeout=20)


def _code(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        asyncio.run(coro)
    return e.value.code()


def test_valid_token_and_client_certificate_register(cloud) -> None:
    reply = asyncio.run(_call_register(_conn(cloud, "t0"), "e0"))
    assert reply.mode == "tdgan" and list(reply.image_shape) == [1, 8, 8]
    assert reply.max_message_bytes == 1 << 20


def test_wrong_or_missing_token_is_unauthenticated(cloud) -> None:
    assert _code(_call_register(_conn(cloud, "not-a-token"), "e0")) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(_call_register(_conn(cloud, ""), "e0")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_node_may_only_speak_for_its_own_id(cloud) -> None:
    assert _code(_call_register(_conn(cloud, "t0"), "mal")) == grpc.StatusCode.PERMISSION_DENIED


def test_plaintext_and_certificate_less_clients_are_refused(cloud) -> None:
    plain = EdgeConnection(f"127.0.0.1:{cloud['port']}", "t0")
    assert _code(_call_register(plain, "e0")) == grpc.StatusCode.UNAVAILABLE
    assert _code(_call_register(_conn(cloud, "t0", client_cert=False), "e0")) == grpc.StatusCode.UNAVAILABLE


def _generator(cloud: dict) -> dict[str, torch.Tensor]:
    models, _ = asyncio.run(download_models("mal", _conn(cloud, "tm"), "generator", 0))
    return {k: v.clone() for k, v in models["generator"].state_dict().items()}


def _bad_reply(kind: str, fake: torch.Tensor) -> pb.Tensor:
    g = torch.randn_like(fake) * 1e-3
    if kind == "good":
        return encode_tensor(g)
    if kind == "nan":
        g[0, 0, 0, 0] = float("nan")
        return encode_tensor(g)
    if kind == "malformed":
        t = encode_tensor(g)
        t.data = t.data[:-4]
        return t
    if kind == "dtype":
        return encode_tensor(g.double())
    if kind == "shape":
        return encode_tensor(torch.cat([g, g]))
    if kind == "norm":
        return encode_tensor(g * 1e6)
    if kind == "oversized":
        return encode_tensor(torch.zeros(1 << 20))  # 4 MiB > the cloud's 1 MiB message limit
    raise ValueError(kind)


async def _one_exchange(conn: EdgeConnection, kind: str) -> grpc.StatusCode:
    """Join as 'mal', answer the first fake batch with a ``kind`` reply; the stream's final status."""
    async with conn.channel() as ch:
        stub = pb_grpc.EdgeGANStub(ch)
        await stub.Register(_register_req("mal"), metadata=conn.metadata("mal"), timeout=20)
        call = stub.Session(metadata=conn.metadata("mal"), timeout=30)
        while True:
            msg = await call.read()
            assert msg is not grpc.aio.EOF
            if msg.WhichOneof("kind") == "request":
                break
        r = msg.request
        fake = torch.frombuffer(bytearray(r.fake.data), dtype=torch.float32).reshape(tuple(r.fake.shape))
        await call.write(pb.EdgeMessage(reply=pb.FeedbackReply(step=r.step, grad=_bad_reply(kind, fake))))
        if kind == "good":
            await asyncio.sleep(1.0)  # let the cloud take its generator step, then leave
            call.cancel()
            return grpc.StatusCode.OK
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
        return await call.code()


@pytest.mark.parametrize("kind, code, reason", [
    ("nan", grpc.StatusCode.INVALID_ARGUMENT, "nonfinite"),
    ("malformed", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    ("dtype", grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    ("shape", grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ("norm", grpc.StatusCode.INVALID_ARGUMENT, "norm"),
    ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, None),
])
def test_bad_feedback_is_refused_and_the_generator_is_bit_identical(cloud, kind, code, reason) -> None:
    before = _generator(cloud)
    rejected = scrape(cloud["metrics"]).get(f'edgegan_feedback_rejected_total{{reason="{reason}"}}', 0.0)
    assert asyncio.run(_one_exchange(_conn(cloud, "tm"), kind)) == code
    after = _generator(cloud)
    assert all(torch.equal(before[k], after[k]) for k in before)
    if reason is not None:
        got = scrape(cloud["metrics"])[f'edgegan_feedback_rejected_total{{reason="{reason}"}}']
        assert got == rejected + 1


def test_good_feedback_does_move_the_generator(cloud) -> None:
    """The control for the test above: the same path with valid feedback changes G."""
    before = _generator(cloud)
    assert asyncio.run(_one_exchange(_conn(cloud, "tm"), "good")) == grpc.StatusCode.OK
    after = _generator(cloud)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_silent_node_is_dropped_after_missed_heartbeats(cloud) -> None:
    """A peer whose TCP connection stays up but that stops talking (hung process) leaves."""
    conn = _conn(cloud, "t0")
    leaves = scrape(cloud["metrics"])["edgegan_leaves_total"]

    async def silent() -> tuple[grpc.StatusCode, float]:
        async with conn.channel() as ch:
            stub = pb_grpc.EdgeGANStub(ch)
            await stub.Register(_register_req("e0"), metadata=conn.metadata("e0"), timeout=20)
            call = stub.Session(metadata=conn.metadata("e0"), timeout=60)
            t0 = asyncio.get_running_loop().time()
            try:
                while await call.read() is not grpc.aio.EOF:
                    pass  # read, never answer, never heartbeat
            except grpc.aio.AioRpcError as e:
                return e.code(), asyncio.get_running_loop().time() - t0
            return await call.code(), asyncio.get_running_loop().time() - t0

    code, seconds = asyncio.run(silent())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 2.5 < seconds < 20  # heartbeat_timeout_s = 3
    for _ in range(50):  # the leave is applied before the cloud's next step
        if scrape(cloud["metrics"])["edgegan_leaves_total"] == leaves + 1:
            break
        time.sleep(0.1)
    assert scrape(cloud["metrics"])["edgegan_leaves_total"] == leaves + 1


def test_hundreds_of_streams_share_one_event_loop(cloud) -> None:
    """200 nodes online at once over 4 TLS channels: the cloud steps with all of them while its
    thread count stays flat (grpc.aio: a stream is a coroutine, not a thread)."""
    n = 200

    def threads() -> int:
        for line in open(f"/proc/{cloud['pid']}/status"):
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line")

    idle_threads = threads()

    async def main() -> tuple[int, float, float]:
        stop = asyncio.Event()
        conns = [_conn(cloud, "") for _ in range(4)]
        channels = [c.channel() for c in conns]

        async def node(i: int) -> None:
            md = (("authorization", f"Bearer s{i}"),)
            stub = pb_grpc.EdgeGANStub(channels[i % len(channels)])
            await stub.Register(_register_req(f"n{i:03d}"), metadata=md, timeout=60)
            call = stub.Session(metadata=md)
            try:
                while not stop.is_set():
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    if msg.WhichOneof("kind") == "request":
                        r = msg.request
                        grad = encode_tensor(torch.full(tuple(r.fake.shape), 1e-4))
                        await call.write(pb.EdgeMessage(reply=pb.FeedbackReply(step=r.step, grad=grad)))
            finally:
                call.cancel()

        tasks = [asyncio.ensure_future(node(i)) for i in range(n)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while scrape(cloud["metrics"])["edgegan_nodes_online"] < n:
            assert loop.time() < deadline, scrape(cloud["metrics"])["edgegan_nodes_online"]
            await asyncio.sleep(0.2)
        m0 = scrape(cloud["metrics"])
        busy_threads = threads()
        while scrape(cloud["metrics"])["edgegan_generator_step"] < m0["edgegan_generator_step"] + 3:
            assert loop.time() < deadline
            await asyncio.sleep(0.1)
        m1 = scrape(cloud["metrics"])
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
        count = "edgegan_feedback_roundtrip_seconds_count"
        return busy_threads, m1[count] - m0[count], m1["edgegan_nodes_online"]

    busy_threads, replies, online = asyncio.run(main())
    assert online == n
    assert replies >= 2 * n  # at least two full steps with every one of the 200 nodes answering
    print(f"cloud threads: {idle_threads} idle, {busy_threads} with {n} streams; {replies:.0f} replies")
    assert busy_threads <= idle_threads + 4, (idle_threads, busy_threads)
