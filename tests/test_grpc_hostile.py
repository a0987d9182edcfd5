"""Hostile peers cannot exhaust the cloud (issue 14).

A real ``edgegan cloud`` trains with one honest ``edgegan edge`` while an adversarial client,
written from ``protos/edgegan/v1/edgegan.proto`` alone (requests hand-encoded as protobuf wire
bytes, raw gRPC calls), attacks it. Every attack asserts the status it gets, that the cloud's
RSS (sampled from /proc every 10 ms) peaks and ends within a stated bound of its level just
before, and that the honest edge's generator steps per second stay at least half of the rate
measured just before the attack.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import grpc
import pytest

from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.tdgan.cloud import capped_shares
from grpc_procs import Procs, make_certs, scrape, start_cloud, start_edge, write_config

# The attacks compare the honest edge's step rate with a baseline taken seconds before: other tests
# running beside them would move that rate, so these run alone (`make test`'s second pass).
pytestmark = pytest.mark.timing
MiB = 1 << 20
METHOD = "/edgegan.v1.EdgeGAN/"
FEEDBACK_TIMEOUT_S = 3.0
# RSS growth bounds. Measured over 3 full runs (2 shared cores, other jobs running): peak
# +0.0 … +0.7 MiB, kept +0.0 … +0.7 MiB on every attack (notes/issue-14.md); with grpc's BDP
# probing on, the unauthenticated attack peaked at +14 MiB. The unguarded cloud of the issue
# peaked at +2.1 GB and kept +1.97 GB.
PEAK_MIB = 4.0
KEPT_MIB = 4.0


# ---------------------------------------------------------------- protobuf wire format by hand
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives are 10-byte two's complement
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def register_bytes(node_id: str, n_samples: int, histogram: bytes) -> bytes:
    """RegisterRequest{node_id=1, n_samples=2, label_histogram=3 (packed varints)}."""
    return field(1, node_id.encode()) + varint(2 << 3) + varint(n_samples) + field(3, histogram)


def histogram(counts: list[int]) -> bytes:
    return b"".join(varint(c) for c in counts)


def stats_bytes(n: int) -> bytes:
    """``n`` entries of FeedbackReply.stats (map<string, double>: repeated {key=1, value=2})."""
    return b"".join(field(3, field(1, f"s{i}".encode()) + varint(2 << 3 | 1) + struct.pack("<d", 0.0))
                    for i in range(n))


def zero_reply_bytes(step: int, shape: tuple[int, ...], stats: bytes) -> bytes:
    """EdgeMessage{reply=1: FeedbackReply{step=1, grad=2: Tensor{dtype, shape, data}, stats=3}}, grad 0."""
    tensor = field(1, b"float32") + field(2, b"".join(varint(s) for s in shape)) + field(3, bytes(4 * math.prod(shape)))
    return field(1, varint(1 << 3) + varint(step) + field(2, tensor) + stats)


HEARTBEAT = field(2, varint(1 << 3 | 1) + struct.pack("<d", 0.0))


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def raw_unary(port: int, method: str, body: bytes, token: str, channel_creds=None) -> grpc.StatusCode:
    target = f"127.0.0.1:{port}"
    ch = grpc.aio.secure_channel(target, channel_creds) if channel_creds else grpc.aio.insecure_channel(target)
    async with ch:
        call = ch.unary_unary(METHOD + method)  # no serializers: bytes in, bytes out
        try:
            await call(body, metadata=md(token), timeout=60)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            return e.code()


def concurrently(*coros) -> list[grpc.StatusCode]:
    async def main():
        return await asyncio.gather(*coros)
    return asyncio.run(main())


# ---------------------------------------------------------------- measuring the cloud
def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def step_rate(mport: int, seconds: float) -> float:
    s0, t0 = scrape(mport)["edgegan_generator_step"], time.monotonic()
    time.sleep(seconds)
    return (scrape(mport)["edgegan_generator_step"] - s0) / (time.monotonic() - t0)


@contextmanager
def under_attack(cloud: dict, label: str, stall_s: float = 0.0, peak_mib: float = PEAK_MIB,
                 kept_mib: float = KEPT_MIB) -> Iterator[None]:
    """Baseline rate and RSS, then the attack (the block) while RSS is sampled every 10 ms and the
    generator step every 0.1 s; asserts peak / retained RSS growth and a step rate of at least ½
    baseline over the attack. ``stall_s`` > 0: one stall (no generator step) of up to ``stall_s``
    is allowed and left out of the rate window."""
    pid, mport = cloud["pid"], cloud["metrics"]
    baseline = step_rate(mport, 2.0)
    assert baseline > 2, f"honest edge not training ({baseline:.1f} steps/s)"
    rss0 = rss_mib(pid)
    peak, longest, done = [rss0], [0.0], threading.Event()

    def sample() -> None:
        last_step, since, next_scrape = -1.0, time.monotonic(), 0.0
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            now = time.monotonic()
            if stall_s > 0 and now >= next_scrape:
                step, next_scrape = scrape(mport)["edgegan_generator_step"], now + 0.1
                if step != last_step:
                    last_step, since = step, now
                longest[0] = max(longest[0], now - since)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    s0, t0 = scrape(mport)["edgegan_generator_step"], time.monotonic()
    try:
        yield
        elapsed = max(time.monotonic() - t0, 2.0)  # short attacks: rate over at least 2 s
        time.sleep(max(0.0, t0 + elapsed - time.monotonic()))
        rate = (scrape(mport)["edgegan_generator_step"] - s0) / elapsed
    finally:
        done.set()
        sampler.join()
    time.sleep(1.0)  # let the cloud release what the attack made it hold
    kept = rss_mib(pid) - rss0
    print(f"{label}: steps/s {baseline:.1f} -> {rate:.1f}, RSS {rss0:.0f} MiB, peak +{peak[0] - rss0:.1f}, "
          f"kept +{kept:.1f} MiB" + (f", longest stall {longest[0]:.2f} s" if stall_s else ""))
    assert longest[0] <= stall_s or not stall_s, f"{label}: the honest edge stalled {longest[0]:.1f} s > {stall_s} s"
    floor = baseline / 2 * (elapsed - longest[0]) / elapsed
    assert rate >= floor, f"{label}: honest rate {rate:.1f} < {floor:.1f} steps/s (baseline {baseline:.1f})"
    assert peak[0] - rss0 <= peak_mib, f"{label}: RSS peaked {peak[0] - rss0:.1f} MiB above {rss0:.0f}"
    assert kept <= kept_mib, f"{label}: RSS kept {kept:.1f} MiB above {rss0:.0f}"


# ---------------------------------------------------------------- the cloud under test
@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = write_config(tmp / "cloud.yaml", tokens={"e0": "t0", "mal": "tm", "mute": "tq"}, steps=10 ** 7,
                       feedback_timeout_s=FEEDBACK_TIMEOUT_S, heartbeat_timeout_s=6.0, eval_dataset=None,
                       checkpoint_every=10 ** 6, log_every=10 ** 6, guard={"timeout_bench_s": 30.0})
    procs = Procs(tmp)
    try:
        p, port, mport = start_cloud(procs, cfg)
        edge = start_edge(procs, port, "e0", "t0", "0,1,2,3,4")
        deadline = time.monotonic() + 90
        while scrape(mport)["edgegan_generator_step"] < 20:
            assert edge.poll() is None, procs.log(edge)[-3000:]
            assert time.monotonic() < deadline, procs.log(p)[-3000:]
            time.sleep(0.2)
        yield {"port": port, "metrics": mport, "pid": p.pid, "procs": procs, "proc": p}
    finally:
        procs.kill_all()


def test_unauthenticated_50mb_registers_cost_a_constant(cloud) -> None:
    """The issue's first attack: 57 MiB histograms with no credential. The token is checked before
    the body is read, so the cloud never buffers it (the unguarded cloud grew by 2 GB)."""
    body = register_bytes("e0", 1, b"\x01" * (50 * MiB))
    with under_attack(cloud, "unauthenticated 2×50 MB Register"):
        for _ in range(2):
            codes = concurrently(*(raw_unary(cloud["port"], "Register", body, "stolen?") for _ in range(2)))
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2


def test_authenticated_oversized_or_malformed_registers_are_refused_cheaply(cloud) -> None:
    """A valid token buys no more: 50 MB exceeds gRPC's receive limit (the largest per-RPC limit,
    here a few tens of KiB), 20 KB exceeds Register's own limit and is refused before parsing;
    a wrong class count or an n_samples of 2^62 is refused before the servicer converts it."""
    port = cloud["port"]
    big = register_bytes("mal", 1, b"\x01" * (50 * MiB))
    over = register_bytes("mal", 20_000, histogram([1] * 20_000))
    wrong_k = register_bytes("mal", 11, histogram([1] * 11))
    forged_n = register_bytes("mal", 2 ** 62, histogram([2 ** 62] + [0] * 9))
    with under_attack(cloud, "authenticated 3×50 MB + malformed Register"):
        assert concurrently(*(raw_unary(port, "Register", big, "tm") for _ in range(3))) == \
            [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        assert concurrently(raw_unary(port, "Register", over, "tm"), raw_unary(port, "Register", wrong_k, "tm"),
                            raw_unary(port, "Register", forged_n, "tm")) == \
            [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT]
    ok = register_bytes("mal", 10, histogram([1] * 10))
    assert asyncio.run(raw_unary(port, "Register", ok, "tm")) == grpc.StatusCode.OK  # the control


async def _join_and_answer(port: int, token: str, node: str, answer) -> grpc.StatusCode:
    """Register ``node``, open a Session, reply to the first fake batch with ``answer(step, shape)``
    (raw bytes) and return the stream's final status."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await ch.unary_unary(METHOD + "Register")(register_bytes(node, 10, histogram([1] * 10)),
                                                   metadata=md(token), timeout=20)
        call = ch.stream_stream(METHOD + "Session", response_deserializer=pb.CloudMessage.FromString)(
            metadata=md(token), timeout=30)
        try:
            while True:
                msg = await call.read()
                assert msg is not grpc.aio.EOF
                if msg.WhichOneof("kind") == "request":
                    break
            await call.write(answer(msg.request.step, tuple(msg.request.fake.shape)))
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
        return await call.code()


