"""Cloud and edge roles as state machines with no transport inside (DESIGN.md, Runtime).

A transport moves the roles' messages: ``inproc`` (edges as objects in this process),
``grpc`` (real edge processes) and the simulator's :class:`~edgegan.sim.link.SimLink`
(virtual nodes on a worker pool). The cloud role is split by pipeline:
:class:`TDGANServer` (seed 003, here) and :class:`~edgegan.runtime.coalesce_server.CoalesceServer`
(seed 000 Stage I), both :class:`~edgegan.runtime.cloud_base.CloudServer` s;
:func:`cloud_server` builds the one a :class:`CloudConfig` names. The edge role is
:class:`~edgegan.runtime.edge_node.EdgeNode`. The whole role ↔ transport interface is:

cloud side
  * the transport calls :meth:`CloudServer.register` (a node announces itself),
    :meth:`TDGANServer.connected` / :meth:`TDGANServer.disconnected` (its feedback channel
    opened / closed), :meth:`CoalesceServer.add_upload` and :meth:`CloudServer.bundle`;
  * the role drives the run with :meth:`CloudServer.run` and needs from the transport one
    object implementing :class:`FeedbackLink` (send this step's fake batches, get replies;
    drop a node; announce the end);
  * the transport may read :attr:`CloudServer.step` (generator steps so far),
    :attr:`TDGANServer.last_stats` (the last step's statistics) and :attr:`CloudServer.metrics`,
    and reports what it moved with :meth:`CloudServer.count_traffic`.
edge side
  * :class:`EdgeNode` answers :class:`~edgegan.tdgan.messages.FeedbackRequest` s with
    :meth:`EdgeNode.feedback`, pre-trains and uploads (Stage I) and adapts (Stage II).

Membership changes reported by the transport are queued and applied between generator steps,
so the TDGAN core (seed 003) sees them exactly like a schedule's join/leave events. All
compute on the cloud runs on one worker thread so the event loop keeps serving hundreds of
streams while the generator steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from edgegan.checkpoint import MODEL_ARGS, load_checkpoint, same_model_args, save_checkpoint
from edgegan.config import to_dict
from edgegan.errors import require
from edgegan.monitor.audit import AuditLog
from edgegan.monitor.metrics import Metrics
from edgegan.nn import model_spec
from edgegan.runtime.cloud_base import (
    CloudServer,
    FeedbackLink,
    NodeFailure,
    config_json,
    resolve_eval_dataset,
    wait_any,
)
from edgegan.runtime.coalesce_server import CoalesceServer
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.edge_node import EdgeNode
from edgegan.runtime.tensor_codec import encode_bundle
from edgegan.tdgan.cloud import StepStats, TDGANCloud
from edgegan.tdgan.harness import build_generator
from edgegan.tdgan.messages import FeedbackRejected, FeedbackReply, FeedbackRequest, NodeInfo

__all__ = ["CloudServer", "CoalesceServer", "EdgeNode", "FeedbackLink", "NodeFailure", "TDGANServer", "cloud_server",
           "config_json", "resolve_eval_dataset"]

log = logging.getLogger("edgegan.runtime")
HISTORY_KEPT_STEPS = 1000  # steps whose stats the cloud keeps (and checkpoints)


class TDGANServer(CloudServer):
    """The TDGAN cloud (seed 003): the central conditional generator fed by the nodes' feedback.

    ``cloud.pt`` (TDGAN state, registrations, history, evaluations) is written atomically
    every ``cfg.checkpoint_every`` steps, on shutdown and at the end.
    """

    BUNDLES = ("generator",)

    def __init__(self, cfg: CloudConfig, metrics: Metrics | None = None, device: torch.device | None = None) -> None:
        super().__init__(cfg, metrics, device)
        shape = tuple(cfg.image_shape)
        self.tdgan = TDGANCloud(build_generator(cfg.tdgan, shape, cfg.num_classes).to(self.device), cfg.tdgan)
        self._connected: set[str] = set()
        self._events: list[tuple[str, str]] = []
        self.resumed_step: int | None = None
        self.history: list[dict[str, float]] = []  # each step's scalar stats, the last HISTORY_KEPT_STEPS
        self.last_losses: dict[str, float] = {}  # mean over the nodes (d_loss, g_loss) and reminding, last step
        self.audit = AuditLog("cloud")
        self._resume()
        self.audit.write("resume", step=self.tdgan.step)

    @property
    def step(self) -> int:
        return self.tdgan.step

    @property
    def last_stats(self) -> dict[str, float]:
        """The last generator step's scalar statistics (``{}`` before the first step)."""
        return self.history[-1] if self.history else {}

    def evaluate(self) -> dict[str, Any]:
        """Score G now (feature-FID and class accuracy on the classes the nodes disclosed)."""
        return self._evaluate(self.tdgan.G)

    # ------------------------------------------------------------------ persistence
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "cloud.pt"

    def _resume(self) -> None:
        if self.checkpoint_path.is_file():
            ckpt = load_checkpoint(self.checkpoint_path, self.device)
            require(same_model_args(ckpt, self.tdgan.G), "checkpoint_dir",
                    f"'{self.checkpoint_path}' holds a different generator", "use a fresh checkpoint_dir")
            self.tdgan.load_state_dict(ckpt["tdgan"])
            self.registered = {k: NodeInfo.from_dict(k, v) for k, v in ckpt.get("registered", {}).items()}
            self.history = list(ckpt.get("history", []))
            self.evals = list(ckpt.get("evals", []))
            self.resumed_step = self.tdgan.step
            log.info("resumed from %s at step %d (online then: %s)", self.checkpoint_path, self.tdgan.step,
                     ", ".join(self.tdgan.online) or "none")
        self.metrics.nodes_online.set(0)
        self.metrics.generator_step.set(self.tdgan.step)

    def save(self) -> None:
        """Write ``cloud.pt`` atomically (TDGAN state, registrations, history; never tokens).
        A write that fails (disk full, file too large, I/O error) leaves the previous checkpoint
        as it was, logs one line, counts ``edgegan_checkpoint_failures_total`` and the run goes on."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k != "tokens"}
        try:
            save_checkpoint(self.checkpoint_path, {
                MODEL_ARGS: model_spec(self.tdgan.G), "tdgan": self.tdgan.state_dict(),
                "registered": {k: i.to_dict() for k, i in self.registered.items()},
                "history": self.history, "evals": self.evals, "config": cfg, "run_id": self.cfg.run_id})
        except OSError as e:
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint at step %d not written (%s): %s keeps the previous one; still serving",
                      self.tdgan.step, e.strerror or e, self.checkpoint_path)
            return
        self.metrics.checkpoints.inc()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "step": self.tdgan.step, "steps": self.cfg.steps,
                "resumed_step": self.resumed_step, "online": self.tdgan.online, "seen": self.tdgan.seen,
                "totals": self.tdgan.totals, "last": self.last_stats or None}

    # ------------------------------------------------------------------ membership (called by transports)
    def connected(self, node_id: str) -> None:
        """``node_id``'s feedback channel is open: it (re)joins before the next step."""
        require(node_id in self.registered, "node_id", f"node '{node_id}' has not registered", "call Register first")
        self._connected.add(node_id)
        self._events.append(("join", node_id))
        self._changed.set()

    def disconnected(self, node_id: str) -> None:
        """``node_id``'s channel closed (stream ended, heartbeats missed, dropped): it leaves."""
        self._connected.discard(node_id)
        self._events.append(("leave", node_id))
        self._changed.set()

    def _apply_membership(self) -> None:
        events, self._events = self._events, []
        for kind, node_id in events:
            online = node_id in self.tdgan.online
            if kind == "leave" and online and node_id not in self._connected:
                self.tdgan.leave(node_id)
                self.metrics.leaves.inc()
            elif kind == "join" and not online and node_id in self._connected:
                self.tdgan.join(self.registered[node_id])
                self.metrics.joins.inc()
        self.metrics.nodes_online.set(len(self.tdgan.online))

    async def _wait_for_restored(self, stop: asyncio.Event) -> None:
        """After a restart, give the nodes that were online ``rejoin_grace_s`` to reconnect;
        those that come back keep the TDGAN state untouched, the others leave."""
        restored = set(self.tdgan.online)
        deadline = time.monotonic() + self.cfg.rejoin_grace_s
        while restored - self._connected and time.monotonic() < deadline and not stop.is_set():
            self._changed.clear()
            await wait_any(self._changed, stop, timeout=deadline - time.monotonic())
        for node_id in restored - self._connected:
            log.info("node %s did not come back after the restart: it leaves", node_id)
            self._events.append(("leave", node_id))

    # ------------------------------------------------------------------ the run
    def _step(self, requests: Sequence[FeedbackRequest],
              answers: dict[str, FeedbackReply | NodeFailure]
              ) -> tuple[StepStats, list[tuple[str, NodeFailure]]]:
        """One generator step on the compute thread: the core validates every reply
        (:meth:`TDGANCloud.apply_feedback`); returns its stats and the refused nodes."""
        refused: list[tuple[str, NodeFailure]] = []
        replies = []
        for req in requests:
            ans = answers.get(req.node_id)
            if isinstance(ans, NodeFailure):
                if ans.reason.is_refusal:  # refused while decoding from the wire
                    self.metrics.reject(ans.reason)
            elif ans is not None:
                replies.append(ans)

        def on_reject(node_id: str, e: FeedbackRejected) -> None:
            refused.append((node_id, NodeFailure(e.reason, str(e))))

        return self.tdgan.apply_feedback(replies, on_reject), refused

    def _record(self, stats: StepStats) -> None:
        self.history.append(dict(stats))
        del self.history[:-HISTORY_KEPT_STEPS]  # checkpoints stay small on long runs
        self.metrics.generator_step.set(self.tdgan.step)
        if stats.get("g_stepped"):
            self.metrics.generator_steps.inc()
        if "reminding_loss" in stats:
            self.last_losses["reminding"] = stats["reminding_loss"]
        for kind in ("d_loss", "g_loss"):
            mean = stats.node_mean(kind)
            if mean is not None:
                self.last_losses[kind] = mean
        for kind, v in self.last_losses.items():
            self.metrics.loss.labels(kind).set(v)

    def progress_line(self) -> str:
        """One line on how the run goes: step, online nodes, accepted / rejected feedback (last
        step and total), the last losses and the last feature-FID."""
        last = self.last_stats
        t = self.tdgan.totals
        losses = " ".join(f"{k} {self.last_losses.get(k, float('nan')):.3g}" for k in ("d_loss", "g_loss", "reminding"))
        fid = f", feature-FID {self.evals[-1]['feature_fid']:.2f} at step {self.evals[-1]['step']}" if self.evals \
            else ""
        return (f"step {self.tdgan.step}/{self.cfg.steps}: online {len(self.tdgan.online)}, "
                f"accepted {int(last.get('accepted', 0))} rejected {int(last.get('rejected', 0))} "
                f"(total {t['accepted']}/{t['rejected']}), {losses}{fid}")

    async def run(self, link: FeedbackLink, stop: asyncio.Event) -> str:
        """Run TDGAN until ``cfg.steps`` (``"finished"``) or ``stop`` (``"shutdown"``); the state
        is checkpointed either way. A progress line is logged every ``cfg.log_every`` steps."""
        await self._wait_for_restored(stop)
        evaluate = self.eval_dataset is not None
        while self.tdgan.step < self.cfg.steps and not stop.is_set():
            self._changed.clear()
            await self.compute(self._apply_membership)
            needed = self.cfg.start_nodes if self.tdgan.step == 0 else self.cfg.min_nodes
            if len(self.tdgan.online) < needed:
                await wait_any(self._changed, stop, timeout=self.cfg.heartbeat_interval_s)
                continue
            requests = await self.compute(self.tdgan.make_requests, None)
            answers = await link.exchange(requests, self.cfg.feedback_timeout_s)
            stats, refused = await self.compute(self._step, requests, answers)
            for node_id, failure in refused:
                self.metrics.reject(failure.reason)
                link.drop(node_id, failure)
            failed = {n: a.reason.value for n, a in [*answers.items(), *refused] if isinstance(a, NodeFailure)}
            self.audit.write("step", step=int(stats["step"]), asked=[r.node_id for r in requests],
                             applied=sorted(stats.per_node), failed=failed)
            self._record(stats)
            if evaluate and self.tdgan.step % self.cfg.eval_every == 0:
                await self.compute(self.evaluate)
            if self.tdgan.step % self.cfg.checkpoint_every == 0:
                await self.compute(self.save)
            if self.tdgan.step % self.cfg.log_every == 0:
                log.info("%s", self.progress_line())
        if evaluate and self.tdgan.step >= self.cfg.steps and (
                not self.evals or self.evals[-1]["step"] != self.tdgan.step):
            await self.compute(self.evaluate)
        await self.compute(self.save)
        if self.tdgan.step >= self.cfg.steps:
            self.finished = True
            await link.finish(self.tdgan.step, "finished")
            return "finished"
        return "shutdown"

    async def bundle(self, name: str, wait_s: float = 0.0) -> bytes | None:
        self._check_bundle(name)
        return await self.compute(lambda: encode_bundle({"generator": self.tdgan.G}, {"step": float(self.tdgan.step)}))


def cloud_server(cfg: CloudConfig, metrics: Metrics | None = None,
                 device: torch.device | None = None) -> TDGANServer | CoalesceServer:
    """The cloud role of ``cfg.mode``: :class:`TDGANServer` or :class:`CoalesceServer`."""
    return (TDGANServer if cfg.mode == "tdgan" else CoalesceServer)(cfg, metrics, device)
