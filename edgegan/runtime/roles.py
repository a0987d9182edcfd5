"""Cloud and edge roles as state machines with no transport inside (DESIGN.md, Runtime).

A transport moves the roles' messages: ``inproc`` (edges as objects in this process),
``grpc`` (real edge processes) and the simulator's :class:`~edgegan.sim.engine.SimLink`
(virtual nodes on a worker pool). The cloud role is split by pipeline:
:class:`TDGANServer` (seed 003) and :class:`CoalesceServer` (seed 000 Stage I), both
:class:`CloudServer` s; :func:`cloud_server` builds the one a :class:`CloudConfig` names.
The whole role ↔ transport interface is:

cloud side
  * the transport calls :meth:`CloudServer.register` (a node announces itself),
    :meth:`TDGANServer.connected` / :meth:`TDGANServer.disconnected` (its feedback channel
    opened / closed), :meth:`CoalesceServer.add_upload` and :meth:`CloudServer.bundle`;
  * the role drives the run with :meth:`CloudServer.run` and needs from the transport one
    object implementing :class:`FeedbackLink` (send this step's fake batches, get replies;
    drop a node; announce the end).
edge side
  * :class:`EdgeNode` answers :class:`~edgegan.tdgan.messages.FeedbackRequest` s with
    :meth:`EdgeNode.feedback`, pre-trains and uploads (Stage I) and adapts (Stage II).

Membership changes reported by the transport are queued and applied between generator steps,
so the TDGAN core (seed 003) sees them exactly like a schedule's join/leave events. All
compute on the cloud runs on one worker thread so the event loop keeps serving hundreds of
streams while the generator steps.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import torch
from torch import nn

from edgegan.barycenter.aggregate import aggregate
from edgegan.checkpoint import MODEL_ARGS, atomic_write_bytes, load_checkpoint, same_model_args, save_checkpoint
from edgegan.config import to_dict
from edgegan.data.partition import label_histogram
from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.gan import WGANConfig, train_wgan_gp
from edgegan.monitor.metrics import Metrics
from edgegan.nn import build_gan, model_spec, same_architecture
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.tensor_codec import decode_bundle, encode_bundle
from edgegan.tdgan.cloud import TDGANCloud, request_nbytes
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import TDGANEdge
from edgegan.tdgan.harness import build_generator
from edgegan.tdgan.messages import FeedbackRejected, FeedbackReply, FeedbackRequest, NodeInfo

log = logging.getLogger("edgegan.runtime")
T = TypeVar("T")
HISTORY_KEPT = 1000  # per-step stats kept (and checkpointed) by the cloud

_STATUS = {FailureReason.TIMEOUT: "DEADLINE_EXCEEDED", FailureReason.DISCONNECTED: "UNAVAILABLE",
           FailureReason.WORKER_LOST: "UNAVAILABLE"}


@dataclass(frozen=True)
class NodeFailure:
    """Why a node gave no usable reply: a typed ``reason`` and a human ``detail`` (for logs only)."""

    reason: FailureReason
    detail: str

    @property
    def code(self) -> str:
        """The gRPC status name a transport ends the node's stream with."""
        return "INVALID_ARGUMENT" if self.reason.is_refusal else _STATUS[self.reason]


class FeedbackLink(Protocol):
    """What a transport gives :meth:`TDGANServer.run`."""

    async def exchange(self, requests: Sequence[FeedbackRequest],
                       timeout_s: float) -> dict[str, FeedbackReply | NodeFailure]:
        """Send every request to its node; return each node's reply or failure within ``timeout_s``.

        A reply that could not be decoded from the wire is a :class:`NodeFailure` with its
        refusal reason; everything else is validated by the TDGAN core."""
        ...

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        """End ``node_id``'s feedback channel (the transport then calls ``disconnected``)."""
        ...

    async def finish(self, step: int, reason: str) -> None:
        """Tell every connected node that the run is over."""
        ...


def resolve_eval_dataset(cfg: CloudConfig) -> str | None:
    """The data set the cloud scores its generator on: ``eval_dataset``, or for ``auto`` the
    embedded digits when the generator makes 1×8×8 images of 10 classes (else none)."""
    if cfg.eval_dataset != "auto":
        return cfg.eval_dataset
    return "digits" if list(cfg.image_shape) == [1, 8, 8] and cfg.num_classes == 10 else None


