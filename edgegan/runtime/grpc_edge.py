"""An edge over gRPC: dials the cloud (works behind NAT), registers, then keeps one Session
stream open and answers fake batches with feedback; uploads / downloads models for the
coalescence pipeline. Reconnects with back-off when the cloud goes away, and rejoins with
the same id (same local discriminator) when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import grpc

from edgegan import __version__
from edgegan.config import from_dict
from edgegan.errors import EdgeganError, NodeCrashed
from edgegan.gan.train import WGANConfig
from edgegan.monitor.audit import AuditLog
from edgegan.runtime.grpc_server import channel_options
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
from edgegan.runtime.roles import EdgeNode
from edgegan.runtime.tensor_codec import (
    ChunkAssembler,
    decode_bundle,
    decode_tensor,
    encode_bundle,
    encode_tensor,
    iter_chunks,
)
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.messages import FeedbackRequest

log = logging.getLogger("edgegan.edge")
T = TypeVar("T")
AUDIT = AuditLog("edge")  # feedback sent, by (node, step), when EDGEGAN_AUDIT_DIR is set

# refusals that retrying cannot fix
FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


@dataclass
class EdgeConnection:
    """How an edge reaches the cloud: address, bearer token, TLS, limits and retry budget."""

    target: str
    token: str = ""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    max_message_bytes: int = 64 << 20
    retry_s: float = 60.0
    roles: tuple[str, ...] = ("tdgan",)

    def metadata(self, node_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"), ("x-edgegan-node-id", node_id))

    def channel(self) -> grpc.aio.Channel:
        opts = channel_options(self.max_message_bytes)
        if self.tls_ca is None:
            return grpc.aio.insecure_channel(self.target, options=opts)
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes(),
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None)
        return grpc.aio.secure_channel(self.target, creds, options=opts)


class CloudGone(Exception):
    """The cloud stopped answering (stream ended, heartbeats missed)."""


async def register(stub: pb_grpc.EdgeGANStub, node: EdgeNode, conn: EdgeConnection,
                   device: str = "cpu") -> pb.RegisterReply:
    """Announce the node (id, n_k, label histogram, capabilities)."""
    info = node.info()
    req = pb.RegisterRequest(node_id=info.node_id, n_samples=info.n_samples,
                             label_histogram=list(info.label_histogram),
                             capabilities=pb.Capabilities(device=device, roles=list(conn.roles), version=__version__))
    return await stub.Register(req, metadata=conn.metadata(node.node_id), timeout=30)


class _Stream:
    """One Session stream of one node: answer requests, heartbeat, watch the cloud's liveness.
    While the node computes a reply it is busy, not deaf: the liveness check waits for it."""

    def __init__(self, stub: pb_grpc.EdgeGANStub, node: EdgeNode, conn: EdgeConnection,
                 reg: pb.RegisterReply) -> None:
        self.call = stub.Session(metadata=conn.metadata(node.node_id))
        self.node, self.reg = node, reg
        self.lock = asyncio.Lock()
        self.closing = asyncio.Event()  # the cloud sent Closing: write nothing more
        self.last_heard = time.monotonic()
        self.busy = False

    async def send(self, msg: pb.EdgeMessage, step: int | None = None) -> None:
        """Write ``msg`` unless the stream is ending (``step``: a reply, audited as sent before it is
        handed to the call). A call that ended meanwhile (dropped while this node computed) is not
        an error here: the next read reports the cloud's status and :func:`retrying` rejoins."""
        async with self.lock:
            if self.closing.is_set() or self.call.done():
                return
            if step is not None:
                AUDIT.write("sent", node=self.node.node_id, step=step)
            try:
                await self.call.write(msg)
            except asyncio.InvalidStateError:
                pass

    async def heartbeat(self) -> None:
        reg = self.reg
        while True:
            await asyncio.sleep(reg.heartbeat_interval_s)
            try:
                await self.send(pb.EdgeMessage(heartbeat=pb.Heartbeat(time_s=time.time())))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call is over; the reading loop reports why
            silent = time.monotonic() - self.last_heard
            if not self.busy and silent > reg.heartbeat_timeout_s:
                log.warning("cloud silent for %.1f s: reconnecting", silent)
                self.call.cancel()
                return

    async def answer(self, r: pb.FeedbackRequest) -> None:
        """Decode a fake batch, compute this node's feedback (the edge role's ``answer``), reply."""
        shape = tuple(self.reg.image_shape)
        # values are checked where every backend's requests are, before D_k moves (check_request)
        fake = decode_tensor(r.fake, "fake", dtype="float32", max_elements=self.reg.max_message_bytes // 4)
        if tuple(fake.shape[1:]) != shape:
            raise EdgeganError("fake", f"cloud sent shape {tuple(fake.shape)}, registered {shape}")
        labels = decode_tensor(r.labels, "labels", dtype="int64", shape=(fake.shape[0],))
        next_labels = decode_tensor(r.next_labels, "next_labels", dtype="int64", max_elements=len(labels)
                                    ) if r.HasField("next_labels") else None
        self.busy = True
        try:
            req = FeedbackRequest(self.node.node_id, int(r.step), fake, labels, next_labels)
            reply = await self.node.answer(req)
        finally:
            self.busy, self.last_heard = False, time.monotonic()
        msg = pb.EdgeMessage()
        msg.reply.step = reply.step
        encode_tensor(reply.grad, msg.reply.grad)
        msg.reply.stats.update(reply.stats)
        await self.send(msg, reply.step)
        if next_labels is not None:
            self.node.look_ahead(req)  # tdgan.lookahead: the next update, while the cloud steps

    async def read(self) -> pb.CloudMessage:
        try:
            msg = await self.call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not the call
            raise CloudGone("stream cancelled (missed heartbeats)") from None
        if msg is grpc.aio.EOF:
            raise CloudGone("stream ended")
        self.last_heard = time.monotonic()
        return msg

    async def run(self) -> pb.Done:
        hb = asyncio.ensure_future(self.heartbeat())
        try:
            while True:
                msg = await self.read()
                kind = msg.WhichOneof("kind")
                if kind == "done":
                    return msg.done
                if kind == "closing":
                    await _half_close(self.call, self.lock, self.closing, msg.closing)
                elif kind == "request":
                    await self.answer(msg.request)
        finally:
            hb.cancel()
            self.call.cancel()


async def _session(stub: pb_grpc.EdgeGANStub, node: EdgeNode, conn: EdgeConnection,
                   reg: pb.RegisterReply) -> pb.Done:
    """One Session stream (:class:`_Stream`) until the run is done."""
    return await _Stream(stub, node, conn, reg).run()


async def _half_close(call: grpc.aio.StreamStreamCall, lock: asyncio.Lock, closing: asyncio.Event,
                      msg: pb.Closing) -> None:
    """The cloud ends the stream: stop writing and half-close, so that the next read returns the
    cloud's status rather than a transport error from a write racing the stream's end. A write in
    flight finishes first (the lock); cancelling it would cancel the whole call."""
    log.info("the cloud ends this stream: %s: %s", msg.code, msg.reason)
    closing.set()
    async with lock:
        try:
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call is already over; the next read reports its status


async def retrying(conn: EdgeConnection, attempt: Callable[[grpc.aio.Channel, Callable[[], None]], Awaitable[T]],
                   what: str) -> T:
    """Run ``attempt(channel, reached)`` on a fresh channel until it returns, retrying with
    jittered exponential back-off (0.2 s doubling to 2 s) while the cloud is unreachable or goes
    away; ``attempt`` calls ``reached()`` once the cloud answered. After ``conn.retry_s`` seconds
    without reaching the cloud it gives up with one :class:`EdgeganError` line; refusals that
    retrying cannot fix (:data:`FATAL`) end at once."""
    backoff, last_ok = 0.2, time.monotonic()

    def reached() -> None:
        nonlocal backoff, last_ok
        backoff, last_ok = 0.2, time.monotonic()

    while True:
        channel = conn.channel()
        try:
            return await attempt(channel, reached)
        except grpc.aio.AioRpcError as e:
            if e.code() in FATAL:
                raise EdgeganError("cloud", f"{what}: {e.code().name}: {e.details()}") from None
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                backoff = 2.0  # benched or rate-limited: wait the longest step, not Register every 0.2 s
            log.info("%s: stream ended or cloud unreachable (%s: %s): retrying", what, e.code().name, e.details())
        except CloudGone as e:
            reached()
            log.info("%s: lost the cloud (%s): retrying", what, e)
        except NodeCrashed as e:
            reached()
            log.warning("%s: %s: rejoining", what, e)
        finally:
            await channel.close()
        if time.monotonic() - last_ok > conn.retry_s:
            raise EdgeganError("cloud", f"'{conn.target}' unreachable for {conn.retry_s:g} s ({what})",
                               "check the address and that the cloud runs, or raise --retry-s")
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 2.0)


