"""What every cloud role shares (DESIGN.md, Runtime): the role ↔ transport types
(:class:`FeedbackLink`, :class:`NodeFailure`) and the :class:`CloudServer` base with its
registrations, compute thread, evaluation and run report. The interface itself is described in
:mod:`edgegan.runtime.roles`."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, TypeVar

import torch
from torch import nn

from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.eval.evaluator import EVAL_LATENT_SEED, Evaluator, GeneratorScore
from edgegan.monitor.metrics import Metrics
from edgegan.runtime.config import CloudConfig
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo, check_class_count

log = logging.getLogger("edgegan.runtime")
T = TypeVar("T")

_STATUS = {FailureReason.TIMEOUT: "DEADLINE_EXCEEDED", FailureReason.DISCONNECTED: "UNAVAILABLE",
           FailureReason.WORKER_LOST: "UNAVAILABLE"}


def score_generator(G: nn.Module, nodes: Iterable[NodeInfo], evaluator: Evaluator, samples_per_class: int,
                    num_classes: int, seed: int = EVAL_LATENT_SEED) -> tuple[list[int], GeneratorScore]:
    """Score ``G`` (:meth:`edgegan.eval.Evaluator.score`) on every class one of ``nodes`` holds (the
    whole data set when none does), ``samples_per_class`` conditional samples each; returns
    (those classes, the score)."""
    classes = sorted({c for i in nodes for c, n in enumerate(i.label_histogram) if n > 0})
    s = evaluator.score(G, classes or None, n=samples_per_class * num_classes, seed=seed,
                        samples_per_class=samples_per_class)
    return classes, s


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

    def score(self, G: nn.Module, nodes: Iterable[NodeInfo], *, seed: int = EVAL_LATENT_SEED,
              evaluator: Evaluator | None = None, samples_per_class: int | None = None
              ) -> tuple[list[int], GeneratorScore]:
        """Score ``G`` (:meth:`edgegan.eval.Evaluator.score`) on every class one of ``nodes`` holds (the
        whole data set when none does) and set ``edgegan_feature_fid``; returns (those classes, the
        score). The cloud's evaluator and ``eval_samples_per_class`` unless given."""
        classes, s = score_generator(G, nodes, evaluator or self._evaluator(),
                                     samples_per_class or self.cfg.eval_samples_per_class, self.cfg.num_classes, seed)
        self.metrics.feature_fid.set(s.fid_target if s.fid_target is not None else s.fid_whole)
        return classes, s

    def _evaluator(self) -> Evaluator:
        from edgegan.eval import evaluator_for

        if self.eval_dataset is None:
            raise EdgeganError("eval_dataset", "no evaluation data set configured")
        ev = evaluator_for(self.eval_dataset, self.cfg.data_root, self.device)
        require(ev.data.image_shape == tuple(self.cfg.image_shape), "eval_dataset",
                f"'{ev.data.name}' has images {ev.data.image_shape}, the generator makes {tuple(self.cfg.image_shape)}")
        return ev

    def _evaluate(self, G: nn.Module) -> dict[str, Any]:
        """Score ``G`` on the classes of the registered nodes and append the row to ``evals``."""
        classes, s = self.score(G, self.registered.values())
        fid = s.fid_target if s.fid_target is not None else s.fid_whole
        row = {"step": self.step, "feature_fid": fid, "fid_whole": s.fid_whole, "class_acc": s.class_acc,
               "classes": classes}
        self.evals.append(row)
        log.info("step %d: feature-FID %.2f on classes %s (whole set %.2f)%s", self.step, fid, classes,
                 s.fid_whole, "" if s.class_acc is None else f", class accuracy {s.class_acc:.3f}")
        return row

    def count_traffic(self, sent_bytes: int, received_bytes: int, roundtrips_s: Iterable[float] = ()) -> None:
        """A transport reports the payload bytes it moved and, per reply, the seconds from its
        request's send to its arrival (``edgegan_bytes_*_total``, ``edgegan_feedback_roundtrip_seconds``)."""
        self.metrics.bytes_sent.inc(sent_bytes)
        self.metrics.bytes_received.inc(received_bytes)
        for seconds in roundtrips_s:
            self.metrics.roundtrip.observe(seconds)

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
        check_class_count(info.node_id, info.label_histogram, self.cfg.num_classes)
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




async def wait_any(event: asyncio.Event, stop: asyncio.Event, timeout: float | None = None) -> None:
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
