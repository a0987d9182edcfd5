"""Every Prometheus collector edgegan exports, declared once, units in the names.

Collectors live on a :class:`Metrics` object bound to one ``CollectorRegistry`` (a fresh one
by default), so tests and several roles in one process never collide. No label takes
per-node values: label sets are small and fixed (``reason``, ``kind``, ``direction``).

| metric | type | meaning |
| --- | --- | --- |
| edgegan_nodes_online | gauge | nodes currently online (TDGAN membership) |
| edgegan_joins_total / edgegan_leaves_total | counter | membership changes |
| edgegan_feedback_roundtrip_seconds | histogram | send fake batch → feedback received, per node-step |
| edgegan_bytes_sent_total / edgegan_bytes_received_total | counter | serialized message bytes |
| edgegan_feedback_rejected_total{reason} | counter | feedback refused before touching G |
| edgegan_feedback_timeouts_total | counter | nodes dropped for no feedback within the deadline |
| edgegan_generator_steps_total | counter | generator steps taken |
| edgegan_generator_step | gauge | current generator step (resumes after restart) |
| edgegan_loss{kind} | gauge | last losses (reminding, d_loss, g_loss) |
| edgegan_feature_fid | gauge | last feature-FID of the generator (when evaluated) |
| edgegan_uploads_total | counter | model bundles received (Stage I) |
| edgegan_checkpoints_total | counter | checkpoints written |
| edgegan_checkpoint_failures_total | counter | checkpoints that could not be written (disk full, I/O error); the previous one stays |
| edgegan_server_round | gauge | current Flower server round (edgegan.flower) |
| edgegan_round_nodes{outcome} | gauge | nodes sampled / replied / failed in the last training round |
| edgegan_aggregation_seconds | histogram | wall time of one Stage I aggregation (cloud, simulator, Flower) |
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edgegan.errors import FailureReason

REJECT_REASONS = tuple(r.value for r in FailureReason if r.is_refusal)
LOSS_KINDS = ("reminding", "d_loss", "g_loss")
ROUND_OUTCOMES = ("sampled", "replied", "failed")
AGGREGATION_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
ROUNDTRIP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The collectors, registered in ``registry`` (a new private one when omitted)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.nodes_online = Gauge("edgegan_nodes_online", "Nodes currently online", registry=r)
        self.joins = Counter("edgegan_joins_total", "Node joins (first time or rejoin)", registry=r)
        self.leaves = Counter("edgegan_leaves_total", "Node leaves (closed stream, missed heartbeats, kicked)",
                              registry=r)
        self.roundtrip = Histogram("edgegan_feedback_roundtrip_seconds",
                                   "Fake batch sent to feedback received, per node and step",
                                   buckets=ROUNDTRIP_BUCKETS, registry=r)
        self.bytes_sent = Counter("edgegan_bytes_sent_total", "Serialized message bytes sent", registry=r)
        self.bytes_received = Counter("edgegan_bytes_received_total", "Serialized message bytes received",
                                      registry=r)
        self.rejected = Counter("edgegan_feedback_rejected_total", "Feedback refused before touching the generator",
                                ["reason"], registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.feedback_timeouts = Counter("edgegan_feedback_timeouts_total",
                                         "Nodes dropped for giving no feedback within feedback_timeout_s", registry=r)
        self.begun_ahead = Counter("edgegan_updates_begun_ahead_total", "D_k updates an edge finished from what "
                                   "it began while the cloud stepped (tdgan.lookahead)", registry=r)
        self.discarded_ahead = Counter("edgegan_updates_discarded_ahead_total", "D_k updates an edge began ahead "
                                       "and threw away: the request came with other labels, or D_k moved since "
                                       "(tdgan.lookahead)", registry=r)
        self.generator_steps = Counter("edgegan_generator_steps_total", "Generator steps taken", registry=r)
        self.generator_step = Gauge("edgegan_generator_step", "Current generator step", registry=r)
        self.loss = Gauge("edgegan_loss", "Last loss values", ["kind"], registry=r)
        for kind in LOSS_KINDS:
            self.loss.labels(kind)
        self.feature_fid = Gauge("edgegan_feature_fid", "Last feature-FID of the generator", registry=r)
        self.uploads = Counter("edgegan_uploads_total", "Model bundles received", registry=r)
        self.checkpoints = Counter("edgegan_checkpoints_total", "Checkpoints written", registry=r)
        self.checkpoint_failures = Counter("edgegan_checkpoint_failures_total",
                                           "Checkpoints not written (disk full, I/O error); the previous one stays",
                                           registry=r)
        # Flower rounds (edgegan.flower): same names whether a Flower or a native run exports them
        self.server_round = Gauge("edgegan_server_round", "Current Flower server round", registry=r)
        self.round_nodes = Gauge("edgegan_round_nodes", "Nodes sampled, replied and failed in the last round",
                                 ["outcome"], registry=r)
        for outcome in ROUND_OUTCOMES:
            self.round_nodes.labels(outcome)
        self.aggregation_seconds = Histogram("edgegan_aggregation_seconds", "Wall time of one Stage I aggregation",
                                             buckets=AGGREGATION_BUCKETS, registry=r)

    def reject(self, reason: FailureReason | str) -> None:
        """Count one refused feedback under its :class:`FailureReason` (or that reason's value);
        anything that is not a refusal reason counts as ``malformed`` (bounded labels)."""
        try:
            r = FailureReason(reason)
        except ValueError:
            r = FailureReason.MALFORMED
        self.rejected.labels(r.value if r.is_refusal else FailureReason.MALFORMED.value).inc()


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` for ``registry`` on ``addr:port`` in a daemon thread; returns the port."""
    server, _thread = start_http_server(port, addr, registry)
    return int(server.server_address[1])


@contextlib.contextmanager
def metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> Iterator[int]:
    """Serve ``/metrics`` like :func:`start_metrics_server` while the block runs; yields the port
    (``port`` 0: any free one) and shuts the endpoint down on exit (apps that end, tests)."""
    server, thread = start_http_server(port, addr, registry)
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
