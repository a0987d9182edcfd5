"""Flower ClientApp of the coalescence pipeline (seed 000): local pre-training on ``train``
messages at source nodes, Stage II fast adaptation on ``evaluate`` messages at the target.

Run config: :class:`edgegan.flower.task.FlowerTaskConfig`; node config: ``partition-id``
(role), optionally ``device`` (e.g. ``"cuda:1"``) and ``data-root``. Losses, timings and
feature-FID go back as MetricRecords, so they appear in Flower's logs.
"""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgegan.errors import require
from edgegan.flower import task
from edgegan.flower.records import models_from_records, models_to_records
from edgegan.flower.strategy import BARYCENTER_MODELS, UPLOAD_MODELS

STATE_ARRAYS, STATE_SPECS = "local-models", "local-specs"


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` replace run-config keys (tests, the Python API)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = task.settings(context.run_config, overrides)
        role, pid = task.node_role(context.node_config, cfg)
        _, sources, target = task.load_split(cfg, str(context.node_config.get("data-root", "")))
        node = ConfigRecord({"role": role, "partition-id": pid})
        if role == task.TARGET:  # reports in; its data stays for Stage II
            metrics = MetricRecord({"num-examples": len(target)})
            return Message(RecordDict({"node": node, "metrics": metrics}), reply_to=msg)

        device = task.node_device(context.node_config, cfg)
        x = sources[pid].x.to(device)
        previous = None
        if STATE_ARRAYS in context.state.array_records:  # later rounds continue the local GAN
            kept = models_from_records(context.state.array_records[STATE_ARRAYS],
                                       context.state.config_records[STATE_SPECS], UPLOAD_MODELS, device)
            previous = (kept["generator"], kept["critic"])
        G, D, seconds = task.pretrain(x, cfg, pid, previous)
        context.state[STATE_ARRAYS], context.state[STATE_SPECS] = models_to_records({"generator": G, "critic": D})
        arrays, specs = models_to_records({"generator": G, "critic": D})
        node["eta"] = cfg.etas()[pid]
        metrics = MetricRecord({"num-examples": len(x), "pretrain-seconds": seconds,
                                **task.local_losses(G, D, x, cfg)})
        return Message(RecordDict({"arrays": arrays, "specs": specs, "node": node, "metrics": metrics}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = task.settings(context.run_config, overrides)
        role, pid = task.node_role(context.node_config, cfg)
        require(role == task.TARGET, "node_config.partition-id", f"{pid} is a source node",
                "Stage II runs on target nodes only")
        device = task.node_device(context.node_config, cfg)
        models = models_from_records(msg.content.array_records["arrays"], msg.content.config_records["config"],
                                     BARYCENTER_MODELS, device)
        data, _, target = task.load_split(cfg, str(context.node_config.get("data-root", "")))
        _, metrics = task.adapt_and_score(models["generator"], models["critic_prev"], models["critic_new"],
                                          data, target, cfg, pid, device)
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
