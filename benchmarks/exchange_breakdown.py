"""Where a lone node's gRPC exchange goes, piece by piece (issue 23: profile before you optimise).

One cloud and one edge process, as in ``feedback_latency.py`` (digits by default), every step
over gRPC. Both processes stamp ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by the two
processes) at the seams of one exchange, by wrapping the runtime's own functions here, not in
the product:

    cloud: exchange begins → request serialised → edge has read it → edge begins the D_k pass
    → pass ends → edge hands the reply to gRPC → gRPC completes the edge's write → cloud's guard
    has the raw reply → parsed → decoded and handed over → exchange returns

and the table gives each seam's p50 / mean over the steps, the exchange minus the pass (``W``:
what the transport adds to a step), split into our Python (encode, decode, queues, tasks) and
gRPC's transit (write → the other side's read, wake-ups included), next to a bare gRPC round
trip of the same bytes back to back and with both processes idle for the pass before each
(``feedback_latency.grpc_floor``). Run with the exact step and with ``tdgan.lookahead``.

    python benchmarks/exchange_breakdown.py --json benchmarks/results/exchange_breakdown.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402

import feedback_latency as fl  # noqa: E402

#: the seams of one exchange, in order; the segment between two seams is named after its end
SEAMS = ["exchange_in", "serialised", "edge_read", "pass_in", "pass_out", "reply_written_in", "reply_written",
         "cloud_raw", "cloud_parsed", "cloud_decoded", "exchange_out"]
#: segments spent in gRPC's own transit (write → the other process's read, wake-ups included)
TRANSIT = {"edge_read", "reply_written", "cloud_raw"}
STAMPS: list[tuple[str, int, float]] = []


def stamp(seam: str, step: int) -> None:
    STAMPS.append((seam, int(step), time.perf_counter()))


def stamp_cloud() -> None:
    """Wrap the cloud's exchange, its guard's (de)serialisation and the reply's decoding."""
    from edgegan.runtime import grpc_link, guard
    from edgegan.runtime.proto.v1 import edgegan_pb2 as pb

    exchange, on_reply = grpc_link.GrpcLink.exchange, grpc_link.OpenSession.on_reply
    parse, serialize = guard.Guard._parse, guard.Guard._serialize

    async def exchange_(self, requests, timeout_s):
        stamp("exchange_in", requests[0].step)
        out = await exchange(self, requests, timeout_s)
        stamp("exchange_out", requests[0].step)
        return out

    def on_reply_(self, msg):
        on_reply(self, msg)
        stamp("cloud_decoded", msg.step)

    async def parse_(self, method, raw, deserializer):
        t = time.perf_counter()
        msg = await parse(self, method, raw, deserializer)
        if method == "Session" and msg.WhichOneof("kind") == "reply":
            STAMPS.append(("cloud_raw", msg.reply.step, t))
            stamp("cloud_parsed", msg.reply.step)
        return msg

    def serialize_(self, serializer, msg):
        raw = serialize(self, serializer, msg)
        if isinstance(msg, pb.CloudMessage) and msg.WhichOneof("kind") == "request":
            stamp("serialised", msg.request.step)
        return raw

    grpc_link.GrpcLink.exchange, grpc_link.OpenSession.on_reply = exchange_, on_reply_
    guard.Guard._parse, guard.Guard._serialize = parse_, serialize_


def stamp_edge() -> None:
    """Wrap the edge's read, its D_k pass and its reply's write."""
    from edgegan.runtime import grpc_edge
    from edgegan.runtime.edge_node import EdgeNode

    read, send, feedback = grpc_edge._Stream.read, grpc_edge._Stream.send, EdgeNode.feedback

    async def read_(self):
        msg = await read(self)
        if msg.WhichOneof("kind") == "request":
            stamp("edge_read", msg.request.step)
        return msg

    async def send_(self, msg, step=None):
        if step is not None:
            stamp("reply_written_in", step)
        await send(self, msg, step)
        if step is not None:
            stamp("reply_written", step)

    def feedback_(self, req):
        stamp("pass_in", req.step)
        out = feedback(self, req)
        stamp("pass_out", req.step)
        return out

    grpc_edge._Stream.read, grpc_edge._Stream.send, EdgeNode.feedback = read_, send_, feedback_


