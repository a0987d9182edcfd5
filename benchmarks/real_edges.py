"""Many real edge nodes on one cloud: TDGAN steps over loopback gRPC against the same nodes in-process.

For E digits nodes (1×8×8, batch 64) one cloud role (:class:`edgegan.runtime.roles.TDGANServer`,
behind the same :class:`~edgegan.runtime.guard.Guard` as ``edgegan cloud``) runs TDGAN steps whose
feedback comes either

* in-process: the E nodes of one :class:`~edgegan.runtime.edge_host.EdgeHost` in the cloud's
  process (their pending requests answered in one vectorised pass), or
* over gRPC: the same E nodes hosted by ``--hosts`` edge processes (``EdgeHost`` again, one
  Session stream per node), dialing the cloud over 127.0.0.1.

The two run in alternating rounds (in-process, gRPC, in-process, gRPC, …) so that a drifting load
hits both; each round's first steps are left out. Reported per E: steps/s both ways and their
ratio, the exchange round trip p50 / p99 (requests sent → every reply decoded), the cloud's RSS
(peak of a fresh process serving only a gRPC round: the benchmark's own process also holds the
in-process rounds' nodes) and CPU-seconds per node-step over gRPC, bytes per node-step (the cloud's sent + received
message bytes), and nodes dropped (must be 0).

    python benchmarks/real_edges.py --json benchmarks/results/real_edges.json

``--lookahead`` runs every round with ``tdgan.lookahead``; ``--both`` runs the exact step and the
option in turn within each round and reports a row for each, so that the two settings' ratios
come from the same minutes (``config.lookahead`` lists the settings run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402
import torch  # noqa: E402

BATCH, WIDTH, SAMPLES = 64, 128, 32
#: ``--lookahead``: every run of this process with ``tdgan.lookahead`` (the edges begin each update ahead)
LOOKAHEAD = False


def node_data(node_ids: list[str]) -> dict:
    """Node k holds SAMPLES digits drawn under its own seed (nodes may share images)."""
    from edgegan.data import load_digits

    digits = load_digits()
    return {k: digits.subset(torch.randint(len(digits), (SAMPLES,), generator=torch.Generator().manual_seed(i)))
            for i, k in enumerate(node_ids)}


def ids_of(e: int) -> list[str]:
    return [f"edge-{i}" for i in range(e)]


def cloud_config(e: int, steps: int, folder: str):
    from edgegan.runtime.config import CloudConfig
    from edgegan.tdgan.config import TDGANConfig

    return CloudConfig(allow_anonymous=True, steps=steps, start_nodes=e, min_nodes=e, checkpoint_dir=folder,
                       checkpoint_every=10**9, feedback_timeout_s=120.0, heartbeat_timeout_s=60.0,
                       device="cpu", eval_dataset=None, log_every=10**9,
                       tdgan=TDGANConfig(width=WIDTH, batch_size=BATCH, remind_batch_size=BATCH, lookahead=LOOKAHEAD))


class TimedLink:
    """Wraps a FeedbackLink: times each exchange (requests sent → replies decoded) and each step."""

    def __init__(self, link) -> None:
        self.link, self.exchanges, self.starts = link, [], []

    async def exchange(self, requests, timeout_s):
        t0 = time.perf_counter()
        self.starts.append(t0)
        out = await self.link.exchange(requests, timeout_s)
        self.exchanges.append(time.perf_counter() - t0)
        return out

    def drop(self, node_id, failure) -> None:
        self.link.drop(node_id, failure)

    async def finish(self, step, reason) -> None:
        self.starts.append(time.perf_counter())
        await self.link.finish(step, reason)


def summary(link: TimedLink, warmup: int) -> dict:
    ex = np.array(link.exchanges[warmup:]) * 1e3
    span = link.starts[-1] - link.starts[warmup]
    return {"steps": len(ex), "seconds": span, "p50_ms": float(np.percentile(ex, 50)),
            "p99_ms": float(np.percentile(ex, 99))}


async def inproc_round(e: int, steps: int, warmup: int) -> dict:
    from edgegan.runtime.edge_host import EdgeHost
    from edgegan.runtime.inproc import InprocLink
    from edgegan.runtime.roles import TDGANServer

    with tempfile.TemporaryDirectory() as d:
        server = TDGANServer(cloud_config(e, steps + warmup, d))
        host = EdgeHost(node_data(ids_of(e)))
        link = TimedLink(InprocLink(server, [host.node(k) for k in ids_of(e)]))
        try:
            await server.run(link, asyncio.Event())
        finally:
            host.close()
            server.close()
    return summary(link, warmup)


async def grpc_round(e: int, steps: int, warmup: int, hosts: int) -> dict:
    import grpc

    from edgegan.runtime.grpc_server import EdgeGANServicer, GrpcLink
    from edgegan.runtime.guard import Guard
    from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
    from edgegan.runtime.roles import TDGANServer

    with tempfile.TemporaryDirectory() as d:
        cfg = cloud_config(e, steps + warmup, d)
        server = TDGANServer(cfg)
        guard = Guard(cfg, server.metrics)
        grpc_server = grpc.aio.server(interceptors=[guard], options=guard.server_options(cfg.max_message_bytes))
        grpc_link = GrpcLink(server)
        grpc_link.on_drop = guard.on_drop
        pb_grpc.add_EdgeGANServicer_to_server(EdgeGANServicer(server, grpc_link), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        ids = ids_of(e)
        shares = [ids[i::hosts] for i in range(min(hosts, e))]
        procs = [subprocess.Popen([sys.executable, __file__, "--host-worker", str(port), str(e), ",".join(share)],
                                  env=dict(os.environ, OMP_NUM_THREADS="1")) for share in shares]
        link = TimedLink(grpc_link)
        dropped = [0]
        grpc_link.on_drop = lambda node, reason: (dropped.__setitem__(0, dropped[0] + 1), guard.on_drop(node, reason))
        m = server.metrics.registry.get_sample_value
        try:
            await server.run(link, asyncio.Event())
            out = summary(link, warmup)
            await asyncio.to_thread(lambda: [p.wait(120) for p in procs])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            await grpc_server.stop(0)
            guard.close()
            server.close()
    out.update(dropped=dropped[0], bytes_total=(m("edgegan_bytes_sent_total") or 0) + (m("edgegan_bytes_received_total") or 0))
    return out


def host_worker(port: int, e: int, share: list[str]) -> None:
    """An edge process hosting ``share`` (an EdgeHost; one Session stream per node)."""
    from edgegan.runtime.edge_host import EdgeHost
    from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge

    torch.set_num_threads(1)
    data = node_data(ids_of(e))
    host = EdgeHost({k: data[k] for k in share})

    async def main() -> None:
        await asyncio.gather(*(run_tdgan_edge(host.node(k), EdgeConnection(f"127.0.0.1:{port}")) for k in share))

    try:
        asyncio.run(main())
    finally:
        host.close()


def measure(e: int, steps: int, warmup: int, rounds: int, hosts: int, settings: tuple[bool, ...]) -> list[dict]:
    """One row per ``tdgan.lookahead`` setting in ``settings``; within each round every setting runs
    its in-process and gRPC rounds in turn, so that a drifting load hits all of them."""
    global LOOKAHEAD
    runs: dict[bool, tuple[list, list]] = {la: ([], []) for la in settings}
    for _ in range(rounds):
        for la in settings:
            LOOKAHEAD = la
            inproc, rpc = runs[la]
            inproc.append(asyncio.run(inproc_round(e, steps, warmup)))
            c0 = time.process_time()
            r = asyncio.run(grpc_round(e, steps, warmup, hosts))
            r["cloud_cpu_s"] = time.process_time() - c0
            rpc.append(r)
    rows = []
    for la, (inproc, rpc) in runs.items():
        LOOKAHEAD = la
        in_sps = sum(r["steps"] for r in inproc) / sum(r["seconds"] for r in inproc)
        rpc_sps = sum(r["steps"] for r in rpc) / sum(r["seconds"] for r in rpc)
        node_steps = sum(r["steps"] + warmup for r in rpc) * e
        rows.append({"nodes": e, "lookahead": la, "hosts": min(hosts, e), "inproc_steps_per_s": in_sps,
                     "grpc_steps_per_s": rpc_sps, "ratio": rpc_sps / in_sps,
                     "p50_ms": float(np.median([r["p50_ms"] for r in rpc])),
                     "p99_ms": float(np.max([r["p99_ms"] for r in rpc])),
                     "inproc_p50_ms": float(np.median([r["p50_ms"] for r in inproc])),
                     "cloud_rss_gib": cloud_rss(e, hosts) / 2**30, "bench_process_peak_rss_gib": _peak_rss() / 2**30,
                     "cloud_cpu_ms_per_node_step": 1e3 * sum(r["cloud_cpu_s"] for r in rpc) / node_steps,
                     "bytes_per_node_step": sum(r["bytes_total"] for r in rpc) / node_steps,
                     "dropped": sum(r["dropped"] for r in rpc), "rounds": rounds, "steps_per_round": steps})
    return rows


def steps_for(e: int, steps: int) -> int:
    """Measured steps per round for E nodes: ``steps``, 8/E times as many below E = 8 (a lone node's
    step takes ~5 ms: 30 of them are too few for a ratio), fewer for large E (at least 5)."""
    return steps * 8 // e if e < 8 else max(steps // (1 + e // 64), 5)


def cloud_rss(e: int, hosts: int, steps: int = 10) -> int:
    """Peak RSS (bytes) of a fresh process that only serves the gRPC round's cloud with E streams:
    the benchmark's own process also held the in-process rounds' E nodes."""
    out = subprocess.run([sys.executable, __file__, "--rss-probe", str(e), str(steps), str(hosts),
                          *(["--lookahead"] if LOOKAHEAD else [])],
                         capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return int(out.stdout.strip().splitlines()[-1])


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--nodes", default="1,8,64,1000", help="comma-separated E values")
    ap.add_argument("--steps", type=int, default=30, help="measured steps per round and transport")
    ap.add_argument("--rounds", type=int, default=2, help="alternating in-process / gRPC rounds")
    ap.add_argument("--hosts", type=int, default=2, help="edge processes hosting the E nodes")
    ap.add_argument("--lookahead", action="store_true", help="run with tdgan.lookahead (a named option)")
    ap.add_argument("--both", action="store_true",
                    help="run the exact step and tdgan.lookahead in turn within each round (one row each)")
    ap.add_argument("--rss-probe", nargs=3, metavar=("E", "STEPS", "HOSTS"), help=argparse.SUPPRESS)
    ap.add_argument("--host-worker", nargs=3, metavar=("PORT", "E", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global LOOKAHEAD
    LOOKAHEAD = args.lookahead
    if args.rss_probe:
        e, steps, hosts = (int(v) for v in args.rss_probe)
        torch.set_num_threads(1)
        asyncio.run(grpc_round(e, steps, 2, hosts))
        print(_peak_rss())
        return 0
    if args.host_worker:
        host_worker(int(args.host_worker[0]), int(args.host_worker[1]), args.host_worker[2].split(","))
        return 0
    torch.set_num_threads(1)
    rows = []
    settings = (False, True) if args.both else (args.lookahead,)
    for e in (int(x) for x in args.nodes.split(",")):
        rows.extend(measure(e, steps_for(e, args.steps), 3, args.rounds, args.hosts, settings))
        for r in rows[-len(settings):]:
            print(f"E={e:5d}{' lookahead' if r['lookahead'] else ''}: inproc {r['inproc_steps_per_s']:7.2f} st/s  "
                  f"gRPC {r['grpc_steps_per_s']:7.2f} st/s  "
                  f"ratio {r['ratio']:.2f}  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                  f"RSS {r['cloud_rss_gib']:.2f} GiB  CPU {r['cloud_cpu_ms_per_node_step']:.2f} ms/node-step  "
                  f"{r['bytes_per_node_step']:.0f} B/node-step  dropped {r['dropped']}", flush=True)
    result = {"rows": rows, "config": {"batch": BATCH, "arch": "mlp", "width": WIDTH, "samples_per_node": SAMPLES,
                                       "lookahead": list(settings),
                                       "torch_threads": 1, "cpu_count": os.cpu_count(),
                                       "loadavg_at_end": list(os.getloadavg())}}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
