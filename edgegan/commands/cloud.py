"""``edgegan cloud``: a real cloud process (gRPC server, TDGAN generator or Stage I
coalescence, checkpoints, Prometheus ``/metrics``, gRPC health; SIGTERM = checkpoint and exit)."""

from __future__ import annotations

import argparse
import asyncio

from edgegan.config import load_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cloud", help="run the cloud server (gRPC) for real edge processes")
    p.add_argument("--config", required=True, help="cloud YAML (see configs/cloud.yaml)")
    p.add_argument("--listen", default=None, help="host:port to bind, overrides the config (port 0: any free)")
    p.add_argument("--checkpoint-dir", default=None, help="overrides checkpoint_dir (resumes from it)")
    p.add_argument("--metrics-port", type=int, default=None, help="overrides metrics_port (0: any free)")
    p.add_argument("--ready-file", default=None, help="write {\"port\", \"metrics_port\"} here once serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.grpc_server import serve
    from edgegan.runtime.malloc import limit_malloc_arenas

    cfg = load_yaml(CloudConfig, args.config)
    for name in ("listen", "checkpoint_dir", "metrics_port"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.validate()
    if cfg.malloc_arenas:
        limit_malloc_arenas(cfg.malloc_arenas)
    return asyncio.run(serve(cfg, ready_file=args.ready_file))