def test_huge_or_long_stats_maps_are_refused_and_the_honest_edge_keeps_its_pace(cloud) -> None:
    """A 1,000,000-entry stats map (~17 MB) is refused for size before parsing; 17 entries (over
    guard.max_stats = 16) are refused as malformed feedback."""
    port, mport = cloud["port"], cloud["metrics"]
    key = 'edgegan_feedback_rejected_total{reason="malformed"}'
    malformed = scrape(mport)[key]

    huge, long = stats_bytes(10 ** 6), stats_bytes(17)
    with under_attack(cloud, "stats maps of 10^6 and 17 entries"):
        for stats, code in ((huge, grpc.StatusCode.RESOURCE_EXHAUSTED), (long, grpc.StatusCode.INVALID_ARGUMENT)):
            got = asyncio.run(_join_and_answer(port, "tm", "mal", lambda s, sh: zero_reply_bytes(s, sh, stats)))
            assert got == code, (len(stats), got)
    assert scrape(mport)[key] == malformed + 1


def test_register_and_session_churn_is_rate_limited(cloud) -> None:
    """One node opens Register and Session calls ~20 times a second for 4 s: a burst of
    guard.call_burst = 10 each plus guard.calls_per_s = 0.5 per second is served, every other call
    is RESOURCE_EXHAUSTED, and the honest edge keeps at least half its pace."""
    port = cloud["port"]
    ok = register_bytes("mal", 10, histogram([1] * 10))

    async def churn(seconds: float) -> tuple[list[grpc.StatusCode], list[grpc.StatusCode]]:
        regs, sessions = [], []
        end = time.monotonic() + seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            while time.monotonic() < end:
                try:
                    await ch.unary_unary(METHOD + "Register")(ok, metadata=md("tm"), timeout=10)
                    regs.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as e:
                    regs.append(e.code())
                call = ch.stream_stream(METHOD + "Session")(metadata=md("tm"), timeout=10)
                await call.done_writing()
                try:
                    while await call.read() is not grpc.aio.EOF:
                        pass
                    sessions.append(await call.code())
                except grpc.aio.AioRpcError as e:
                    sessions.append(e.code())
                await asyncio.sleep(0.05)  # ~20 tries/s: far above the limit, without starving the 2 cores
        return regs, sessions

    time.sleep(3.0)  # earlier tests spent some of the node's burst
    with under_attack(cloud, "4 s of Register + Session churn from one node"):
        regs, sessions = asyncio.run(churn(4.0))
    served = 10 + 0.5 * 4.0 + 1
    for calls in (regs, sessions):
        assert len(calls) > 2 * served, len(calls)  # the attacker did try far more often
        assert 10 <= calls.count(grpc.StatusCode.OK) <= served, calls
        assert set(calls) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(calls)


