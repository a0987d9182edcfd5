"""Admission control of the cloud's gRPC server: what a hostile peer can cost it.

:class:`Guard` is a ``grpc.aio`` server interceptor in front of every EdgeGAN RPC. It turns each
method into a raw-bytes handler (no request deserializer), so that, in this order,

1. the bearer token is checked from the call's metadata before one byte of the body is read
   (an unauthenticated call costs a constant, whatever it sends);
2. with mutual TLS the client certificate's CN or a SAN must be the token's node id;
3. ``Register`` and ``Session`` calls are rate limited per node (token bucket), and a node
   dropped for not answering within ``feedback_timeout_s`` may not reopen a Session for
   ``guard.timeout_bench_s``;
4. every message is checked against its RPC's own byte limit (:class:`RpcLimits`, derived
   from the batch and image shapes) before it is parsed, large ones on a worker thread;
5. per-field caps (histogram length = the cloud's class count, ``n_samples``, node id length,
   feedback ``stats`` entries) refuse the message before the servicer converts it.

This is the one place a call is authenticated: the servicer reads the caller's node id from
:data:`CALLER`, which the guard sets once it has admitted the call.

The server-wide gRPC receive limit is the largest per-RPC limit, so grpc itself never buffers
more than that for one message.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from math import prod
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, NoReturn, Optional

import grpc

from edgegan.config import check_fields
from edgegan.errors import EdgeganError, FailureReason
from edgegan.monitor.metrics import Metrics
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.tdgan.messages import check_class_count

KiB = 1 << 10
SERVICE = "edgegan.v1.EdgeGAN"
PARSE_OFFLOAD_BYTES = 4 << 20  # messages at least this large are parsed on the guard's thread (~0.2 ms)
RATE_LIMITED = ("Register", "Session")
CALLER: ContextVar[str] = ContextVar("edgegan_caller")  # the admitted call's node id, set by Guard


@dataclass
class GuardConfig:
    """Per-RPC byte limits, per-field caps and per-node rate limits of the cloud (``guard:``).

    Byte limits left ``null`` are derived from the run's shapes (:func:`rpc_limits`)."""

    register_max_bytes: Optional[int] = field(default=None, metadata={
        "unit": "bytes of one Register request (null: 1 KiB + node id + 11 bytes per class)"})
    session_max_bytes: Optional[int] = field(default=None, metadata={
        "unit": "bytes of one Session message (null: 4 × the float32 fake batch B·C·H·W·4 + stats + 4 KiB)"})
    upload_max_bytes: Optional[int] = field(default=None, metadata={
        "unit": "bytes of one UploadModels chunk (null: chunk_bytes + 4 KiB)"})
    max_node_id_bytes: int = field(default=128, metadata={"unit": "bytes of a node id"})
    max_stats: int = field(default=16, metadata={"unit": "entries of a feedback reply's stats map"})
    max_n_samples: int = field(default=10_000_000, metadata={
        "unit": "largest n_k a node may claim (bounds π_k = n_k/n; see tdgan.max_share)"})
    calls_per_s: float = field(default=0.5, metadata={
        "unit": "sustained Register (and Session) calls per second and node (token bucket refill)"})
    call_burst: int = field(default=10, metadata={"unit": "Register (and Session) calls a node may make at once"})
    timeout_bench_s: float = field(default=60.0, metadata={
        "unit": "seconds a node dropped for missing feedback_timeout_s may not reopen a Session"})
    bind_certificate: bool = field(default=True, metadata={
        "unit": "with tls.client_ca: the client certificate's CN or a SAN must equal the token's node id"})

    def validate(self, prefix: str = "guard") -> None:
        for name in ("register_max_bytes", "session_max_bytes", "upload_max_bytes"):
            if getattr(self, name) is not None:
                check_fields(self, prefix, (name,), 256)
        check_fields(self, prefix, ("max_node_id_bytes", "max_n_samples", "call_burst"), 1)
        check_fields(self, prefix, ("max_stats",), 0)
        check_fields(self, prefix, ("calls_per_s",), 0, strict_low=True)
        check_fields(self, prefix, ("timeout_bench_s",), 0)


@dataclass(frozen=True)
class RpcLimits:
    """Largest request message per RPC, in bytes (``receive``: the server-wide gRPC limit)."""

    per_rpc: dict[str, int]

    @property
    def receive(self) -> int:
        return max(self.per_rpc.values())