async def run_tdgan_edge(node: EdgeNode, conn: EdgeConnection, device: str = "cpu") -> pb.Done:
    """Take part in the cloud's TDGAN run until it is done; reconnect (same id) while the cloud
    is unreachable for less than ``conn.retry_s`` seconds."""

    async def attempt(channel: grpc.aio.Channel, reached: Callable[[], None]) -> pb.Done:
        stub = pb_grpc.EdgeGANStub(channel)
        reg = await register(stub, node, conn, device)
        reached()
        if reg.mode != "tdgan":
            raise EdgeganError("mode", f"the cloud runs {reg.mode!r}, not tdgan",
                               f"start the edge with --mode {reg.mode}")
        node.configure_tdgan(from_dict(TDGANConfig, json.loads(reg.tdgan_config_json), "tdgan"), reg.image_shape)
        log.info("node %s joined run %s at step %d", node.node_id, reg.run_id, reg.step)
        try:
            done = await _session(stub, node, conn, reg)
        finally:
            reached()
        log.info("run over at step %d (%s)", done.step, done.reason)
        return done

    return await retrying(conn, attempt, "tdgan session")


async def join_coalescence(node: EdgeNode, conn: EdgeConnection, device: str = "cpu") -> WGANConfig:
    """Register with a coalesce-mode cloud (retrying until it is reachable) and return its
    training settings, which this node's Stage I and Stage II then use."""

    async def attempt(channel: grpc.aio.Channel, reached: Callable[[], None]) -> pb.RegisterReply:
        return await register(pb_grpc.EdgeGANStub(channel), node, conn, device)

    reg = await retrying(conn, attempt, "register")
    if reg.mode != "coalesce":
        raise EdgeganError("mode", f"the cloud runs {reg.mode!r}, not coalesce",
                           f"start the edge with --mode {reg.mode}")
    return from_dict(WGANConfig, json.loads(reg.training_config_json), "training")


