"""Per-step TDGAN feedback round trip over gRPC loopback versus in-process (issue 7).

For fake batches of 64 digits (1×8×8), 64 MNIST-sized (1×28×28) and 64 CIFAR-sized (3×32×32)
images, one cloud role (:class:`edgegan.runtime.roles.TDGANServer`) runs TDGAN steps for one
edge node whose feedback comes, in alternating blocks of steps, from

* in-process: an :class:`edgegan.runtime.roles.EdgeNode` object in the cloud's process;
* gRPC: the same kind of edge in a separate process dialing the cloud over 127.0.0.1
  (``edgegan.runtime.grpc_edge``, one Session stream), through the real ``GrpcLink``.

Interleaving the two in blocks inside one run keeps the comparison fair on a shared machine
whose load drifts. Reported per case: the feedback round trip (fake batch sent → feedback
decoded, including the edge's discriminator update) p50/p99 over gRPC and in-process, whole
TDGAN steps per second each way (the first step of each block is left out), the TCP payload
bytes per gRPC step on the loopback connection (``ss -ti``: HTTP/2 framing, protobuf, labels,
heartbeats included) against ``payload_bytes`` = fake batch + feedback tensor, and the
wire-only round trip of an edge that answers at once (no discriminator work), and the floor
under both: the same bytes each way over a bare gRPC stream of raw bytes to another process
(``grpc_floor``: no protobuf, no edgegan code), once back to back and once with both processes
idle for the in-process D_k pass before each round trip (``gap fl``: what a step's exchange
pays on a CPU that idled meanwhile). Each case runs ``--repeats`` times with the exact
step (the default) and as often, alternating, with ``tdgan.lookahead`` (``lookahead_*`` columns:
the edge begins D_k's real half for the next labels while the cloud steps; another float
summation order, a named option); reported are medians over the runs, and each run's ratio.

    python benchmarks/feedback_latency.py --json benchmarks/results/feedback_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402
import torch  # noqa: E402

CASES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
BATCH = 64
WIDTH = 128
NODE = "edge-0"


def synthetic_data(shape: Sequence[int], n: int = 640, classes: int = 10, seed: int = 0):
    """Random images in [-1, 1] with balanced labels: only the shape matters here."""
    from edgegan.data.tensordata import TensorData

    g = torch.Generator().manual_seed(seed)
    return TensorData("synthetic", torch.rand((n, *shape), generator=g) * 2 - 1, torch.arange(n) % classes, classes)


def cloud_config(shape: Sequence[int], steps: int, folder: str, lookahead: bool = False):
    from edgegan.runtime.config import CloudConfig
    from edgegan.tdgan.config import TDGANConfig

    return CloudConfig(allow_anonymous=True, steps=steps, image_shape=list(shape), checkpoint_dir=folder,
                       checkpoint_every=10**9, heartbeat_interval_s=1.0, heartbeat_timeout_s=60.0, device="cpu",
                       tdgan=TDGANConfig(width=WIDTH, batch_size=BATCH, remind_batch_size=BATCH, lookahead=lookahead),
                       eval_dataset=None)  # latency only: no scoring between steps


def loopback_bytes(port: int) -> int:
    """TCP payload bytes sent + received on established connections to ``port`` (``ss -ti``)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(v) for v in re.findall(r"bytes_(?:sent|received):(\d+)", out))


class EchoEdge:
    """An edge with no discriminator: answers every batch with a fixed small gradient, so the
    round trip is the wire alone (encode, send, decode, answer, send back, decode)."""

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

    async def answer(self, req):
        return self.feedback(req)


