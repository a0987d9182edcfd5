"""``edgegan edge``: a real edge process that dials the cloud.

``--mode tdgan``: hold a local discriminator and answer the cloud's fake batches (seed 003).
``--mode coalesce``: pre-train a local WGAN-GP, upload (G_k, D_k, η_k) (seed 000 Stage I),
then optionally download the barycenter and fast-adapt it to the local data (Stage II).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch

from edgegan.errors import EdgeganError, require

log = logging.getLogger("edgegan.edge")


def register(sub: argparse._SubParsersAction) -> None:
    from edgegan.cli import add_device_option
    from edgegan.data import DATASETS
    from edgegan.nn import ARCHS

    p = sub.add_parser("edge", help="run an edge node that dials the cloud (gRPC)")
    p.add_argument("--cloud", required=True, help="HOST:PORT of the cloud")
    p.add_argument("--node-id", required=True, help="this node's id (its token must belong to it)")
    p.add_argument("--token", default=None, help="bearer token [default: $EDGEGAN_TOKEN]")
    p.add_argument("--token-file", default=None, help="read the bearer token from this file")
    p.add_argument("--mode", choices=("tdgan", "coalesce"), default="tdgan")
    p.add_argument("--dataset", default="digits", help="one of " + ", ".join(DATASETS))
    p.add_argument("--data-root", default=None, help="folder with torchvision-format files")
    p.add_argument("--classes", default=None, help="comma-separated classes this node holds [default: all]")
    p.add_argument("--max-samples", type=int, default=None, help="keep at most this many local samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the local data subset and training")
    p.add_argument("--arch", choices=ARCHS, default="mlp", help="coalesce: local GAN architecture")
    p.add_argument("--width", type=int, default=None, help="coalesce: hidden size / base channels")
    p.add_argument("--pretrain-steps", type=int, default=500,
                   help="coalesce: local WGAN-GP generator steps before the upload (0: target node only)")
    p.add_argument("--eta", type=float, default=1.0, help="coalesce: relevance radius η_k (λ_k = 1/η_k)")
    p.add_argument("--adapt-steps", type=int, default=0, help="coalesce: Stage II steps after download (0: none)")
    p.add_argument("--ternary", action="store_true", help="coalesce: ternary fast adaptation")
    p.add_argument("--wait-s", type=float, default=600.0, help="coalesce: how long to wait for the barycenter")
    p.add_argument("--out", default=None, help="folder for downloaded/adapted models and edge.json")
    p.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of the cloud: turns on TLS")
    p.add_argument("--tls-cert", default=None, help="client certificate (PEM), when the cloud asks for one")
    p.add_argument("--tls-key", default=None, help="client private key (PEM)")
    p.add_argument("--tls-server-name", default=None, help="expected name in the cloud's certificate")
    p.add_argument("--max-message-mib", type=int, default=64, help="largest gRPC message, MiB")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics on this port (0: off)")
    p.add_argument("--retry-s", type=float, default=60.0,
                   help="retry with back-off while the cloud is unreachable; give up after this many seconds")
    add_device_option(p)
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file)
        require(path.is_file(), "token_file", f"'{path}' not found")
        return path.read_text().strip()
    return args.token or os.environ.get("EDGEGAN_TOKEN", "")


def _local_data(args: argparse.Namespace):
    from edgegan.data import load_dataset, partition_by_classes

    data = load_dataset(args.dataset, args.data_root)
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",") if c.strip()]
        except ValueError:
            raise EdgeganError("classes", f"expected comma-separated integers, got {args.classes!r}") from None
        cap = [args.max_samples] if args.max_samples else None
        return partition_by_classes(data, [classes], cap, seed=args.seed)[0]
    if args.max_samples:
        g = torch.Generator().manual_seed(args.seed)
        return data.subset(torch.randperm(len(data), generator=g)[:args.max_samples])
    return data


async def _coalesce(args: argparse.Namespace, node, conn, device: str, out: Path | None) -> dict:
    """Seed 000 on one node: join the cloud (its training settings), pre-train and upload
    (Stage I, unless ``--pretrain-steps 0``), then download the barycenter and adapt (Stage II)."""
    from edgegan.checkpoint import pack_model, save_checkpoint
    from edgegan.runtime.grpc_edge import download_models, join_coalescence, upload_models

    cfg = await join_coalescence(node, conn, device)
    summary: dict = {"training": dataclasses.asdict(cfg)}
    if args.pretrain_steps > 0:  # a source node (Stage I); 0: a pure target node
        t0 = time.perf_counter()
        models = node.pretrain(args.arch, args.pretrain_steps, cfg, args.width)
        summary["pretrain_seconds"] = time.perf_counter() - t0
        reply = await upload_models(node, conn, models, {"eta": args.eta})
        log.info("uploaded %d bytes (%d of %d uploads)", reply.received_bytes, reply.uploads, reply.expected_uploads)
        summary["uploaded_bytes"] = reply.received_bytes
    if args.adapt_steps > 0:
        bary, _ = await download_models(args.node_id, conn, "barycenter", args.wait_s)
        G = node.adapt(bary, args.adapt_steps, args.ternary, cfg)
        summary["adapted_steps"] = args.adapt_steps
        if out:
            save_checkpoint(out / "barycenter.pt", pack_model(bary["generator"]))
            save_checkpoint(out / "adapted.pt", pack_model(G))
    return summary


def run(args: argparse.Namespace) -> int:
    from edgegan.device import resolve_device
    from edgegan.monitor.metrics import Metrics, start_metrics_server
    from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge
    from edgegan.runtime.roles import EdgeNode

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    metrics = Metrics()
    if args.metrics_port:
        start_metrics_server(args.metrics_port, metrics.registry)
    node = EdgeNode(args.node_id, _local_data(args), device, metrics)
    conn = EdgeConnection(args.cloud, _token(args), args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name,
                          args.max_message_mib << 20, args.retry_s,
                          ("tdgan",) if args.mode == "tdgan" else ("coalesce", "adapt"))
    out = Path(args.out) if args.out else None
    summary: dict = {"node_id": args.node_id, "mode": args.mode, "n_samples": len(node.data)}
    if args.mode == "tdgan":
        done = asyncio.run(run_tdgan_edge(node, conn, str(device)))
        summary.update(step=done.step, reason=done.reason)
    else:
        require(args.eta > 0, "eta", f"must be > 0, got {args.eta}")
        require(args.pretrain_steps > 0 or args.adapt_steps > 0, "pretrain_steps",
                "nothing to do with --pretrain-steps 0 and --adapt-steps 0")
        summary.update(asyncio.run(_coalesce(args, node, conn, str(device), out)))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "edge.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0
