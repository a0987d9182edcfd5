"""One error type for bad input (a one-line message naming the field and the fix), and the typed
reasons a node's message is refused or a node is lost."""

from __future__ import annotations

from enum import Enum


class EdgeganError(ValueError):
    """Bad user input or state. ``str(err)`` is one line: ``<field>: <problem>; <fix>``."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}" + (f"; {fix}" if fix else "")
        super().__init__(msg.replace("\n", " "))


def require(cond: bool, field: str, problem: str, fix: str = "") -> None:
    """Raise :class:`EdgeganError` unless ``cond`` holds."""
    if not cond:
        raise EdgeganError(field, problem, fix)


class FailureReason(str, Enum):
    """Why a node's message was refused or the node gave no reply: a typed kind, never read off
    an error's text. The refusal values are the ``reason`` label of
    ``edgegan_feedback_rejected_total``; the others say how a node was lost."""

    MALFORMED = "malformed"        # refused: not what the protocol allows (structure, bytes, statistics)
    DTYPE = "dtype"                # refused: wrong element type
    SHAPE = "shape"                # refused: wrong shape or size
    NONFINITE = "nonfinite"        # refused: NaN / Inf
    NORM = "norm"                  # refused: per-sample feedback norm above the bound
    STALE = "stale"                # refused: answers no pending request (late, duplicate, other step)
    TIMEOUT = "timeout"            # lost: no reply within the deadline
    DISCONNECTED = "disconnected"  # lost: stream closed, node left or crashed
    WORKER_LOST = "worker_lost"    # lost: the simulator worker hosting the node died or hung

    @property
    def is_refusal(self) -> bool:
        """True for the reasons that count as refused feedback (metric labels)."""
        return self in REFUSALS


REFUSALS = frozenset({FailureReason.MALFORMED, FailureReason.DTYPE, FailureReason.SHAPE, FailureReason.NONFINITE,
                      FailureReason.NORM, FailureReason.STALE})


class Refused(EdgeganError):
    """Input refused for a typed :class:`FailureReason` (``reason``), with the usual one-line text."""

    def __init__(self, field: str, problem: str, fix: str = "", *,
                 reason: FailureReason = FailureReason.MALFORMED) -> None:
        super().__init__(field, problem, fix)
        self.reason = reason


class NodeCrashed(Exception):
    """A node crashes on purpose (a scenario's ``crashes``): it loses its state and its stream ends
    abruptly; the transport then rejoins it like a restarted node."""