class AlternatingLink:
    """A FeedbackLink that serves blocks of ``block`` steps alternately from an in-process edge
    and over gRPC, timing each exchange and step and counting the gRPC steps' wire bytes."""

    def __init__(self, grpc_link, local_edge, port: int, block: int, warmup: int, only: str | None = None) -> None:
        self.grpc, self.local, self.port, self.block, self.warmup = grpc_link, local_edge, port, block, warmup
        self.only = only  # "grpc" or "inproc": every step after the warm-up that way
        self.rows: list[dict] = []  # per step: mode, exchange seconds, start time, first-of-block
        self.grpc_bytes = 0
        self._bytes_mark: int | None = None

    def _mode(self, i: int) -> str:
        if i < self.warmup:
            return "grpc" if i % 2 else "inproc"
        if self.only is not None:
            return self.only
        return "inproc" if ((i - self.warmup) // self.block) % 2 == 0 else "grpc"

    def _close_grpc_block(self) -> None:
        if self._bytes_mark is not None:
            self.grpc_bytes += loopback_bytes(self.port) - self._bytes_mark
            self._bytes_mark = None

    async def exchange(self, requests, timeout_s):
        i = len(self.rows)
        mode = self._mode(i)
        first = i < self.warmup or (i - self.warmup) % self.block == 0
        if first:
            self._close_grpc_block()
            if mode == "grpc" and i >= self.warmup:
                self._bytes_mark = loopback_bytes(self.port)
        t0 = time.perf_counter()
        if mode == "grpc":
            out = await self.grpc.exchange(requests, timeout_s)
        else:
            out = {r.node_id: self.local.feedback(r) for r in requests}
        self.rows.append({"mode": mode, "exchange_s": time.perf_counter() - t0, "start": t0,
                          "timed": not first})
        return out

    def drop(self, node_id, failure) -> None:
        self.grpc.drop(node_id, failure)

    async def finish(self, step, reason) -> None:
        self.rows.append({"mode": "end", "start": time.perf_counter(), "timed": False})
        self._close_grpc_block()
        await self.grpc.finish(step, reason)

    def summary(self, mode: str) -> dict:
        rows = self.rows
        ex = np.array([r["exchange_s"] for r in rows[self.warmup:-1] if r["mode"] == mode]) * 1e3
        steps = [rows[i + 1]["start"] - rows[i]["start"] for i in range(self.warmup, len(rows) - 1)
                 if rows[i]["mode"] == mode and rows[i]["timed"] and rows[i + 1]["mode"] in (mode, "end")]
        n_grpc = sum(1 for r in rows[self.warmup:] if r["mode"] == "grpc")
        out = {"p50_ms": float(np.percentile(ex, 50)), "p99_ms": float(np.percentile(ex, 99)),
               "steps_per_s": len(steps) / float(np.sum(steps)), "median_step_ms": float(np.median(steps)) * 1e3,
               "steps": int(len(ex))}
        if mode == "grpc":
            out["bytes_per_step"] = self.grpc_bytes / n_grpc
        return out


async def run_case(shape, steps: int, warmup: int, block: int, echo: bool = False,
                   lookahead: bool = False, only: str | None = None, worker: str = __file__) -> AlternatingLink:
    """One cloud, one remote edge process (``worker --edge-worker …``) plus an in-process twin;
    alternate blocks of steps (``only``: every step after the warm-up one way)."""
    import grpc

    from edgegan.runtime.grpc_server import EdgeGANServicer, GrpcLink
    from edgegan.runtime.guard import Guard
    from edgegan.runtime.proto.v1 import edgegan_pb2_grpc as pb_grpc
    from edgegan.runtime.roles import EdgeNode, TDGANServer

    with tempfile.TemporaryDirectory() as d:
        cfg = cloud_config(shape, steps + warmup, d, lookahead)
        server = TDGANServer(cfg)
        local = (EchoEdge if echo else EdgeNode)(NODE, synthetic_data(shape))
        local.configure_tdgan(cfg.tdgan, cfg.image_shape)
        guard = Guard(cfg, server.metrics)  # as `edgegan cloud` serves: it authenticates every call once
        grpc_server = grpc.aio.server(interceptors=[guard], options=guard.server_options(cfg.max_message_bytes))
        grpc_link = GrpcLink(server)
        pb_grpc.add_EdgeGANServicer_to_server(EdgeGANServicer(server, grpc_link), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        edge = subprocess.Popen([sys.executable, worker, "--edge-worker", str(port), ",".join(map(str, shape)),
                                 "echo" if echo else "tdgan"], env=dict(os.environ, OMP_NUM_THREADS="1"))
        link = AlternatingLink(grpc_link, local, port, block, warmup, only)
        try:
            await server.run(link, asyncio.Event())
            await asyncio.to_thread(edge.wait, 60)
        finally:
            if edge.poll() is None:
                edge.kill()
            await grpc_server.stop(0)
            server.close()
            guard.close()
    return link


def edge_worker(port: int, shape: Sequence[int], echo: bool) -> None:
    from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge
    from edgegan.runtime.roles import EdgeNode

    torch.set_num_threads(1)
    node = (EchoEdge if echo else EdgeNode)(NODE, synthetic_data(shape))
    asyncio.run(run_tdgan_edge(node, EdgeConnection(f"127.0.0.1:{port}")))


#: the floor's channel and server: raw bytes both ways (identity serializers), no size limit in the way
FLOOR_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _raw(b: bytes) -> bytes:
    return b


def _floor_echo():
    """A bare bidirectional echo of raw bytes (no protobuf, no edgegan code)."""
    import grpc

    async def echo(requests, context):
        async for m in requests:
            yield m

    return grpc.method_handlers_generic_handler("floor.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(
        echo, request_deserializer=_raw, response_serializer=_raw)})


