"""TDGAN (seed 003): central conditional generator, temporary local discriminators."""

from edgegan.tdgan.cloud import TDGANCloud
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import TDGANEdge
from edgegan.tdgan.messages import FeedbackRejected, FeedbackReply, FeedbackRequest, NodeInfo, validate_feedback
from edgegan.tdgan.schedule import Event, Schedule, Task

__all__ = [
    "Event", "FeedbackRejected", "FeedbackReply", "FeedbackRequest", "NodeInfo", "Schedule", "TDGANCloud",
    "TDGANConfig", "TDGANEdge", "Task", "validate_feedback",
]