def rpc_limits(cfg: Any) -> RpcLimits:
    """Byte limits of a cloud config's RPCs: the ``guard.*_max_bytes`` keys, or what the run's
    shapes need. Register: varint histogram of ``num_classes`` counts + id + capabilities;
    Session: a float32 reply to a (B, C, H, W) fake batch, with 4× slack so wrong-shape or
    float64 replies are refused with their reason rather than for size; uploads: one chunk."""
    g: GuardConfig = cfg.guard
    fake_bytes = 4 * cfg.tdgan.batch_size * prod(cfg.image_shape)
    derived = {"Register": 1 * KiB + g.max_node_id_bytes + 11 * cfg.num_classes,
               "Session": 4 * fake_bytes + g.max_stats * 96 + 4 * KiB,
               "UploadModels": cfg.chunk_bytes + 4 * KiB,
               "DownloadModels": 1 * KiB}
    chosen = {"Register": g.register_max_bytes, "Session": g.session_max_bytes, "UploadModels": g.upload_max_bytes}
    if cfg.mode != "coalesce":  # a TDGAN cloud refuses uploads: their chunks need no room
        derived["UploadModels"] = chosen["UploadModels"] = 1 * KiB
    return RpcLimits({k: chosen.get(k) or v for k, v in derived.items()})


def node_of_token(tokens: dict[str, str], metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The node id whose bearer token the call's ``authorization`` metadata carries (constant-time
    comparison against every configured token), or None."""
    md = dict(metadata or ())
    auth = md.get("authorization", "")
    token = (auth[7:] if isinstance(auth, str) and auth.startswith("Bearer ") else "").encode()
    node_id = None
    for nid, tok in tokens.items():
        if hmac.compare_digest(tok.encode(), token):
            node_id = nid
    return node_id


def certificate_names(context: grpc.aio.ServicerContext) -> set[str]:
    """CN and SAN entries of the peer's verified client certificate (empty without one)."""
    auth = context.auth_context() or {}
    return {v.decode(errors="replace") for k in ("x509_common_name", "x509_subject_alternative_name")
            for v in auth.get(k, ())}


