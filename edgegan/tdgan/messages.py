"""The TDGAN message boundary (seed 003): the only things that cross between the cloud's
generator and an edge node's temporary discriminator.

Edge → cloud: :class:`NodeInfo` once (label histogram, n_k), then one :class:`FeedbackReply`
per :class:`FeedbackRequest`: exactly one float tensor of the fake batch's shape (∂ loss_G /
∂ fake) plus scalar statistics. No weights, no data. Every reply is checked by
:func:`validate_feedback` before it may touch the generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from edgegan.data.partition import label_histogram
from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, FailureReason, Refused, require
from edgegan.finite import all_finite


class FeedbackRejected(Refused):
    """A feedback tensor that must not reach the generator; ``reason`` says why (shape, dtype,
    NaN, norm, stale)."""


def check_class_count(node_id: str, histogram: Sequence[int], num_classes: int) -> None:
    """A node's label histogram holds one count per class of the cloud's generator
    (:class:`EdgeganError` on ``label_histogram`` otherwise)."""
    require(len(histogram) == num_classes, "label_histogram",
            f"node '{node_id}' sent {len(histogram)} classes, the cloud has {num_classes}",
            "use the cloud's class set on every node")


@dataclass(frozen=True)
class NodeInfo:
    """What an edge node discloses on joining: its id, sample count n_k and label histogram."""

    node_id: str
    n_samples: int
    label_histogram: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.node_id:
            raise EdgeganError("node_id", "empty", "give every node a non-empty id")
        if self.n_samples <= 0:
            raise EdgeganError("n_samples", f"node '{self.node_id}' has {self.n_samples} samples",
                               "a node needs at least one sample")
        if any(c < 0 for c in self.label_histogram) or sum(self.label_histogram) != self.n_samples:
            raise EdgeganError("label_histogram", f"node '{self.node_id}': counts must be >= 0 and sum "
                               f"to n_samples={self.n_samples}")

    @classmethod
    def of(cls, node_id: str, data: TensorData) -> NodeInfo:
        """What node ``node_id`` holding ``data`` discloses: n_k = len(data) and its label histogram."""
        hist = label_histogram(data.y, data.num_classes)
        return cls(node_id, len(data), tuple(int(c) for c in hist))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (checkpoints)."""
        return {"n_samples": self.n_samples, "label_histogram": list(self.label_histogram)}

    @classmethod
    def from_dict(cls, node_id: str, d: dict[str, Any]) -> NodeInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(node_id, int(d["n_samples"]), tuple(int(c) for c in d["label_histogram"]))


@dataclass(frozen=True)
class FeedbackRequest:
    """Cloud → edge: a fake batch G(u, y) and the labels y it was drawn for."""

    node_id: str
    step: int
    fake: torch.Tensor    # (B, C, H, W) float32
    labels: torch.Tensor  # (B,) int64
    next_labels: torch.Tensor | None = None  # (B,) int64: the node's next step's labels (``tdgan.lookahead``)

    def nbytes(self) -> int:
        """Bytes of payload this request carries (the fake batch and its labels, both steps')."""
        return sum(t.numel() * t.element_size() for t in (self.fake, self.labels, self.next_labels) if t is not None)


@dataclass(frozen=True)
class FeedbackReply:
    """Edge → cloud: ∂ loss_G / ∂ fake (the fake batch's shape, float32) and scalar stats."""

    node_id: str
    step: int
    grad: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of payload this reply carries (the gradient tensor and 8 bytes per stat)."""
        return self.grad.numel() * self.grad.element_size() + 8 * len(self.stats)


def stat_mean(stats: Iterable[dict[str, float]], kind: str) -> float | None:
    """Mean of statistic ``kind`` over the replies' ``stats`` that carry it (None when none does),
    summed with :func:`math.fsum`: the same bytes in whatever order the replies arrived."""
    vals = [s[kind] for s in stats if kind in s]
    return math.fsum(vals) / len(vals) if vals else None


def validate_feedback(reply: FeedbackReply, request: FeedbackRequest, max_norm: float) -> torch.Tensor:
    """Return the checked gradient or raise :class:`FeedbackRejected` naming what is wrong.

    Checks: same node and step, a float32 tensor of the fake batch's shape, every value
    finite, and the per-sample L2 norm at most ``max_norm``. This is the one place feedback is
    validated (:meth:`~edgegan.tdgan.cloud.TDGANCloud.apply_feedback` calls it for every reply).
    """
    R = FailureReason
    g = reply.grad
    who = f"node '{reply.node_id}'"
    if reply.node_id != request.node_id or reply.step != request.step:
        raise FeedbackRejected("feedback.step", f"{who} answered step {reply.step} of '{reply.node_id}', "
                               f"expected step {request.step} of '{request.node_id}'", reason=R.STALE)
    if not isinstance(g, torch.Tensor):
        raise FeedbackRejected("feedback.grad", f"{who} sent {type(g).__name__}, not a tensor", reason=R.MALFORMED)
    if g.dtype != torch.float32:
        raise FeedbackRejected("feedback.grad", f"{who} sent dtype {g.dtype}", "send float32", reason=R.DTYPE)
    if tuple(g.shape) != tuple(request.fake.shape):
        raise FeedbackRejected("feedback.grad", f"{who} sent shape {tuple(g.shape)}",
                               f"expected the fake batch's shape {tuple(request.fake.shape)}", reason=R.SHAPE)
    if not all_finite(g):
        raise FeedbackRejected("feedback.grad", f"{who} sent non-finite values", reason=R.NONFINITE)
    norm = float(g.flatten(1).norm(dim=1).max()) if g.numel() else 0.0
    if not math.isfinite(norm) or norm > max_norm:
        raise FeedbackRejected("feedback.grad", f"{who} sent per-sample norm {norm:.3g} > bound {max_norm:g}",
                               "raise tdgan.max_feedback_norm if this is legitimate", reason=R.NORM)
    for k, v in reply.stats.items():
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise FeedbackRejected(f"feedback.stats.{k}", f"{who} sent a non-finite or non-scalar statistic",
                                   reason=R.MALFORMED)
    return g
