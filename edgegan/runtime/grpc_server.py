"""The cloud over gRPC: a thin servicer around a :class:`~edgegan.runtime.roles.CloudServer` and
``async serve()`` owning ports, TLS, health, metrics and graceful stop (route_guide style).

Everything runs on one asyncio event loop (``grpc.aio``): hundreds of open node streams cost
coroutines, not threads; generator compute runs on the role's single compute thread. The
streams' state and the feedback exchange over them are :mod:`edgegan.runtime.grpc_link`.

Security: every call's metadata carries ``authorization: Bearer <token>``; the token names
exactly one node id (cloud config ``tokens``), a call with an unknown token is refused with
UNAUTHENTICATED and a message speaking for another id with PERMISSION_DENIED. Inputs are
decoded by :mod:`edgegan.runtime.tensor_codec` against what was asked; anything off ends the
stream with INVALID_ARGUMENT before it can reach the generator. In front of the servicer,
:class:`~edgegan.runtime.guard.Guard` checks the token before a request body is read and bounds
every RPC's bytes, fields and call rate; it is the one place a call is authenticated.

Ending a Session: whatever the reason (dropped for silence, superseded by a newer stream,
refused feedback, shutdown), the cloud ends the stream the same way, from its handler. The
writer stops between messages (never cancelled mid-write), the cloud writes ``Closing`` with
the status code and reason, waits up to ``stream_drain_s`` for the edge to half-close (its
reads drained, so no read is left pending), and then returns the status. A gRPC client that
is still writing when the status arrives can report ``INTERNAL: Internal error from Core``
instead of the status (grpc.aio marks the failed write as the call's status); an edge that
stops writing on ``Closing`` always reads the cloud's own status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgegan.errors import EdgeganError, FailureReason
from edgegan.monitor.metrics import start_metrics_server
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.grpc_link import GrpcLink, OpenSession
from edgegan.runtime.guard import CALLER, SERVICE, Guard, Refusal
from edgegan.runtime.malloc import trim_malloc_every
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
from edgegan.runtime.roles import CloudServer, CoalesceServer, NodeFailure, TDGANServer, cloud_server, config_json
from edgegan.runtime.scheduled import StreamGate, schedule_from_dict
from edgegan.runtime.tensor_codec import ChunkAssembler, iter_chunks
from edgegan.tdgan.messages import NodeInfo

log = logging.getLogger("edgegan.grpc")


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Explicit message size limits (the 4 MiB default is too small for CIFAR batches and models)."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


class EdgeGANServicer(pb_grpc.EdgeGANServicer):
    """Thin servicer: authenticate, convert messages, call the cloud role, convert back."""

    def __init__(self, server: CloudServer, link: GrpcLink) -> None:
        self.server = server
        self.link = link
        self.cfg = server.cfg

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterReply:
        node_id = CALLER.get()
        try:
            info = NodeInfo(node_id, int(request.n_samples), tuple(int(c) for c in request.label_histogram))
            self.server.register(info, {"device": request.capabilities.device,
                                        "roles": list(request.capabilities.roles),
                                        "version": request.capabilities.version})
        except EdgeganError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.RegisterReply(run_id=self.cfg.run_id, step=self.server.step,
                                heartbeat_interval_s=self.cfg.heartbeat_interval_s,
                                heartbeat_timeout_s=self.cfg.heartbeat_timeout_s,
                                max_message_bytes=self.cfg.max_message_bytes, chunk_bytes=self.cfg.chunk_bytes,
                                mode=self.cfg.mode, tdgan_config_json=config_json(self.cfg.tdgan),
                                training_config_json=config_json(self.cfg.training),
                                image_shape=list(self.cfg.image_shape))

    async def _read_loop(self, session: OpenSession, requests: AsyncIterator[pb.EdgeMessage | Refusal]) -> None:
        """Read until the edge half-closes. A message the guard refused ends the stream with its
        status; once the stream is closing, messages are drained unread."""
        metrics = self.server.metrics
        async for msg in requests:
            session.last_seen = time.monotonic()
            if session.closed.done():
                continue
            if isinstance(msg, Refusal):
                if msg.reason is not None:
                    metrics.reject(msg.reason)
                session.close(msg.code, msg.detail)
                continue
            if msg.WhichOneof("kind") == "reply":
                session.on_reply(msg.reply)

    async def _write_loop(self, session: OpenSession, context: grpc.aio.ServicerContext) -> None:
        """Write the outbox until the stream is closing; never cancelled mid-write. A heartbeat is
        queued once nothing was written for ``heartbeat_interval_s`` (a timer, not a timeout on each
        wait: ``wait_for`` costs a task and two loop turns per message)."""
        loop, interval = asyncio.get_running_loop(), self.cfg.heartbeat_interval_s
        beat = loop.call_later(interval, session.heartbeat)
        try:
            while not session.closed.done():
                msg = await session.outbox.get()
                if msg is None or session.closed.done():
                    return
                beat.cancel()
                await context.write(msg)
                beat = loop.call_later(interval, session.heartbeat)
                if msg.HasField("done"):
                    self.link.told_done.add(session.node_id)
        finally:
            beat.cancel()

    async def _open(self, node_id: str, context: grpc.aio.ServicerContext) -> OpenSession:
        """Admit a Session of ``node_id`` (ending an older one of the same node) and register it."""
        if not isinstance(self.server, TDGANServer):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"this cloud runs {self.cfg.mode}, not tdgan")
        if node_id not in self.server.registered:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"node '{node_id}' must Register first")
        if self.link.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cloud is shutting down")
        old = self.link.sessions.get(node_id)
        if old is not None:
            old.close(grpc.StatusCode.ABORTED, "superseded by a newer stream of the same node")
        session = OpenSession(node_id, self.link)
        self.link.sessions[node_id] = session
        if self.link.done is not None:
            self.link.tell_done(session)
        else:
            self.link.membership.connected(node_id)
        return session

    def _leave(self, session: OpenSession) -> None:
        """The node is no longer a member: its pending requests fail and π renormalises now,
        before the stream has finished draining."""
        session.fail_pending(NodeFailure(FailureReason.DISCONNECTED, "stream closed"))
        if self.link.sessions.get(session.node_id) is session:
            del self.link.sessions[session.node_id]
            if self.link.done is None:
                self.link.membership.disconnected(session.node_id)

    async def _drain(self, session: OpenSession, context: grpc.aio.ServicerContext,
                     reader: asyncio.Task, writer: asyncio.Task) -> None:
        """Stop writing between messages; when the cloud ends the stream, write ``Closing`` and
        read until the edge half-closes. Each wait is bounded by ``stream_drain_s`` (a frozen peer
        neither reads nor half-closes)."""
        drain_s = self.cfg.stream_drain_s
        session.outbox.put_nowait(None)
        await asyncio.wait([writer], timeout=drain_s)
        if not session.closed.done() or not writer.done() or writer.cancelled() or writer.exception():
            return
        code, detail = session.closed.result()
        closing = pb.CloudMessage(closing=pb.Closing(code=code.name, reason=detail))
        write = asyncio.ensure_future(context.write(closing))
        await asyncio.wait([write, reader], timeout=drain_s, return_when=asyncio.ALL_COMPLETED)
        write.cancel()

    async def Session(self, request_iterator: AsyncIterator[pb.EdgeMessage | Refusal], context: grpc.aio.ServicerContext) -> None:
        node_id = CALLER.get()
        session = await self._open(node_id, context)
        self.link.streams += 1
        reader = asyncio.ensure_future(self._read_loop(session, request_iterator))
        writer = asyncio.ensure_future(self._write_loop(session, context))
        try:
            await asyncio.wait([reader, writer, session.closed], return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, writer):
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.info("node %s stream ended: %r", node_id, t.exception())
            self._leave(session)
            await self._drain(session, context, reader, writer)
        finally:
            for t in (reader, writer):
                t.cancel()
            self._leave(session)
            self.link.streams -= 1
        if session.closed.done():
            code, detail = session.closed.result()
            await context.abort(code, detail)

    async def UploadModels(self, request_iterator: AsyncIterator[pb.ModelChunk],
                           context: grpc.aio.ServicerContext) -> pb.UploadReply:
        node_id = CALLER.get()
        if not isinstance(self.server, CoalesceServer):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"this cloud runs {self.cfg.mode}, not coalesce")
        asm = ChunkAssembler(self.cfg.max_model_bytes)
        try:
            async for chunk in request_iterator:
                asm.add(chunk)
                if asm.header is not None and asm.header.node_id != node_id:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                        f"token of node '{node_id}' cannot upload for '{asm.header.node_id}'")
            blob = asm.finish()
            held, expected = await self.server.compute(self.server.add_upload, node_id, blob)
        except EdgeganError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        log.info("upload from %s: %d bytes (%d of %d)", node_id, len(blob), held, expected)
        return pb.UploadReply(received_bytes=len(blob), uploads=held, expected_uploads=expected)

    async def DownloadModels(self, request: pb.DownloadRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelChunk]:
        node_id = CALLER.get()
        if request.name not in self.server.BUNDLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name: this {self.cfg.mode} cloud holds no "
                                f"bundle {request.name!r}; ask for {' or '.join(self.server.BUNDLES)}")
        wait = min(max(request.wait_s, 0.0), 3600.0)
        if not self.server.stopping.is_set() and wait > 0:
            log.info("node %s waits up to %g s for the %s", node_id, wait, request.name)
        self.link.waiting += 1
        try:
            blob = await self.server.bundle(request.name, wait)
        finally:
            self.link.waiting -= 1
        if blob is None and self.server.stopping.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cloud is shutting down")
        if blob is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name} is not ready after {wait:g} s")
        for chunk in iter_chunks(node_id, request.name, blob, self.cfg.chunk_bytes):
            yield chunk


def _server_credentials(cfg: CloudConfig) -> grpc.ServerCredentials:
    tls = cfg.tls
    key, cert = Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()  # type: ignore[arg-type]
    ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _schedule_gate(cfg: CloudConfig, server: CloudServer, link: GrpcLink, stop: asyncio.Event) -> StreamGate | None:
    """With ``cfg.schedule``: the :class:`StreamGate` that admits nodes at the schedule's ticks."""
    if cfg.schedule is None:
        return None
    assert isinstance(server, TDGANServer)
    schedule = schedule_from_dict(json.loads(Path(cfg.schedule).read_text()))
    return StreamGate(server, schedule, link, cfg.join_wait_s, server.dir, cfg.snapshot_every, stop)


