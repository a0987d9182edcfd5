"""Flower ServerApp of the coalescence pipeline: :class:`BarycenterStrategy` over the
sources' uploads, Stage II at the target, Prometheus ``/metrics`` while it runs.
A round that gets fewer than ``min-sources`` uploads, or whose Stage II fails, raises: the run
then ends ``finished:failed`` (``flwr ls``) with the failed nodes in its details.

``flwr run .`` (simulation) and ``flower-superlink`` + ``flower-supernode`` run it as
``edgegan.flower.server_app:app`` (``[tool.flwr.app.components]`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from edgegan.checkpoint import pack_model, save_checkpoint
from edgegan.flower import task
from edgegan.flower.records import models_from_records
from edgegan.flower.strategy import BARYCENTER_MODELS, BarycenterStrategy
from edgegan.monitor.metrics import Metrics, metrics_server

log = logging.getLogger("edgegan.flower")


def make_server_app(overrides: Mapping[str, Any] | None = None, metrics: Metrics | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run-config keys, ``metrics`` lets a caller read the
    collectors the run updated (a fresh set otherwise)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = task.settings(context.run_config, overrides)
        collectors = metrics or Metrics()
        device = task.node_device({}, cfg)
        strategy = BarycenterStrategy(
            cfg.aggregator, cfg.steps_per_stage, cfg.wgan(), cfg.win(), cfg.seed, device, collectors,
            cfg.required_sources, min_train_nodes=cfg.num_nodes, min_available_nodes=cfg.num_nodes,
            min_evaluate_nodes=0)
        with contextlib.ExitStack() as stack:
            if cfg.metrics_port >= 0:
                port = stack.enter_context(metrics_server(cfg.metrics_port, collectors.registry, cfg.metrics_addr))
                log.info("Prometheus /metrics on %s:%d", cfg.metrics_addr, port)
            result = strategy.start(grid, ArrayRecord(), cfg.num_server_rounds, cfg.round_timeout,
                                    train_config=ConfigRecord({"pretrain-steps": cfg.pretrain_steps}),
                                    evaluate_config=ConfigRecord({"adapt-steps": cfg.adapt_steps}))
            if cfg.out_dir and strategy.barycenter_specs is not None:
                models = models_from_records(result.arrays, strategy.barycenter_specs, BARYCENTER_MODELS)
                save_checkpoint(Path(cfg.out_dir) / "barycenter.pt",
                                {name: pack_model(m) for name, m in models.items()})
            time.sleep(cfg.metrics_linger_s if cfg.metrics_port >= 0 else 0.0)

    return app


app = make_server_app()
