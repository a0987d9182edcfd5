"""What one worker call carries: the requests for the nodes a worker hosts, stacked into one tensor
each way (:class:`FeedbackBatch` out, :class:`ReplyBatch` back), so a call ships a few tensors
however many nodes it serves."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from edgegan.errors import require
from edgegan.runtime.roles import NodeFailure
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest


class FeedbackBatch(Sequence[FeedbackRequest]):
    """The requests one worker call carries, as ONE fakes tensor (Σ_k B_k, C, H, W) and ONE labels
    tensor (Σ_k B_k,) plus the node ids and steps; ``batch[i]`` is request i (views, no copy)."""

    def __init__(self, node_ids: list[str], steps: list[int], fakes: torch.Tensor, labels: torch.Tensor,
                 sizes: list[int]) -> None:
        self.node_ids, self.steps, self.fakes, self.labels, self.sizes = node_ids, steps, fakes, labels, sizes
        self._at = list(itertools.accumulate(sizes, initial=0))

    @classmethod
    def of(cls, requests: Sequence[FeedbackRequest]) -> FeedbackBatch:
        if isinstance(requests, FeedbackBatch):
            return requests
        require(len(requests) > 0, "requests", "a worker call needs at least one request")
        return cls([r.node_id for r in requests], [r.step for r in requests],
                   torch.cat([r.fake for r in requests]), torch.cat([r.labels for r in requests]),
                   [len(r.labels) for r in requests])

    def to(self, device: torch.device) -> FeedbackBatch:
        return FeedbackBatch(self.node_ids, self.steps, self.fakes.to(device), self.labels.to(device), self.sizes)

    def __len__(self) -> int:
        return len(self.node_ids)

    def __getitem__(self, i: int) -> FeedbackRequest:  # type: ignore[override]
        rows = slice(self._at[i], self._at[i + 1])
        return FeedbackRequest(self.node_ids[i], self.steps[i], self.fakes[rows], self.labels[rows])


class ReplyBatch(Sequence[FeedbackReply | NodeFailure]):
    """What a worker call answers, in the order of its :class:`FeedbackBatch`: the replies' gradients as
    ONE tensor (rows of failed nodes absent), their stats, and a :class:`NodeFailure` per failed node;
    ``batch[i]`` is node i's :class:`FeedbackReply` (a view of the gradient rows) or failure."""

    def __init__(self, answers: Sequence[FeedbackReply | NodeFailure]) -> None:
        replies = [a for a in answers if isinstance(a, FeedbackReply)]
        self.failures = {i: a for i, a in enumerate(answers) if isinstance(a, NodeFailure)}
        self.node_ids = [a.node_id if isinstance(a, FeedbackReply) else "" for a in answers]
        self.steps = [a.step if isinstance(a, FeedbackReply) else -1 for a in answers]
        self.stats = [a.stats if isinstance(a, FeedbackReply) else {} for a in answers]
        self.sizes = [len(a.grad) if isinstance(a, FeedbackReply) else 0 for a in answers]
        self.grads = torch.cat([r.grad.cpu() for r in replies]) if replies else torch.empty(0)
        self._at = list(itertools.accumulate(self.sizes, initial=0))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> FeedbackReply | NodeFailure:  # type: ignore[override]
        if i in self.failures:
            return self.failures[i]
        return FeedbackReply(self.node_ids[i], self.steps[i], self.grads[self._at[i]:self._at[i + 1]], self.stats[i])