def test_a_member_that_heartbeats_but_never_answers_costs_one_deadline(cloud) -> None:
    """Joins, heartbeats, never answers: the honest edge stalls at most one feedback deadline, the
    node is dropped (π back to the honest node alone), counted in
    edgegan_feedback_timeouts_total, and may not reopen a Session while benched."""
    port, mport = cloud["port"], cloud["metrics"]
    timeouts = scrape(mport)["edgegan_feedback_timeouts_total"]
    reasons: list[tuple[str, str] | str] = []

    async def mute() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await ch.unary_unary(METHOD + "Register")(register_bytes("mute", 10, histogram([1] * 10)),
                                                       metadata=md("tq"), timeout=20)
            call = ch.stream_stream(METHOD + "Session")(metadata=md("tq"), timeout=30)
            closing = asyncio.Event()

            async def heartbeat() -> None:  # until the cloud's Closing, then half-close (the protocol)
                while not closing.is_set():
                    await call.write(HEARTBEAT)
                    await asyncio.wait([asyncio.ensure_future(closing.wait())], timeout=0.3)
                await call.done_writing()

            hb = asyncio.ensure_future(heartbeat())
            try:
                while (raw := await call.read()) is not grpc.aio.EOF:
                    msg = pb.CloudMessage.FromString(raw)
                    if msg.WhichOneof("kind") == "closing":
                        reasons.append((msg.closing.code, msg.closing.reason))
                        closing.set()
                code = await call.code()
            except grpc.aio.AioRpcError as e:
                code = e.code()
            finally:
                closing.set()
                await asyncio.wait([hb], timeout=5)
            again = ch.stream_stream(METHOD + "Session")(metadata=md("tq"), timeout=10)
            try:
                raw = await again.read()  # Closing (RESOURCE_EXHAUSTED): half-close, then read the status
                reasons.append(pb.CloudMessage.FromString(raw).closing.code)
                await again.done_writing()
                benched = await again.code()
            except grpc.aio.AioRpcError as e:
                benched = e.code()
            return code, benched

    t0 = time.monotonic()
    with under_attack(cloud, "heartbeating member that never answers", stall_s=FEEDBACK_TIMEOUT_S + 1.0):
        code, benched = asyncio.run(mute())
        dropped_after = time.monotonic() - t0
        time.sleep(FEEDBACK_TIMEOUT_S)  # the rate is also taken after the (allowed) stall
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and benched == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reasons == [("DEADLINE_EXCEEDED", f"no feedback within {FEEDBACK_TIMEOUT_S:g} s"), "RESOURCE_EXHAUSTED"]
    assert dropped_after < FEEDBACK_TIMEOUT_S + 3.0
    assert scrape(mport)["edgegan_feedback_timeouts_total"] == timeouts + 1
    assert scrape(mport)["edgegan_nodes_online"] == 1


