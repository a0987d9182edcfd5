"""Per-step TDGAN feedback round trip over gRPC loopback versus in-process (issue 7).

For fake batches of 64 digits (1×8×8), 64 MNIST-sized (1×28×28) and 64 CIFAR-sized (3×32×32)
images, the same cloud role (:class:`edgegan.runtime.roles.CloudServer`) runs TDGAN steps
against one edge (:class:`edgegan.runtime.roles.EdgeNode`, synthetic local data of that shape):

* in-process: the edge is an object in the cloud's process (``edgegan.runtime.inproc``);
* gRPC: the edge is a separate process dialing the cloud over 127.0.0.1
  (``edgegan.runtime.grpc_edge``), one Session stream.

Reported per case: the feedback round trip (request sent → reply decoded, including the edge's
discriminator update) p50/p99 over gRPC, whole TDGAN steps per second both ways, and the TCP
payload bytes per step on the loopback connection (from ``ss -ti``: HTTP/2 framing, protobuf,
heartbeats included) against ``payload_bytes`` = fake batch + feedback tensor.

    python benchmarks/feedback_latency.py --json benchmarks/results/feedback_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CASES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
BATCH = 64
WIDTH = 128


def synthetic_data(shape: Sequence[int], n: int = 640, classes: int = 10, seed: int = 0):
    """Random images in [-1, 1] with balanced labels: only the shape matters here."""
    from edgegan.data.tensordata import TensorData

    g = torch.Generator().manual_seed(seed)
    return TensorData("synthetic", torch.rand((n, *shape), generator=g) * 2 - 1, torch.arange(n) % classes, classes)


def cloud_config(shape: Sequence[int], steps: int, folder: str):
    from edgegan.runtime.config import CloudConfig
    from edgegan.tdgan.config import TDGANConfig

    return CloudConfig(allow_anonymous=True, steps=steps, image_shape=list(shape), checkpoint_dir=folder,
                       checkpoint_every=10**9, heartbeat_interval_s=1.0, heartbeat_timeout_s=60.0, device="cpu",
                       tdgan=TDGANConfig(width=WIDTH, batch_size=BATCH, remind_batch_size=BATCH))


class TimedLink:
    """Wraps a FeedbackLink: times every exchange and the step starts; snapshots wire bytes."""

    def __init__(self, inner, warmup: int, wire_bytes=None) -> None:
        self.inner, self.warmup, self.wire_bytes = inner, warmup, wire_bytes
        self.exchange_s: list[float] = []
        self.step_starts: list[float] = []
        self.bytes_at: list[int] = []

    async def exchange(self, requests, timeout_s):
        self.step_starts.append(time.perf_counter())
        if self.wire_bytes and len(self.step_starts) == self.warmup + 1:
            self.bytes_at.append(self.wire_bytes())
        t0 = time.perf_counter()
        out = await self.inner.exchange(requests, timeout_s)
        self.exchange_s.append(time.perf_counter() - t0)
        return out

    def drop(self, node_id, failure) -> None:
        self.inner.drop(node_id, failure)

    async def finish(self, step, reason) -> None:
        self.step_starts.append(time.perf_counter())
        if self.wire_bytes:
            self.bytes_at.append(self.wire_bytes())
        await self.inner.finish(step, reason)

    def summary(self) -> dict:
        ex = np.array(self.exchange_s[self.warmup:]) * 1e3
        starts = self.step_starts[self.warmup:]
        out = {"p50_ms": float(np.percentile(ex, 50)), "p99_ms": float(np.percentile(ex, 99)),
               "steps_per_s": (len(starts) - 1) / (starts[-1] - starts[0]),
               "median_step_ms": float(np.median(np.diff(starts))) * 1e3}
        if len(self.bytes_at) == 2:
            out["bytes_per_step"] = (self.bytes_at[1] - self.bytes_at[0]) / (len(starts) - 1)
        return out


def loopback_bytes(port: int) -> int:
    """TCP payload bytes sent + received on established connections to ``port`` (``ss -ti``)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    sent = sum(int(v) for v in re.findall(r"bytes_sent:(\d+)", out))
    received = sum(int(v) for v in re.findall(r"bytes_received:(\d+)", out))
    return sent + received


async def run_inproc_case(shape, steps: int, warmup: int) -> dict:
    from edgegan.runtime.inproc import InprocLink
    from edgegan.runtime.roles import CloudServer, EdgeNode

    with tempfile.TemporaryDirectory() as d:
        server = CloudServer(cloud_config(shape, steps + warmup, d))
        link = TimedLink(InprocLink(server, [EdgeNode("edge-0", synthetic_data(shape))]), warmup)
        await server.run(link, asyncio.Event())
        server.close()
    return link.summary()