def floor_worker() -> None:
    """The far end of :func:`grpc_floor`, in its own process: prints its port, echoes until killed."""
    import grpc

    async def serve() -> None:
        server = grpc.aio.server(options=FLOOR_OPTIONS)
        server.add_generic_rpc_handlers((_floor_echo(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


async def grpc_floor(nbytes: int, iters: int, skip: int, gap_s: float = 0.0) -> dict[str, float]:
    """Round trip of ``nbytes`` each way over a bare grpc.aio bidirectional stream of raw bytes to
    another process on 127.0.0.1: what gRPC Python itself costs per exchange, below which no
    transport built on it can go (p50 / p99 in ms, the first ``skip`` left out). With ``gap_s``
    both processes idle that long before each round trip, as they do in a TDGAN step while the
    other side computes (a CPU that has idled wakes cold)."""
    import grpc

    worker = subprocess.Popen([sys.executable, __file__, "--floor-worker"], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        port = int(worker.stdout.readline())  # type: ignore[union-attr]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=FLOOR_OPTIONS) as channel:
            call = channel.stream_stream("/floor.Echo/Stream", request_serializer=_raw, response_deserializer=_raw)()
            payload, ts = os.urandom(nbytes), []
            for _ in range(iters + skip):
                if gap_s:
                    time.sleep(gap_s)  # blocking: this process idles, as the cloud does while the edge computes
                t = time.perf_counter()
                await call.write(payload)
                await call.read()
                ts.append(time.perf_counter() - t)
            await call.done_writing()
    finally:
        worker.kill()
        worker.wait()
    ms = np.array(ts[skip:]) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run, both modes [default: 400]")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case and setting (medians reported)")
    ap.add_argument("--block", type=int, default=20, help="steps per block before switching transport")
    ap.add_argument("--edge-worker", nargs=3, metavar=("PORT", "SHAPE", "KIND"), help=argparse.SUPPRESS)
    ap.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_worker:
        floor_worker()
        return 0
    if args.edge_worker:
        edge_worker(int(args.edge_worker[0]), [int(s) for s in args.edge_worker[1].split(",")],
                    args.edge_worker[2] == "echo")
        return 0
    torch.set_num_threads(1)
    steps = args.steps or (80 if args.quick else 400)
    warmup = 10 if args.quick else 20
    rows = []
    for name, shape in CASES.items():
        runs: dict[bool, list[tuple[dict, dict]]] = {False: [], True: []}
        for _ in range(args.repeats):  # exact and lookahead runs alternate: a drifting load hits both
            for la in (False, True):
                link = asyncio.run(run_case(shape, steps, warmup, args.block, lookahead=la))
                runs[la].append((link.summary("grpc"), link.summary("inproc")))
        wire = asyncio.run(run_case(shape, steps // 2, warmup, args.block, echo=True)).summary("grpc")
        payload = 2 * BATCH * int(np.prod(shape)) * 4
        floor = asyncio.run(grpc_floor(payload // 2, steps // 2, warmup))
        gap_s = float(np.median([i["p50_ms"] for _, i in runs[False]])) / 1e3  # the in-process D_k pass
        floor_gap = asyncio.run(grpc_floor(payload // 2, steps // 2, warmup, gap_s))
        row = {"case": name, "shape": [BATCH, *shape]}
        for la, prefix in ((False, ""), (True, "lookahead_")):
            ratios = [g["steps_per_s"] / i["steps_per_s"] for g, i in runs[la]]
            row.update({f"{prefix}{side}_{key}": float(np.median([r[j][key] for r in runs[la]]))
                        for j, side in enumerate(("grpc", "inproc"))
                        for key in ("p50_ms", "p99_ms", "steps_per_s", "median_step_ms", "steps")})
            row.update({f"{prefix}throughput_ratio": float(np.median(ratios)),
                        f"{prefix}throughput_ratio_runs": ratios,
                        f"{prefix}bytes_per_step": float(np.median([g["bytes_per_step"] for g, _ in runs[la]]))})
        row.update({"wire_only_p50_ms": wire["p50_ms"], "wire_only_p99_ms": wire["p99_ms"],
                    "grpc_floor_p50_ms": floor["p50_ms"], "grpc_floor_p99_ms": floor["p99_ms"],
                    "grpc_floor_gap_p50_ms": floor_gap["p50_ms"], "grpc_floor_gap_s": gap_s,
                    "payload_bytes": payload, "bytes_ratio": row["bytes_per_step"] / payload})
        rows.append(row)
    print(f"{'case':7} {'shape':>11} {'gRPC p50':>8} {'p99':>7} {'wire p50':>8} {'floor':>6} {'gap fl':>6} "
          f"{'inproc p50':>10} "
          f"{'inproc st/s':>11} {'gRPC st/s':>9} {'ratio':>5} {'bytes/step':>10} {'payload':>8} {'x':>5} "
          f"{'la p50':>6} {'la ratio':>8}  (ms; la: tdgan.lookahead)")
    for r in rows:
        print(f"{r['case']:7} {'x'.join(map(str, r['shape'])):>11} {r['grpc_p50_ms']:8.2f} {r['grpc_p99_ms']:7.2f} "
              f"{r['wire_only_p50_ms']:8.2f} {r['grpc_floor_p50_ms']:6.2f} {r['grpc_floor_gap_p50_ms']:6.2f} "
              f"{r['inproc_p50_ms']:10.2f} "
              f"{r['inproc_steps_per_s']:11.1f} "
              f"{r['grpc_steps_per_s']:9.1f} {r['throughput_ratio']:5.2f} {r['bytes_per_step']:10.0f} "
              f"{r['payload_bytes']:8d} {r['bytes_ratio']:5.3f} {r['lookahead_grpc_p50_ms']:6.2f} "
              f"{r['lookahead_throughput_ratio']:8.2f}")
    result = {"cases": rows, "config": {"batch": BATCH, "arch": "mlp", "width": WIDTH, "steps": steps,
                                        "warmup": warmup, "block": args.block, "edges": 1, "torch_threads": 1,
                                        "repeats": args.repeats,
                                        "cpu_count": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())}}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
