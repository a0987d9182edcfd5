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
    p.add_argument("--node-id", default=None, help="this node's id (its token must belong to it)")
    p.add_argument("--node-ids", default=None,
                   help="tdgan: host these nodes (comma-separated ids) in this process, each with its own "
                        "Session stream, token, D_k and data partition")
    p.add_argument("--nodes", type=int, default=None, help="tdgan: host this many nodes, ids PREFIX0 … PREFIX{N-1}")
    p.add_argument("--node-prefix", default="edge-", help="id prefix of --nodes [default: edge-]")
    p.add_argument("--node-classes", default=None,
                   help="hosted nodes: classes per node, ';' between nodes, e.g. '0,1,2;3,4' [default: a "
                        "disjoint random share of the --classes samples each]")
    p.add_argument("--node-data", default=None,
                   help="hosted nodes: torch file node id → partition (edgegan.data.save_partitions; "
                        "`edgegan simulate --backend grpc` writes one per host) [default: --node-classes]")
    p.add_argument("--crash-at", default=None,
                   help="simulation: 'ID:STEP,…' — that node loses its D_k and its stream is cut when the cloud "
                        "asks it for generator step STEP; it rejoins with a fresh D_k")
    p.add_argument("--die-at-step", type=int, default=None,
                   help="simulation: SIGKILL this whole process when a hosted node is asked for this step")
    p.add_argument("--token", default=None, help="bearer token [default: $EDGEGAN_TOKEN]")
    p.add_argument("--token-file", default=None, help="read the bearer token from this file")
    p.add_argument("--tokens", default=None,
                   help="hosted nodes: YAML/JSON file node id → token (mode 0600: no access for group/others)")
    p.add_argument("--token-dir", default=None,
                   help="hosted nodes: folder with one file per node id holding its token (each mode 0600)")
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


def _private(path: Path, field: str) -> Path:
    require(path.exists(), field, f"'{path}' not found")
    require(path.stat().st_mode & 0o077 == 0, field, f"'{path}' is readable by group or others",
            f"chmod 600 '{path}'")
    return path


def _node_ids(args: argparse.Namespace) -> list[str]:
    """The ids this process hosts: --node-id, --node-ids or --nodes/--node-prefix (exactly one)."""
    given = [args.node_id is not None, args.node_ids is not None, args.nodes is not None]
    require(sum(given) == 1, "node_id", "name the node(s) once",
            "pass --node-id ID, --node-ids ID,ID,… or --nodes N [--node-prefix P]")
    if args.node_id is not None:
        return [args.node_id]
    if args.nodes is not None:
        require(args.nodes >= 1, "nodes", f"must be >= 1, got {args.nodes}")
        return [f"{args.node_prefix}{i}" for i in range(args.nodes)]
    ids = [k.strip() for k in args.node_ids.split(",") if k.strip()]
    require(bool(ids) and len(set(ids)) == len(ids), "node_ids", f"expected distinct ids, got {args.node_ids!r}")
    return ids


def _tokens(args: argparse.Namespace, ids: list[str]) -> dict[str, str]:
    """Each hosted node's bearer token (--tokens file, --token-dir, or the one-node options)."""
    import yaml

    if args.tokens:
        table = yaml.safe_load(_private(Path(args.tokens), "tokens").read_text()) or {}
        require(isinstance(table, dict), "tokens", "expected a mapping node id → token")
        missing = [k for k in ids if not table.get(k)]
        require(not missing, "tokens", f"no token for {missing}", "add them to the tokens file")
        return {k: str(table[k]) for k in ids}
    if args.token_dir:
        folder = Path(args.token_dir)
        return {k: _private(folder / k, f"token_dir/{k}").read_text().strip() for k in ids}
    require(len(ids) == 1, "tokens", f"{len(ids)} hosted nodes need one token each",
            "pass --tokens FILE (mode 0600) or --token-dir DIR")
    return {ids[0]: _token(args)}


def _hosted_data(args: argparse.Namespace, ids: list[str]) -> dict:
    """Each hosted node's partition: its --node-classes group, or a disjoint random share."""
    from edgegan.data import load_dataset, load_partitions, partition_by_classes, partition_by_count

    if args.node_data:
        table = load_partitions(args.node_data)
        missing = [k for k in ids if k not in table]
        require(not missing, "node_data", f"'{args.node_data}' holds no partition for {missing}",
                "write one partition per hosted node")
        return {k: table[k] for k in ids}
    if len(ids) == 1 and not args.node_classes:
        return {ids[0]: _local_data(args)}
    if args.node_classes:
        groups = [_classes(g) for g in args.node_classes.split(";")]
        require(len(groups) == len(ids), "node_classes", f"{len(groups)} class groups for {len(ids)} nodes",
                "give one ';'-separated group per node")
        cap = [args.max_samples] * len(ids) if args.max_samples else None
        parts = partition_by_classes(load_dataset(args.dataset, args.data_root), groups, cap, seed=args.seed,
                                     disjoint=True)
    else:
        pool = _local_data(_no_cap(args))
        each = args.max_samples or len(pool) // len(ids)
        parts = partition_by_count(pool, [each] * len(ids), seed=args.seed)
    return dict(zip(ids, parts))