def breakdown(stamps: list, skip: int) -> dict:
    """Per segment p50 / mean in ms over the steps that have every seam (the first ``skip`` left out)."""
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    for seam, step, t in stamps:
        by_step[step].setdefault(seam, t)
    steps = sorted(s for s, d in by_step.items() if all(k in d for k in SEAMS))[skip:]
    ms = {b: np.array([(by_step[s][b] - by_step[s][a]) * 1e3 for s in steps]) for a, b in zip(SEAMS, SEAMS[1:])}
    exchange = sum(ms.values())
    wire = exchange - ms["pass_out"]
    transit = sum(ms[k] for k in TRANSIT)
    row = {"steps": len(steps), "segments": {k: {"p50_ms": float(np.median(v)), "mean_ms": float(v.mean())}
                                             for k, v in ms.items()}}
    row.update({"exchange_p50_ms": float(np.median(exchange)), "pass_p50_ms": float(np.median(ms["pass_out"])),
                "wire_p50_ms": float(np.median(wire)), "transit_p50_ms": float(np.median(transit)),
                "python_p50_ms": float(np.median(wire - transit))})
    return row


def measure(shape, steps: int, lookahead: bool, skip: int) -> dict:
    with open(os.environ["EDGEGAN_BREAKDOWN_EDGE"], "w"):
        pass
    link = asyncio.run(fl.run_case(shape, steps, 20, 20, lookahead=lookahead, only="grpc", worker=__file__))
    edge = [tuple(s) for s in json.loads(Path(os.environ["EDGEGAN_BREAKDOWN_EDGE"]).read_text())]
    row = breakdown(STAMPS + edge, skip)
    STAMPS.clear()
    row["grpc_steps_per_s"] = link.summary("grpc")["steps_per_s"]
    return row


def edge_worker(args: list[str]) -> None:
    stamp_edge()
    try:
        fl.edge_worker(int(args[0]), [int(s) for s in args[1].split(",")], args[2] == "echo")
    finally:
        Path(os.environ["EDGEGAN_BREAKDOWN_EDGE"]).write_text(json.dumps(STAMPS))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--case", default="digits", choices=sorted(fl.CASES))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating (medians reported)")
    ap.add_argument("--edge-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.edge_worker:
        edge_worker(args.edge_worker)
        return 0
    import tempfile

    import torch

    torch.set_num_threads(1)
    shape = fl.CASES[args.case]
    stamp_cloud()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d:
        os.environ["EDGEGAN_BREAKDOWN_EDGE"] = str(Path(d) / "edge.json")
        for _ in range(args.repeats):
            for la in (False, True):
                runs[la].append(measure(shape, args.steps, la, skip=40))
    payload = fl.BATCH * int(np.prod(shape)) * 4
    pass_s = float(np.median([r["pass_p50_ms"] for r in runs[False]])) / 1e3
    floor = asyncio.run(fl.grpc_floor(payload, args.steps // 2, 20))["p50_ms"]
    floor_gap = asyncio.run(fl.grpc_floor(payload, args.steps // 2, 20, pass_s))["p50_ms"]
    rows = []
    for la, name in ((False, "exact"), (True, "lookahead")):
        med = {k: float(np.median([r[k] for r in runs[la]])) for k in
               ("exchange_p50_ms", "pass_p50_ms", "wire_p50_ms", "transit_p50_ms", "python_p50_ms", "grpc_steps_per_s")}
        segs = {k: float(np.median([r["segments"][k]["p50_ms"] for r in runs[la]])) for k in SEAMS[1:]}
        rows.append({"setting": name, **med, "segments_p50_ms": segs, "runs": runs[la]})
    print(f"{args.case}: one edge over gRPC loopback, {args.steps} steps x {args.repeats} runs per setting "
          f"(medians of per-run p50, ms)")
    print(f"{'segment (ends at)':22}" + "".join(f"{r['setting']:>11}" for r in rows))
    for k in SEAMS[1:]:
        tag = " (transit)" if k in TRANSIT else " (pass)" if k == "pass_out" else ""
        print(f"{k + tag:22}" + "".join(f"{r['segments_p50_ms'][k]:11.3f}" for r in rows))
    for k, label in (("exchange_p50_ms", "exchange"), ("pass_p50_ms", "D_k pass"), ("wire_p50_ms", "W = exch. - pass"),
                     ("python_p50_ms", "  our Python"), ("transit_p50_ms", "  gRPC transit")):
        print(f"{label:22}" + "".join(f"{r[k]:11.3f}" for r in rows))
    print(f"bare gRPC round trip of the same bytes: {floor:.3f} back to back, {floor_gap:.3f} after "
          f"{pass_s * 1e3:.1f} ms idle")
    result = {"case": args.case, "shape": [fl.BATCH, *shape], "steps": args.steps, "repeats": args.repeats,
              "settings": rows, "grpc_floor_p50_ms": floor, "grpc_floor_gap_p50_ms": floor_gap, "gap_s": pass_s,
              "cpu_count": os.cpu_count()}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