async def upload_models(node: EdgeNode, conn: EdgeConnection, models: dict, scalars: dict[str, float],
                        chunk_bytes: int = 1 << 20) -> pb.UploadReply:
    """Stage I: stream this node's (G_k, D_k, η_k) bundle to the cloud (retrying while unreachable)."""
    blob = encode_bundle(models, scalars)

    async def attempt(channel: grpc.aio.Channel, reached: Callable[[], None]) -> pb.UploadReply:
        stub = pb_grpc.EdgeGANStub(channel)
        await register(stub, node, conn)
        return await stub.UploadModels(iter_chunks(node.node_id, "upload", blob, chunk_bytes),
                                       metadata=conn.metadata(node.node_id), timeout=600)

    return await retrying(conn, attempt, "upload")


async def download_models(node_id: str, conn: EdgeConnection, name: str, wait_s: float,
                          max_bytes: int = 1 << 30) -> tuple[dict, dict[str, float]]:
    """Download bundle ``name`` (``barycenter`` / ``generator``), verified and rebuilt (retrying
    while the cloud is unreachable)."""

    async def attempt(channel: grpc.aio.Channel, reached: Callable[[], None]) -> tuple[dict, dict[str, float]]:
        stub = pb_grpc.EdgeGANStub(channel)
        asm = ChunkAssembler(max_bytes)
        async for chunk in stub.DownloadModels(pb.DownloadRequest(name=name, wait_s=wait_s),
                                               metadata=conn.metadata(node_id), timeout=wait_s + 600):
            asm.add(chunk)
        return decode_bundle(asm.finish())

    return await retrying(conn, attempt, f"download {name}")