class TokenBucket:
    """``burst`` calls at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.level, self.t = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


class Refusal(Exception):
    """A call the guard ends with ``code``; ``reason`` counts it as refused feedback when set."""

    def __init__(self, code: grpc.StatusCode, detail: str, reason: FailureReason | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.reason = code, detail, reason


async def _drain(raw_requests: AsyncIterator[bytes]) -> None:
    """Read and discard until the peer half-closes."""
    async for _ in raw_requests:
        pass


class Guard(grpc.aio.ServerInterceptor):
    """Authenticate, rate limit, size-check and field-check every EdgeGAN call before the servicer
    sees it (see the module docstring). ``on_drop`` is the hook the feedback link calls when the
    cloud drops a node."""

    def __init__(self, cfg: Any, metrics: Metrics) -> None:
        self.cfg = cfg
        self.g: GuardConfig = cfg.guard
        self.metrics = metrics
        self.limits = rpc_limits(cfg)
        self.tokens = {nid: cfg.token_of(nid) for nid in cfg.tokens}
        self.bind = bool(cfg.tls.client_ca) and self.g.bind_certificate
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._benched: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgegan-parse")

    def server_options(self, max_send_bytes: int) -> list[tuple[str, int]]:
        """gRPC server options: send limit, receive limit = the largest per-RPC limit, and a fixed
        HTTP/2 flow-control window of one such message per stream (no BDP probing, which lets a
        peer push megabytes the cloud must buffer before it can refuse the call)."""
        return [("grpc.max_send_message_length", max_send_bytes),
                ("grpc.max_receive_message_length", self.limits.receive),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", max(64 * KiB, self.limits.receive))]

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ policy
    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The calling node's id: its token's, or in anonymous mode the id it names."""
        node_id = node_of_token(self.tokens, metadata)
        if node_id is None and self.cfg.allow_anonymous and not self.tokens:
            node_id = str(dict(metadata or ()).get("x-edgegan-node-id", "")) or None
        return node_id

    def on_drop(self, node_id: str, reason: FailureReason) -> None:
        """A node was dropped: one that timed out is counted and benched for ``timeout_bench_s``."""
        if reason is FailureReason.TIMEOUT:
            self.metrics.feedback_timeouts.inc()
            self._benched[node_id] = time.monotonic() + self.g.timeout_bench_s

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> str:
        node_id = self.identify(context.invocation_metadata())
        if node_id is None:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        if len(node_id.encode()) > self.g.max_node_id_bytes:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"node id longer than {self.g.max_node_id_bytes} bytes")
        if self.bind and node_id not in certificate_names(context):
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                          f"the client certificate does not name node '{node_id}' (CN or SAN)")
        if method == "Session" and self._benched.get(node_id, 0.0) > time.monotonic():
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"node '{node_id}' missed its feedback deadline: "
                          f"no new Session for {self._benched[node_id] - time.monotonic():.0f} s")
        if method in RATE_LIMITED:
            bucket = self._buckets.setdefault((node_id, method), TokenBucket(self.g.calls_per_s, self.g.call_burst))
            if not bucket.take():
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"node '{node_id}': more than {self.g.call_burst} {method} calls at "
                              f"{self.g.calls_per_s:g}/s")
        return node_id

    def check_message(self, method: str, msg: Any) -> None:
        """Per-field caps, before the servicer converts anything; a Register speaks for its caller only."""
        if method == "Register":
            if msg.node_id != CALLER.get():
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"token of node '{CALLER.get()}' cannot speak for node '{msg.node_id}'")
            try:
                check_class_count(msg.node_id, msg.label_histogram, self.cfg.num_classes)
            except EdgeganError as e:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            if not 0 < msg.n_samples <= self.g.max_n_samples:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"n_samples: {msg.n_samples} is outside "
                              f"[1, {self.g.max_n_samples}] (guard.max_n_samples)")
        elif method == "Session" and msg.WhichOneof("kind") == "reply" and len(msg.reply.stats) > self.g.max_stats:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"feedback.stats: {len(msg.reply.stats)} entries > "
                          f"{self.g.max_stats} (guard.max_stats)", FailureReason.MALFORMED)

    async def _parse(self, method: str, raw: bytes, deserializer: Callable[[bytes], Any]) -> Any:
        limit = self.limits.per_rpc[method]
        self.metrics.bytes_received.inc(len(raw))
        if len(raw) > limit:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{method} message of {len(raw)} bytes > {limit}")
        if len(raw) >= PARSE_OFFLOAD_BYTES:
            msg = await asyncio.get_running_loop().run_in_executor(self._pool, deserializer, raw)
        else:
            msg = deserializer(raw)
        self.check_message(method, msg)
        return msg

    async def _refuse(self, context: grpc.aio.ServicerContext, r: Refusal) -> NoReturn:
        if r.reason is not None:
            self.metrics.reject(r.reason)
        await context.abort(r.code, r.detail)

    # ------------------------------------------------------------------ interception
    async def intercept_service(self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE or method not in self.limits.per_rpc:
            return handler  # health checks and unknown methods: grpc's own handling
        return self._wrap(method, handler)

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same RPC as a raw-bytes request stream, admitted before any byte is read; the bytes
        of every message each way are counted here, where they are bytes (``edgegan_bytes_*``)."""
        serialize = partial(self._serialize, h.response_serializer)
        if not h.response_streaming:  # Register, UploadModels
            return grpc.stream_unary_rpc_method_handler(partial(self._unary_response, method, h),
                                                        response_serializer=serialize)
        handler = self._session if h.request_streaming else self._server_stream
        return grpc.stream_stream_rpc_method_handler(partial(handler, method, h), response_serializer=serialize)

    def _serialize(self, serializer: Callable[[Any], bytes], msg: Any) -> bytes:
        raw = serializer(msg)
        self.metrics.bytes_sent.inc(len(raw))
        return raw

    async def _admitted(self, method: str, h: grpc.RpcMethodHandler, raw_requests: AsyncIterator[bytes],
                        context: grpc.aio.ServicerContext) -> Any:
        """Admit the call and set :data:`CALLER`; for a unary-request RPC, its parsed request."""
        try:
            CALLER.set(self._admit(method, context))
            if h.request_streaming:
                return None
            async for raw in raw_requests:
                return await self._parse(method, raw, h.request_deserializer)
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: no request message")
        except Refusal as r:
            await self._refuse(context, r)

    async def _messages(self, method: str, h: grpc.RpcMethodHandler, raw_requests: AsyncIterator[bytes],
                        inline: bool = False) -> AsyncIterator[Any]:
        """The request stream, parsed and checked. A message over its limits raises :class:`Refusal`,
        or with ``inline`` is yielded as one, so that the servicer can end the stream and go on
        draining it."""
        async for raw in raw_requests:
            try:
                yield await self._parse(method, raw, h.request_deserializer)
            except Refusal as r:
                if not inline:
                    raise
                yield r

    async def _unary_response(self, method: str, h: grpc.RpcMethodHandler, raw_requests: AsyncIterator[bytes],
                              context: grpc.aio.ServicerContext) -> Any:
        first = await self._admitted(method, h, raw_requests, context)
        try:
            if h.request_streaming:
                return await h.stream_unary(self._messages(method, h, raw_requests), context)
            return await h.unary_unary(first, context)
        except Refusal as r:
            await self._refuse(context, r)

    async def _session(self, method: str, h: grpc.RpcMethodHandler, raw_requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext) -> None:
        """Bidirectional: the servicer ends the stream itself on a :class:`Refusal` among its messages.
        A known node refused at admission (benched, rate limited) reads why as ``Closing``, and its
        writes are drained for up to ``stream_drain_s`` so that it then reads the status itself."""
        try:
            CALLER.set(self._admit(method, context))
        except Refusal as r:
            if r.code is not grpc.StatusCode.UNAUTHENTICATED:
                await context.write(pb.CloudMessage(closing=pb.Closing(code=r.code.name, reason=r.detail)))
                drain = asyncio.ensure_future(_drain(raw_requests))
                await asyncio.wait([drain], timeout=self.cfg.stream_drain_s)
                drain.cancel()
            await self._refuse(context, r)
        await h.stream_stream(self._messages(method, h, raw_requests, inline=True), context)

    async def _server_stream(self, method: str, h: grpc.RpcMethodHandler, raw_requests: AsyncIterator[bytes],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        first = await self._admitted(method, h, raw_requests, context)
        async for reply in h.unary_stream(first, context):
            yield reply