def test_client_certificate_must_name_the_tokens_node(tmp_path) -> None:
    """Mutual TLS: edge-1's certificate with edge-0's token is PERMISSION_DENIED; edge-0's is served."""
    certs = make_certs(tmp_path / "certs", ("e0", "e1"))
    cfg = write_config(tmp_path / "cloud.yaml", tokens={"e0": "t0", "e1": "t1"}, eval_dataset=None,
                       tls={"cert": str(certs["server.cert"]), "key": str(certs["server.key"]),
                            "client_ca": str(certs["ca"])})
    procs = Procs(tmp_path)

    def creds(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(certs["ca"].read_bytes(), certs[f"{name}.key"].read_bytes(),
                                            certs[f"{name}.cert"].read_bytes())

    try:
        _, port, _ = start_cloud(procs, cfg, tls_ca=certs["ca"], tls_client=(certs["e0.cert"], certs["e0.key"]))
        body = register_bytes("e0", 10, histogram([1] * 10))
        assert concurrently(raw_unary(port, "Register", body, "t0", creds("e1")),
                            raw_unary(port, "Register", body, "t0", creds("e0"))) == \
            [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK]
    finally:
        procs.kill_all()


def test_no_node_weighs_more_than_max_share() -> None:
    """π_k ∝ n_k capped at tdgan.max_share, the rest renormalised (water-filling)."""
    pi = capped_shares({"forger": 2 ** 62, "a": 1797, "b": 599}, 0.5)
    assert pi["forger"] == pytest.approx(0.5) and pi["a"] / pi["b"] == pytest.approx(3.0)
    assert sum(pi.values()) == pytest.approx(1.0)
    assert capped_shares({"a": 3, "b": 1}, 1.0) == {"a": 0.75, "b": 0.25}  # no cap: seed 003's π
    assert capped_shares({"a": 9, "b": 1, "c": 1}, 0.2) == pytest.approx({k: 1 / 3 for k in "abc"})


def test_rpc_limits_follow_the_run_shapes_and_bad_guard_keys_are_one_line_errors() -> None:
    from edgegan.errors import EdgeganError
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.guard import GuardConfig, rpc_limits

    small = CloudConfig(tokens={"e0": "t"}, image_shape=[1, 8, 8], num_classes=10)
    big = CloudConfig(tokens={"e0": "t"}, image_shape=[3, 32, 32], num_classes=100, mode="coalesce")
    big.tdgan.batch_size = 64
    s, b = rpc_limits(small).per_rpc, rpc_limits(big).per_rpc
    assert s["Register"] < 2048 < b["Register"]  # a 10-class Register is ~1 KiB, not 64 MiB
    assert 4 * 4 * 64 * 64 < s["Session"] < 128 * 1024 and b["Session"] > 4 * 4 * 64 * 3 * 32 * 32
    assert s["UploadModels"] == 1024 and b["UploadModels"] == big.chunk_bytes + 4096
    assert rpc_limits(small).receive == max(s.values()) < small.max_message_bytes
    custom = CloudConfig(tokens={"e0": "t"}, guard=GuardConfig(register_max_bytes=4096))
    assert rpc_limits(custom).per_rpc["Register"] == 4096
    with pytest.raises(EdgeganError, match=r"^guard\.calls_per_s"):
        CloudConfig(tokens={"e0": "t"}, guard=GuardConfig(calls_per_s=0)).validate()