class CloudServer(abc.ABC):
    """What every cloud role shares: configuration, registrations, the compute thread, the
    evaluator and the run report. Subclasses implement :meth:`run` and :meth:`bundle`.

    State lives in ``cfg.checkpoint_dir``; a new process on the same folder resumes from it.
    """

    BUNDLES: tuple[str, ...] = ()

    def __init__(self, cfg: CloudConfig, metrics: Metrics | None = None, device: torch.device | None = None) -> None:
        from edgegan.device import resolve_device

        cfg.validate()
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.device = device or resolve_device(cfg.device)
        self.dir = Path(cfg.checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registered: dict[str, NodeInfo] = {}
        self.capabilities: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgegan-compute")
        self.finished = False
        self.stopping = asyncio.Event()  # set when the process stops: waiting calls return at once
        self.evals: list[dict[str, Any]] = []
        self.eval_dataset = resolve_eval_dataset(cfg)
        if self.eval_dataset is None and cfg.eval_dataset == "auto":  # None: switched off on purpose
            log.info("no evaluation data set for images %s: set eval_dataset to score the generator",
                     list(cfg.image_shape))

    @property
    def step(self) -> int:
        """How far the run is (generator steps; 0 for Stage I)."""
        return 0

    def _score(self, G: nn.Module) -> dict[str, Any]:
        """Score ``G`` (``edgegan.eval``) on every class some registered node holds; sets
        ``edgegan_feature_fid`` and appends the row to ``evals``."""
        from edgegan.eval import evaluator_for

        require(self.eval_dataset is not None, "eval_dataset", "no evaluation data set configured")
        ev = evaluator_for(self.eval_dataset, self.cfg.data_root, self.device)  # type: ignore[arg-type]
        require(ev.data.image_shape == tuple(self.cfg.image_shape), "eval_dataset",
                f"'{ev.data.name}' has images {ev.data.image_shape}, the generator makes {tuple(self.cfg.image_shape)}")
        classes = sorted({c for i in self.registered.values() for c, n in enumerate(i.label_histogram) if n > 0})
        s = ev.score(G, classes or None, n=self.cfg.eval_samples_per_class * self.cfg.num_classes,
                     samples_per_class=self.cfg.eval_samples_per_class)
        fid = s.fid_target if s.fid_target is not None else s.fid_whole
        row = {"step": self.step, "feature_fid": fid, "fid_whole": s.fid_whole, "class_acc": s.class_acc,
               "classes": classes}
        self.evals.append(row)
        self.metrics.feature_fid.set(fid)
        log.info("step %d: feature-FID %.2f on classes %s (whole set %.2f)%s", self.step, fid, classes,
                 s.fid_whole, "" if s.class_acc is None else f", class accuracy {s.class_acc:.3f}")
        return row

    def report(self) -> dict[str, Any]:
        """Summary of the run (written to ``report.json`` at the end)."""
        return {"run_id": self.cfg.run_id, "mode": self.cfg.mode, "finished": self.finished,
                "eval_dataset": self.eval_dataset, "evals": self.evals}

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the compute thread (serialised with every generator step)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def register(self, info: NodeInfo, capabilities: dict[str, Any] | None = None) -> None:
        """Record a node's disclosure (label histogram, n_k); checked against the generator."""
        require(len(info.label_histogram) == self.cfg.num_classes, "label_histogram",
                f"node '{info.node_id}' sent {len(info.label_histogram)} classes, the cloud has "
                f"{self.cfg.num_classes}", "use the cloud's class set")
        self.registered[info.node_id] = info
        self.capabilities[info.node_id] = dict(capabilities or {})
        log.info("registered %s (n=%d, %s)", info.node_id, info.n_samples, capabilities or {})

    @abc.abstractmethod
    async def run(self, link: "FeedbackLink | None", stop: asyncio.Event) -> str:
        """Drive the pipeline until it is done (``"finished"``) or ``stop`` is set (``"shutdown"``)."""

    @abc.abstractmethod
    async def bundle(self, name: str, wait_s: float = 0.0) -> bytes | None:
        """Serialized bundle ``name`` (one of :attr:`BUNDLES`), or None if not ready in ``wait_s``."""

    def _check_bundle(self, name: str) -> None:
        require(name in self.BUNDLES, "name", f"this {self.cfg.mode} cloud holds no bundle {name!r}",
                "ask for " + " or ".join(self.BUNDLES))


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
        self.history: list[dict[str, float]] = []
        self.last_losses: dict[str, float] = {}  # mean over the nodes (d_loss, g_loss) and reminding, last step
        self._resume()

    @property
    def step(self) -> int:
        return self.tdgan.step

    def evaluate(self) -> dict[str, Any]:
        """Score G now (feature-FID and class accuracy on the classes the nodes disclosed)."""
        return self._score(self.tdgan.G)

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
            self.registered = {k: NodeInfo(k, int(v["n_samples"]), tuple(v["label_histogram"]))
                               for k, v in ckpt.get("registered", {}).items()}
            self.history = list(ckpt.get("history", []))
            self.evals = list(ckpt.get("evals", []))
            self.resumed_step = self.tdgan.step
            log.info("resumed from %s at step %d (online then: %s)", self.checkpoint_path, self.tdgan.step,
                     ", ".join(self.tdgan.online) or "none")
        self.metrics.nodes_online.set(0)
        self.metrics.generator_step.set(self.tdgan.step)

    def save(self) -> None:
        """Write ``cloud.pt`` atomically (TDGAN state, registrations, history; never tokens)."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k != "tokens"}
        save_checkpoint(self.checkpoint_path, {
            MODEL_ARGS: model_spec(self.tdgan.G), "tdgan": self.tdgan.state_dict(),
            "registered": {k: {"n_samples": i.n_samples, "label_histogram": list(i.label_histogram)}
                           for k, i in self.registered.items()},
            "history": self.history, "evals": self.evals, "config": cfg, "run_id": self.cfg.run_id})
        self.metrics.checkpoints.inc()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "step": self.tdgan.step, "steps": self.cfg.steps,
                "resumed_step": self.resumed_step, "online": self.tdgan.online, "seen": self.tdgan.seen,
                "totals": self.tdgan.totals, "last": self.history[-1] if self.history else None}

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
            await _wait_any(self._changed, stop, timeout=deadline - time.monotonic())
        for node_id in restored - self._connected:
            log.info("node %s did not come back after the restart: it leaves", node_id)
            self._events.append(("leave", node_id))

    # ------------------------------------------------------------------ the run
    def _step(self, requests: Sequence[FeedbackRequest],
              answers: dict[str, FeedbackReply | NodeFailure]
              ) -> tuple[dict[str, float], list[tuple[str, NodeFailure]]]:
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

    def _record(self, stats: dict[str, float]) -> None:
        self.history.append({k: v for k, v in stats.items() if "/" not in k})
        del self.history[:-HISTORY_KEPT]  # checkpoints stay small on long runs
        self.metrics.generator_step.set(self.tdgan.step)
        if stats.get("g_stepped"):
            self.metrics.generator_steps.inc()
        if "reminding_loss" in stats:
            self.last_losses["reminding"] = stats["reminding_loss"]
        for kind in ("d_loss", "g_loss"):
            vals = [v for k, v in stats.items() if k.endswith("/" + kind)]
            if vals:
                self.last_losses[kind] = sum(vals) / len(vals)
        for kind, v in self.last_losses.items():
            self.metrics.loss.labels(kind).set(v)

    def progress_line(self) -> str:
        """One line on how the run goes: step, online nodes, accepted / rejected feedback (last
        step and total), the last losses and the last feature-FID."""
        last = self.history[-1] if self.history else {}
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
                await _wait_any(self._changed, stop, timeout=self.cfg.heartbeat_interval_s)
                continue
            requests = await self.compute(self.tdgan.make_requests, None)
            answers = await link.exchange(requests, self.cfg.feedback_timeout_s)
            stats, refused = await self.compute(self._step, requests, answers)
            for node_id, failure in refused:
                self.metrics.reject(failure.reason)
                link.drop(node_id, failure)
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


class CoalesceServer(CloudServer):
    """Stage I in the cloud (seed 000, Alg. 1): collect the nodes' (G_k, D_k, η_k), compute
    their barycenter with ``cfg.training``, serve it for Stage II.

    ``uploads/<node>.bundle`` (each upload, verified bytes, written atomically as it arrives)
    and ``barycenter.bundle`` live in ``cfg.checkpoint_dir``; a restarted cloud serves them.
    """

    BUNDLES = ("barycenter",)

    def __init__(self, cfg: CloudConfig, metrics: Metrics | None = None, device: torch.device | None = None) -> None:
        super().__init__(cfg, metrics, device)
        self.uploads: dict[str, tuple[dict[str, nn.Module], dict[str, float]]] = {}
        self._barycenter: bytes | None = None
        self._ready = asyncio.Event()
        for path in sorted((self.dir / "uploads").glob("*.bundle")):
            self.uploads[path.stem] = decode_bundle(path.read_bytes(), self.device)
        bary = self.dir / "barycenter.bundle"
        if bary.is_file():
            self._barycenter = bary.read_bytes()
            self._ready.set()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "uploads": sorted(self.uploads), "barycenter_ready": self._barycenter is not None}

    def add_upload(self, node_id: str, blob: bytes) -> tuple[int, int]:
        """Accept node ``node_id``'s verified bundle (``generator``, ``critic``, scalar ``eta``),
        persist it atomically; returns (uploads held, uploads expected)."""
        models, scalars = decode_bundle(blob, self.device)
        require(set(models) == {"generator", "critic"}, "bundle.models",
                f"got {sorted(models)}", "upload exactly 'generator' and 'critic'")
        eta = scalars.get("eta", float("nan"))
        require(math.isfinite(eta) and eta > 0, "bundle.scalars.eta", f"must be a finite radius > 0, got {eta}")
        for other, (m, _) in self.uploads.items():
            if other != node_id:
                require(same_architecture(m["generator"], models["generator"]), "bundle.models.generator",
                        f"node '{node_id}' uploaded a different architecture than '{other}'",
                        "every node must pre-train the same architecture")
                break
        atomic_write_bytes(self.dir / "uploads" / f"{node_id}.bundle", blob)
        self.uploads[node_id] = (models, scalars)
        self.metrics.uploads.inc()
        self._changed.set()
        return len(self.uploads), self.cfg.coalesce.expected_uploads

    def _barycenter_now(self) -> bytes:
        """Stage I in the cloud: the W1 barycenter of the uploads (seed 000, Alg. 1)."""
        ids = sorted(self.uploads)
        gens = [self.uploads[k][0]["generator"] for k in ids]
        crits = [self.uploads[k][0]["critic"] for k in ids]
        eta = [self.uploads[k][1]["eta"] for k in ids]
        c = self.cfg.coalesce
        res = aggregate(c.aggregator, gens, crits, eta, c.steps_per_stage, wgan=self.cfg.training,
                        checkpoint_dir=self.dir / "stage1")
        models = {"generator": res.generator, "critic_prev": res.critic_prev, "critic_new": res.critic_new}
        blob = encode_bundle(models, {"nodes": float(len(ids))})
        atomic_write_bytes(self.dir / "barycenter.bundle", blob)
        if self.eval_dataset is not None:
            self._score(res.generator)
        return blob

    async def run(self, link: FeedbackLink | None, stop: asyncio.Event) -> str:
        """Wait for ``coalesce.expected_uploads`` uploads, compute the barycenter, then serve it
        until ``stop`` (``"finished"``); ``"shutdown"`` when stopped before."""
        while self._barycenter is None and not stop.is_set():
            if len(self.uploads) >= self.cfg.coalesce.expected_uploads:
                log.info("stage I: barycenter of %s", ", ".join(sorted(self.uploads)))
                with self.metrics.aggregation_seconds.time():
                    self._barycenter = await self.compute(self._barycenter_now)
                self._ready.set()
                break
            self._changed.clear()
            await _wait_any(self._changed, stop, timeout=self.cfg.heartbeat_interval_s)
        if self._barycenter is None:
            return "shutdown"
        self.finished = True
        await stop.wait()  # keep serving downloads until told to stop
        return "finished"

    async def bundle(self, name: str, wait_s: float = 0.0) -> bytes | None:
        self._check_bundle(name)
        if not self._ready.is_set() and wait_s > 0:
            await _wait_any(self._ready, self.stopping, timeout=wait_s)
        return self._barycenter


def cloud_server(cfg: CloudConfig, metrics: Metrics | None = None,
                 device: torch.device | None = None) -> TDGANServer | CoalesceServer:
    """The cloud role of ``cfg.mode``: :class:`TDGANServer` or :class:`CoalesceServer`."""
    return (TDGANServer if cfg.mode == "tdgan" else CoalesceServer)(cfg, metrics, device)


class EdgeNode:
    """The edge role: private data, TDGAN local discriminator, Stage I pre-training, Stage II adaptation.

    Nothing but :meth:`info` (n_k, label histogram), feedback tensors and uploaded models
    (Stage I) leaves the node; the data never does.
    """

    def __init__(self, node_id: str, data: TensorData, device: torch.device | None = None,
                 metrics: Metrics | None = None) -> None:
        require(bool(node_id), "node_id", "empty", "give every node a non-empty id")
        self.node_id = node_id
        self.data = data
        self.device = device or torch.device("cpu")
        self.metrics = metrics or Metrics()
        self._tdgan: TDGANEdge | None = None
        self._tdgan_cfg: TDGANConfig | None = None

    def info(self) -> NodeInfo:
        hist = label_histogram(self.data.y, self.data.num_classes)
        return NodeInfo(self.node_id, len(self.data), tuple(int(c) for c in hist))

    def configure_tdgan(self, cfg: TDGANConfig, image_shape: Sequence[int]) -> None:
        """Build D_k for the cloud's settings once; the same D_k serves every reconnection."""
        require(tuple(image_shape) == self.data.image_shape, "image_shape",
                f"the cloud generates {tuple(image_shape)}, node '{self.node_id}' holds {self.data.image_shape}",
                "use the cloud's data set")
        if self._tdgan is None:
            self._tdgan = TDGANEdge(self.node_id, self.data, cfg=cfg, device=self.device)
            self._tdgan_cfg = cfg
        elif self._tdgan_cfg != cfg:
            raise EdgeganError("tdgan", f"the cloud's TDGAN settings changed for node '{self.node_id}'",
                               "restart the edge to follow the new settings")

    def feedback(self, req: FeedbackRequest) -> FeedbackReply:
        """Seed 003 Alg. 1 on the node: update D_k, reply ∂loss_G/∂fake."""
        require(self._tdgan is not None, "tdgan", "feedback before configure_tdgan")
        assert self._tdgan is not None
        reply = self._tdgan.feedback(req)
        m = self.metrics
        m.bytes_received.inc(request_nbytes(req))
        m.bytes_sent.inc(reply.nbytes())
        m.generator_step.set(req.step)
        for kind in ("d_loss", "g_loss"):
            if kind in reply.stats:
                m.loss.labels(kind).set(reply.stats[kind])
        return reply

    def pretrain(self, arch: str, steps: int, cfg: WGANConfig, width: int | None = None) -> dict[str, nn.Module]:
        """Stage I on the node: a local WGAN-GP (G_k, D_k) on its own data (seed 000 §3)."""
        G, D = build_gan(arch, self.data.image_shape, cfg.latent_dim, 0, width)
        G, D = G.to(self.device), D.to(self.device)
        x = self.data.x.to(self.device)
        train_wgan_gp(G, D, lambda m: x[torch.randint(0, len(x), (m,), device=x.device)], steps, cfg)
        return {"generator": G, "critic": D}

    def adapt(self, barycenter: dict[str, nn.Module], steps: int, ternary: bool = False,
              cfg: WGANConfig | None = None) -> nn.Module:
        """Stage II on the node: fast adaptation of the barycenter to local data (seed 000, Alg. 2)."""
        from edgegan.adapt.fast_adapt import fast_adapt

        res = fast_adapt(barycenter["generator"].to(self.device), barycenter["critic_prev"].to(self.device),
                         barycenter["critic_new"].to(self.device), self.data.x.to(self.device), steps,
                         ternary=ternary, cfg=cfg)
        return res.generator


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, timeout: float | None = None) -> None:
    """Return when ``event`` or ``stop`` is set, or after ``timeout`` seconds."""
    tasks = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(tasks, timeout=None if timeout is None else max(timeout, 0.0),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def config_json(cfg: Any) -> str:
    """A settings dataclass (the cloud's ``tdgan`` or ``training``) for the wire (plain JSON)."""
    return json.dumps(dataclasses.asdict(cfg))