async def _linger(seconds: float, server: CloudServer, link: GrpcLink, stop: asyncio.Event) -> None:
    """After the run: keep serving up to ``seconds`` until every registered node's stream carried
    Done (one that was reconnecting gets it when it reopens), or until ``stop``."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline and not set(server.registered) <= link.told_done:
        await asyncio.sleep(0.05)


def _housekeeping(cfg: CloudConfig, link: GrpcLink) -> list[asyncio.Future]:
    """The cloud's periodic tasks: the heartbeat watchdog and, unless 0, the heap trim."""
    tasks = [asyncio.ensure_future(link.watchdog(cfg.heartbeat_interval_s, cfg.heartbeat_timeout_s))]
    if cfg.malloc_trim_every_s:
        tasks.append(asyncio.ensure_future(trim_malloc_every(cfg.malloc_trim_every_s)))
    return tasks


async def serve(cfg: CloudConfig, server: CloudServer | None = None, ready_file: str | Path | None = None) -> int:
    """Run a cloud process until its run finishes (``exit_when_done``) or SIGTERM/SIGINT.

    Binds ``cfg.listen`` (port 0: any free port), serves the EdgeGAN and gRPC health services
    and ``/metrics``; on SIGTERM it stops stepping, checkpoints, reports NOT_SERVING and stops
    the server gracefully. ``ready_file`` receives ``{"port", "metrics_port"}`` once serving.
    Returns the process exit code (0).
    """
    server = server or cloud_server(cfg)
    metrics_port = None
    if cfg.metrics_port is not None:
        metrics_port = start_metrics_server(cfg.metrics_port, server.metrics.registry, cfg.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_addr, metrics_port)
    guard = Guard(cfg, server.metrics)
    grpc_server = grpc.aio.server(interceptors=[guard], options=guard.server_options(cfg.max_message_bytes))
    link = GrpcLink(server)
    link.on_drop = guard.on_drop
    pb_grpc.add_EdgeGANServicer_to_server(EdgeGANServicer(server, link), grpc_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    if cfg.tls.enabled:
        port = grpc_server.add_secure_port(cfg.listen, _server_credentials(cfg))
    else:
        port = grpc_server.add_insecure_port(cfg.listen)
    await grpc_server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("cloud %s (%s) listening on %s:%d%s", cfg.run_id, cfg.mode, cfg.listen.rpartition(":")[0], port,
             " with TLS" if cfg.tls.enabled else "")
    if ready_file is not None:
        Path(ready_file).write_text(json.dumps({"port": port, "metrics_port": metrics_port}))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    run_stop = asyncio.Event() if cfg.schedule is not None else stop  # a schedule's end stops the run, not the process
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: (stop.set(), run_stop.set()))
    background = _housekeeping(cfg, link)
    gate = _schedule_gate(cfg, server, link, run_stop)
    try:
        if gate is not None:
            await gate.start()
        outcome = await server.run(gate or link, run_stop)
        (server.dir / "report.json").write_text(json.dumps(server.report(), indent=2))
        log.info("run %s: %s at step %d", cfg.run_id, outcome, server.step)
        if outcome == "finished" and not cfg.exit_when_done:
            await stop.wait()
        elif outcome == "finished":
            await _linger(cfg.linger_s, server, link, stop)
    finally:
        for task in background:
            task.cancel()
        if gate is not None:
            gate.close()
        await health_servicer.enter_graceful_shutdown()
        await link.close_all(grace_s=1.0)
        await grpc_server.stop(grace=1.0)
        guard.close()
        server.close()
    return 0