def _crash_at(args: argparse.Namespace) -> dict[str, int]:
    """``--crash-at 'ID:STEP,…'`` as node id → step."""
    out: dict[str, int] = {}
    for item in (args.crash_at or "").split(","):
        if item.strip():
            node_id, _, step = item.strip().rpartition(":")
            require(bool(node_id) and step.isdigit(), "crash_at", f"expected ID:STEP, got {item.strip()!r}",
                    "e.g. --crash-at edge-3:40,edge-5:90")
            out[node_id] = int(step)
    return out


def _no_cap(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "max_samples": None})


def _classes(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise EdgeganError("classes", f"expected comma-separated integers, got {text!r}") from None


def _local_data(args: argparse.Namespace):
    from edgegan.data import load_dataset, partition_by_classes

    data = load_dataset(args.dataset, args.data_root)
    if args.classes:
        classes = _classes(args.classes)
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


def _connection(args: argparse.Namespace, token: str):
    from edgegan.runtime.grpc_edge import EdgeConnection

    return EdgeConnection(args.cloud, token, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name,
                          args.max_message_mib << 20, args.retry_s,
                          ("tdgan",) if args.mode == "tdgan" else ("coalesce", "adapt"))


async def _host(args: argparse.Namespace, ids: list[str], device, metrics) -> dict:
    """Host ``ids`` in this process (:class:`~edgegan.runtime.edge_host.EdgeHost`): one Session per
    node, each retried on its own; the summary lists each node's end."""
    from edgegan.runtime.edge_host import EdgeHost
    from edgegan.runtime.grpc_edge import run_tdgan_edge

    tokens = _tokens(args, ids)
    host = EdgeHost(_hosted_data(args, ids), device, metrics, _crash_at(args), args.die_at_step)
    log.info("hosting %d node(s): %s", len(ids), ", ".join(ids[:8]) + (" …" if len(ids) > 8 else ""))

    async def node_run(k: str):
        try:
            return await run_tdgan_edge(host.node(k), _connection(args, tokens[k]), str(device))
        except EdgeganError as e:  # this node is refused or gave up; the others carry on
            log.error("node %s: %s", k, e)
            return e

    try:
        ends = await asyncio.gather(*(node_run(k) for k in ids))
    finally:
        host.close()
    failed = {k: str(e) for k, e in zip(ids, ends) if isinstance(e, EdgeganError)}
    done = [e for e in ends if not isinstance(e, EdgeganError)]
    return {"node_ids": ids, "n_samples": {k: len(d) for k, d in host.data.items()},
            "step": max((d.step for d in done), default=-1), "reason": done[0].reason if done else "failed",
            "failed": failed, "updates_begun_ahead": host.tally.begun,
            "updates_discarded_ahead": host.tally.discarded}


def run(args: argparse.Namespace) -> int:
    from edgegan.device import resolve_device
    from edgegan.monitor.metrics import Metrics, start_metrics_server
    from edgegan.runtime.grpc_edge import run_tdgan_edge
    from edgegan.runtime.roles import EdgeNode

    torch.manual_seed(args.seed)
    ids = _node_ids(args)
    device = resolve_device(args.device)
    metrics = Metrics()
    if args.metrics_port:
        start_metrics_server(args.metrics_port, metrics.registry)
    out = Path(args.out) if args.out else None
    summary: dict = {"mode": args.mode}
    if args.mode == "tdgan" and args.node_id is None:
        summary.update(asyncio.run(_host(args, ids, device, metrics)))
    else:
        require(args.node_id is not None, "node_ids", "coalesce mode runs one node per process",
                "start one `edgegan edge --mode coalesce --node-id ID` per node")
        node = EdgeNode(args.node_id, _local_data(args), device, metrics)
        conn = _connection(args, _tokens(args, ids)[args.node_id])
        summary.update(node_id=args.node_id, n_samples=len(node.data))
        if args.mode == "tdgan":
            done = asyncio.run(run_tdgan_edge(node, conn, str(device)))
            summary.update(step=done.step, reason=done.reason, updates_begun_ahead=node.tally.begun,
                           updates_discarded_ahead=node.tally.discarded)
        else:
            require(args.eta > 0, "eta", f"must be > 0, got {args.eta}")
            require(args.pretrain_steps > 0 or args.adapt_steps > 0, "pretrain_steps",
                    "nothing to do with --pretrain-steps 0 and --adapt-steps 0")
            summary.update(asyncio.run(_coalesce(args, node, conn, str(device), out)))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "edge.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0 if not summary.get("failed") else 1