class EchoEdge:
    """An edge with no discriminator: answers every batch with a fixed small gradient, so the
    exchange time is the wire alone (encode, send, decode, answer, send back, decode)."""

    def __init__(self, node_id: str, data) -> None:
        from edgegan.runtime.roles import EdgeNode

        self._node = EdgeNode(node_id, data)
        self.node_id = node_id
        self._grad = torch.full((BATCH, *data.image_shape), 1e-4)

    def info(self):
        return self._node.info()

    def configure_tdgan(self, cfg, image_shape) -> None:
        self._node.configure_tdgan(cfg, image_shape)

    def feedback(self, req):
        from edgegan.tdgan.messages import FeedbackReply

        return FeedbackReply(self.node_id, req.step, self._grad, {})


async def run_grpc_case(shape, steps: int, warmup: int, echo: bool = False) -> dict:
    import grpc

    from edgegan.runtime.grpc_server import EdgeGANServicer, GrpcLink, channel_options
    from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
    from edgegan.runtime.roles import CloudServer

    with tempfile.TemporaryDirectory() as d:
        cfg = cloud_config(shape, steps + warmup, d)
        server = CloudServer(cfg)
        grpc_server = grpc.aio.server(options=channel_options(cfg.max_message_bytes))
        link = GrpcLink(server)
        pb_grpc.add_EdgeGANServicer_to_server(EdgeGANServicer(server, link), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        edge = subprocess.Popen([sys.executable, __file__, "--edge-worker", str(port), ",".join(map(str, shape)),
                                 "echo" if echo else "tdgan"],
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            timed = TimedLink(link, warmup, lambda: loopback_bytes(port))
            await server.run(timed, asyncio.Event())
            await asyncio.to_thread(edge.wait, 60)
        finally:
            if edge.poll() is None:
                edge.kill()
            await grpc_server.stop(0)
            server.close()
    return timed.summary()


def edge_worker(port: int, shape: Sequence[int], echo: bool) -> None:
    from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge
    from edgegan.runtime.roles import EdgeNode

    torch.set_num_threads(1)
    node = (EchoEdge if echo else EdgeNode)("edge-0", synthetic_data(shape))
    asyncio.run(run_tdgan_edge(node, EdgeConnection(f"127.0.0.1:{port}")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per case [default: 300, quick 40]")
    ap.add_argument("--edge-worker", nargs=3, metavar=("PORT", "SHAPE", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.edge_worker:
        edge_worker(int(args.edge_worker[0]), [int(s) for s in args.edge_worker[1].split(",")],
                    args.edge_worker[2] == "echo")
        return 0
    torch.set_num_threads(1)
    steps = args.steps or (40 if args.quick else 300)
    warmup = 10 if args.quick else 30
    rows = []
    for name, shape in CASES.items():
        inproc = asyncio.run(run_inproc_case(shape, steps, warmup))
        rpc = asyncio.run(run_grpc_case(shape, steps, warmup))
        wire = asyncio.run(run_grpc_case(shape, steps, warmup, echo=True))
        numel = BATCH * int(np.prod(shape))
        rows.append({"case": name, "shape": [BATCH, *shape], "grpc_p50_ms": rpc["p50_ms"], "grpc_p99_ms": rpc["p99_ms"],
                     "inproc_p50_ms": inproc["p50_ms"], "inproc_steps_per_s": inproc["steps_per_s"],
                     "grpc_steps_per_s": rpc["steps_per_s"],
                     "throughput_ratio": rpc["steps_per_s"] / inproc["steps_per_s"],
                     "inproc_median_step_ms": inproc["median_step_ms"], "grpc_median_step_ms": rpc["median_step_ms"],
                     "wire_only_p50_ms": wire["p50_ms"], "wire_only_p99_ms": wire["p99_ms"],
                     "bytes_per_step": rpc["bytes_per_step"], "payload_bytes": 2 * numel * 4,
                     "bytes_ratio": rpc["bytes_per_step"] / (2 * numel * 4)})
    print(f"{'case':7} {'shape':>14} {'gRPC p50 ms':>11} {'p99 ms':>8} {'wire p50':>8} {'inproc p50':>10} "
          f"{'inproc st/s':>11} {'gRPC st/s':>9} {'ratio':>6} {'bytes/step':>10} {'payload':>9} {'x':>5}")
    for r in rows:
        print(f"{r['case']:7} {'x'.join(map(str, r['shape'])):>14} {r['grpc_p50_ms']:11.2f} {r['grpc_p99_ms']:8.2f} "
              f"{r['wire_only_p50_ms']:8.2f} {r['inproc_p50_ms']:10.2f} {r['inproc_steps_per_s']:11.1f} "
              f"{r['grpc_steps_per_s']:9.1f} "
              f"{r['throughput_ratio']:6.2f} {r['bytes_per_step']:10.0f} {r['payload_bytes']:9d} {r['bytes_ratio']:5.3f}")
    result = {"cases": rows, "config": {"batch": BATCH, "arch": "mlp", "width": WIDTH, "steps": steps,
                                        "warmup": warmup, "edges": 1, "torch_threads": 1,
                                        "cpu": os.cpu_count(), "loadavg_at_end": os.getloadavg()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
