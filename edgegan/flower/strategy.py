"""A Flower strategy whose aggregation is edgegan's Stage I barycenter.

Like Flower's ``FedMedian``, :class:`BarycenterStrategy` keeps FedAvg's round loop and node
sampling and replaces the aggregation: ``aggregate_train`` decodes the uploaded (G_k, D_k)
and radii η_k and calls :func:`edgegan.barycenter.aggregate` (recursive W1, seed 000 Alg. 1,
or WIN, seed 004 Alg. 1) — no math here. The aggregated ``ArrayRecord`` carries
``generator`` (G*_K), ``critic_prev`` (ψ̃*_K) and ``critic_new`` (ψ*_K), which the target
node needs for Stage II; ``configure_evaluate`` sends it (with the model specs) to the target
nodes only. Round, node counts, aggregation time, losses and feature-FID go to the
Prometheus collectors of :class:`edgegan.monitor.metrics.Metrics`.

Only public Flower APIs are used (``Strategy``/``FedAvg`` methods and attributes,
``Message``). A round fails — the ServerApp raises, so the run ends ``finished:failed`` —
when fewer than ``min_sources`` sources upload a model or a target's Stage II fails; the
one-line message names each failed node and its error.

Reply contract (``edgegan.flower.client_app``): a source replies ``arrays`` (models
``generator`` and ``critic``), ``specs`` (their specs), ``node`` (``role``, ``partition-id``,
``eta``) and one MetricRecord with ``num-examples``; a target replies ``node`` and metrics only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from edgegan.barycenter import aggregate
from edgegan.barycenter.win import WINConfig
from edgegan.errors import EdgeganError, require
from edgegan.flower.records import models_from_records, models_to_records
from edgegan.gan import WGANConfig
from edgegan.monitor.metrics import Metrics

log = logging.getLogger("edgegan.flower")

UPLOAD_MODELS = ("generator", "critic")
BARYCENTER_MODELS = ("generator", "critic_prev", "critic_new")


def failed_nodes(failed: Mapping[int, str]) -> str:
    """``node <id>: <reason>`` for each failed node, on one line."""
    return "; ".join(f"node {node}: {' '.join(reason.split())}" for node, reason in failed.items())


class BarycenterStrategy(FedAvg):
    """FedAvg's loop with Stage I barycenter aggregation (seed 000 Alg. 1 / seed 004 Alg. 1).

    Parameters
    ----------
    aggregator : ``recursive_w1`` or ``win`` (any name :func:`edgegan.barycenter.aggregate` takes).
    steps_per_stage, wgan : recursive W1 settings; ``win`` : WIN settings.
    seed : ``torch.manual_seed`` before each aggregation, so a run is reproducible and equals a
        direct ``aggregate`` call on the same uploads (ordered by partition id).
    device : where the aggregation runs.
    metrics : Prometheus collectors to update (a private set when omitted).
    min_sources : a round with fewer source uploads fails (EdgeganError naming the failed nodes).
    **fedavg : FedAvg's sampling arguments (``min_train_nodes``, ``min_available_nodes``, …).
    """

    def __init__(self, aggregator: str = "recursive_w1", steps_per_stage: int = 200,
                 wgan: WGANConfig | None = None, win: WINConfig | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", metrics: Metrics | None = None, min_sources: int = 1,
                 **fedavg) -> None:
        require(min_sources >= 1, "min-sources", f"must be >= 1, got {min_sources}")
        super().__init__(**fedavg)
        self.aggregator, self.steps_per_stage, self.wgan, self.win = aggregator, steps_per_stage, wgan, win
        self.seed, self.device, self.min_sources = seed, torch.device(device), min_sources
        self.metrics = metrics or Metrics()
        self.target_nodes: list[int] = []
        self.barycenter_specs: ConfigRecord | None = None

    def summary(self) -> None:
        super().summary()
        log.info("Stage I aggregator: %s (steps_per_stage=%d, seed=%d, device=%s, min_sources=%d)",
                 self.aggregator, self.steps_per_stage, self.seed, self.device, self.min_sources)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling; sources do not need the barycenter, so the train message carries none."""
        messages = list(super().configure_train(server_round, ArrayRecord(), config, grid))
        self.metrics.server_round.set(server_round)
        self.metrics.nodes_online.set(len(list(grid.get_node_ids())))
        self.metrics.round_nodes.labels("sampled").set(len(messages))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Stage I barycenter of the sources' uploads; targets are remembered for Stage II."""
        uploads, contents, targets, failed = [], [], [], {}
        for msg in replies:
            node_id = msg.metadata.src_node_id
            if msg.has_error():
                failed[node_id] = msg.error.reason
                continue
            try:
                node = msg.content.config_records["node"]
                if node["role"] == "target":
                    targets.append(node_id)
                    continue
                models = models_from_records(msg.content.array_records["arrays"],
                                             msg.content.config_records["specs"], UPLOAD_MODELS, self.device)
                uploads.append((int(node["partition-id"]), float(node["eta"]), models))
                contents.append(msg.content)
                self.metrics.bytes_received.inc(msg.content.array_records["arrays"].count_bytes())
            except (KeyError, TypeError, ValueError, EdgeganError) as e:
                failed[node_id] = f"reply refused: {e}"
        self.target_nodes = targets
        self.metrics.round_nodes.labels("replied").set(len(uploads) + len(targets))
        self.metrics.round_nodes.labels("failed").set(len(failed))
        self.metrics.uploads.inc(len(uploads))
        if failed:
            log.warning("round %d: %d node(s) failed: %s", server_round, len(failed), failed_nodes(failed))
        require(len(uploads) >= self.min_sources, "min-sources",
                f"round {server_round}: {len(uploads)} source(s) uploaded a model, {self.min_sources} required"
                + (f" ({failed_nodes(failed)})" if failed else ""),
                "fix the failed nodes (their SuperNode logs have the traceback) or lower min-sources")

        uploads.sort(key=lambda u: u[0])  # partition order: the same input order as a direct call
        torch.manual_seed(self.seed)
        t0 = time.perf_counter()
        res = aggregate(self.aggregator, [u[2]["generator"] for u in uploads], [u[2]["critic"] for u in uploads],
                        [u[1] for u in uploads], self.steps_per_stage, self.wgan, win=self.win)
        seconds = time.perf_counter() - t0
        self.metrics.aggregation_seconds.observe(seconds)

        arrays, self.barycenter_specs = models_to_records(
            {"generator": res.generator, "critic_prev": res.critic_prev, "critic_new": res.critic_new})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        for kind in ("d_loss", "g_loss"):
            if kind.replace("_", "-") in metrics:
                self.metrics.loss.labels(kind).set(float(metrics[kind.replace("_", "-")]))
        metrics["aggregation-seconds"] = seconds
        metrics["sources"] = len(uploads)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the barycenter (arrays + model specs) to the target nodes for Stage II."""
        if self.barycenter_specs is None or not self.target_nodes:
            return []
        config = ConfigRecord({**config, **self.barycenter_specs, "server-round": server_round})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self.metrics.bytes_sent.inc(arrays.count_bytes() * len(self.target_nodes))
        return [Message(content=record, dst_node_id=node, message_type=MessageType.EVALUATE) for node in self.target_nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg's weighted mean of the targets' metrics; feature-FID to Prometheus.

        Every target sent the barycenter must reply: a failed Stage II fails the round.
        """
        replies = list(replies)
        failed = {msg.metadata.src_node_id: msg.error.reason for msg in replies if msg.has_error()}
        answered = {msg.metadata.src_node_id for msg in replies}
        failed.update({node: "no reply before the round timeout" for node in self.target_nodes
                       if node not in answered})
        require(not failed, "target", f"round {server_round}: Stage II failed ({failed_nodes(failed)})",
                "fix the target node (its SuperNode log has the traceback) and rerun")
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None and "fid-adapted" in metrics:
            self.metrics.feature_fid.set(float(metrics["fid-adapted"]))
        return metrics
