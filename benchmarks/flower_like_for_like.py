"""Like-for-like: edgegan's Ray actor pool against Flower's ``run_simulation`` at N nodes (issue 15 item 3).

Both systems host the same N virtual TDGAN edge nodes (seed 003) on the same digits partition
(8 class pairs, 20 samples per node) and run the same rounds: per round the same ``per_round``
sampled nodes each receive a fake batch x̂ = G(u, y) with labels y drawn from their label
histogram (identical tensors in both systems), do ONE real node step — one critic update of
D_k on its own real images versus x̂ (:meth:`edgegan.tdgan.edge.TDGANEdge.feedback`,
``critic_steps`` = 1) — and reply ∂loss_G/∂x̂ (the fake batch's shape). The replies are
compared per node and round (Σ|∂loss_G/∂x̂| within rtol 1e-5): both systems compute the same gradients.

* **edgegan**: :class:`edgegan.sim.pool.RayPool` (``workers`` actors, 1 CPU and 1 torch thread
  each); the driver sends each worker ONE actor call per round carrying all its nodes'
  requests stacked (``NodeHost.feedback`` with a ``FeedbackBatch``: one fakes and one labels
  tensor; the replies come back as one gradient tensor); D_k stays resident in the worker (row
  ``edgegan``) or is spilled to disk after every activation and restored on the next (row
  ``edgegan_spill``: a state round trip per node step, like Flower's ``context.state``).
* **flower**: flwr ``run_simulation`` with ``workers`` ClientApp actors (``client_resources``
  1 CPU each). Flower runs ONE Ray actor task per message (``RayBackend.process_message``) and
  ships the node's ``Context`` with it; D_k, Adam state and RNG persist in ``context.state``
  (``torch.save`` bytes) and the edge is rebuilt from them on every message.
* ``*_echo`` rows: the same nodes, rounds and sampling with no learning work (reply x + 1).

A *message* is one node's instruction plus that node's reply: ``messages_per_round`` =
sampled nodes per round, the same for both systems. ``process_boundary_calls_per_round`` counts
what really crosses a process boundary: actor calls (edgegan: one batched call per worker with
work; Flower: one actor task per message). Peak RSS is Σ RSS of the run's whole process tree
(driver, Ray daemons, Ray workers / Flower actors), sampled every 0.1 s; each system runs in its
own child process so neither inherits the other's memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_like_for_like.py --nodes 1000 --json benchmarks/results/flower_like_for_like.json
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
CLASSES = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 7], [3, 8], [0, 6]]  # as benchmarks/sim_scale.py
SAMPLES_PER_NODE = 20
REPLY_RTOL = 1e-5  # float32 round-off: buffer alignment can change the order of vectorised sums
SYSTEMS = ("edgegan", "edgegan_spill", "flower", "edgegan_echo", "flower_echo")
LABELS = {
    "edgegan": "edgegan RayPool, D_k resident in the worker",
    "edgegan_spill": "edgegan RayPool, D_k spilled to disk after every step, restored on the next",
    "flower": "Flower run_simulation, D_k in context.state",
    "edgegan_echo": "edgegan RayPool, echo (no node work)",
    "flower_echo": "Flower run_simulation, echo (no node work)",
}


# ---------------------------------------------------------------------- shared by both systems
def node_id(pid: int) -> str:
    return f"n{pid}"


@functools.lru_cache(maxsize=2)
def node_data(nodes: int, seed: int) -> list:
    """Node k holds ``SAMPLES_PER_NODE`` digits of ``CLASSES[k % 8]`` (the same on every process)."""
    from edgegan.data import load_digits, partition_by_classes

    return partition_by_classes(load_digits(), [CLASSES[k % len(CLASSES)] for k in range(nodes)],
                                [SAMPLES_PER_NODE] * nodes, seed=seed)


def tdgan_config(p: dict[str, Any]):
    from edgegan.tdgan.config import TDGANConfig

    return TDGANConfig(batch_size=p["batch_size"], width=p["width"], critic_steps=1, seed=p["seed"])


def round_plan(p: dict[str, Any]) -> Iterator[tuple[int, list[int], list, list]]:
    """Per round: (round, sampled partition ids, fake batches, labels), identical in every process.

    y ∼ the node's label histogram, x̂ = G(u, y) from a fixed (untrained) conditional generator.
    """
    import torch

    from edgegan.data import label_histogram
    from edgegan.nn import build_gan

    parts = node_data(p["nodes"], p["seed"])
    torch.manual_seed(p["seed"])
    G = build_gan("mlp", parts[0].image_shape, tdgan_config(p).latent_dim, parts[0].num_classes, p["width"])[0]
    rng = random.Random(p["seed"])
    gen = torch.Generator().manual_seed(p["seed"])
    B = p["batch_size"]
    for r in range(p["rounds"] + 1):  # round 0 warms up (lazy imports and first autograd calls in the actors)
        pids = rng.sample(range(p["nodes"]), p["per_round"])
        labels = [torch.multinomial(label_histogram(parts[k].y, parts[k].num_classes).double(), B, replacement=True,
                                    generator=gen) for k in pids]
        fakes = G.sample(B * len(pids), torch.cat(labels), generator=gen).split(B)
        yield r, pids, [f.contiguous() for f in fakes], labels


def checksum(grad) -> float:
    """Σ|g| of one reply, in float64 (> 0 for a non-zero reply, so relative differences are meaningful)."""
    return float(grad.double().abs().sum())


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants
    (Ray daemons, workers, actors): per-round differences are robust to other jobs' load."""
    from _common import descendants

    total = 0
    for pid in descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def tree_memory() -> list[dict[str, Any]]:
    """Resident memory of each process of this tree: VmRSS = RssAnon (private heap) + RssFile
    (mapped files, e.g. torch's libraries, shared between processes) + RssShmem (shared memory,
    e.g. Ray's object store), in bytes, with the start of its command line."""
    from _common import descendants

    out = []
    for pid in descendants(os.getpid()):
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        kb = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in status)
              if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
        out.append({"pid": pid, "cmd": " ".join(cmd.split())[:60], **kb})
    return out


class RoundClock:
    """Wall seconds and process-tree CPU seconds of each timed round, and the tree's memory
    (:func:`tree_memory`) at the round end where its total RSS was largest."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.memory: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        yield
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(tree_cpu_seconds() - c0)
        mem = tree_memory()
        if sum(m.get("VmRSS", 0) for m in mem) > sum(m.get("VmRSS", 0) for m in self.memory):
            self.memory = mem


# ---------------------------------------------------------------------- edgegan (RayPool)
def echo_job(host, node_ids: list[str], x: int) -> list[int]:
    """A ``NodeHost.run_job`` job with no node work: answer ``x + 1`` for each node."""
    return [x + 1 for _ in node_ids]


def run_edgegan(p: dict[str, Any], work: str, resident: int) -> dict[str, Any]:
    """Rounds on :class:`RayPool`: one ``feedback`` (or echo job) actor call per worker per round."""
    from edgegan.sim.batches import FeedbackBatch
    from edgegan.sim.pool import RayPool
    from edgegan.tdgan.messages import FeedbackRequest

    t0 = time.perf_counter()
    pool = RayPool(p["workers"], resident_cap=resident, num_cpus=1.0)
    host_of = {k: k % pool.size for k in range(p["nodes"])}
    parts = node_data(p["nodes"], p["seed"])
    cfg = tdgan_config(p)
    for h in range(pool.size):
        pool.call_sync(h, "add_tdgan_nodes", cfg, [(node_id(k), parts[k]) for k in host_of if host_of[k] == h])
    startup = time.perf_counter() - t0
    clock, calls, sums = RoundClock(), [], {}
    for r, pids, fakes, labels in round_plan(p):
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(pids):
            groups.setdefault(host_of[k], []).append(i)

        def call(h: int, idx: list[int]):
            if work == "echo":
                return pool.call(h, "run_job", echo_job, ([node_id(pids[i]) for i in idx], r), {})
            return pool.call(h, "feedback", FeedbackBatch.of([FeedbackRequest(node_id(pids[i]), r, fakes[i], labels[i])
                                                              for i in idx]))

        async def one_round() -> list:
            return await asyncio.gather(*(call(h, idx) for h, idx in groups.items()))

        with clock.round():
            got = asyncio.run(one_round())
        calls.append(len(groups))
        answers = [a for g in got for a in g]
        assert len(answers) == len(pids), f"{len(answers)} replies for {len(pids)} nodes"
        if work == "real":
            for idx, g in zip(groups.values(), got):
                sums.update({f"{r}:{pids[i]}": checksum(a.grad) for i, a in zip(idx, g)})
    stats = pool.stats()
    pool.shutdown()
    out = {"startup_seconds": startup, "round_seconds": clock.wall, "round_cpu_seconds": clock.cpu,
           "memory_at_round_end": clock.memory, "worker_rss_peak_bytes": [s["rss_peak_bytes"] for s in stats],
           "process_boundary_calls": calls, "checksums": sums,
           "resident_nodes_per_worker": resident}
    out.update({k: sum(s[k] for s in stats) for k in ("activations", "created", "restored", "spilled")})
    return out


# ---------------------------------------------------------------------- Flower (run_simulation)
def flower_register(msg, context):
    """``query``: the node tells the server its partition id (TDGAN's join: who am I)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    return Message(RecordDict({"node": ConfigRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


def flower_echo(msg, context):
    from flwr.app import ConfigRecord, Message, RecordDict

    return Message(RecordDict({"c": ConfigRecord({"x": msg.content["c"]["x"] + 1})}), reply_to=msg)


def flower_feedback(msg, context):
    """``train``: rebuild this node's TDGANEdge from ``context.state``, answer the fake batch, store
    the updated D_k / Adam / RNG state back (Flower's way to keep per-node state)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from edgegan.tdgan.edge import TDGANEdge
    from edgegan.tdgan.messages import FeedbackRequest

    torch.set_num_threads(1)
    p = dict(msg.content["p"])
    pid = int(context.node_config["partition-id"])
    edge = TDGANEdge(node_id(pid), node_data(p["nodes"], p["seed"])[pid], cfg=tdgan_config(p))
    if "edge" in context.state.config_records:
        edge.load_state_dict(torch.load(io.BytesIO(context.state.config_records["edge"]["state"]), weights_only=True))
    req = msg.content.array_records["req"].to_torch_state_dict()
    reply = edge.feedback(FeedbackRequest(node_id(pid), int(p["round"]), req["fake"], req["labels"]))
    buf = io.BytesIO()
    torch.save(edge.state_dict(), buf)
    context.state["edge"] = ConfigRecord({"state": buf.getvalue()})
    return Message(RecordDict({"reply": ArrayRecord({"grad": reply.grad}),
                               "stats": MetricRecord({**reply.stats, "state-bytes": len(buf.getvalue())})}),
                   reply_to=msg)


def run_flower(p: dict[str, Any], work: str) -> dict[str, Any]:
    """The same rounds as :func:`run_edgegan` through a Flower ServerApp/ClientApp pair."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    client = ClientApp()
    client.query()(flower_register)
    client.train()(flower_feedback if work == "real" else flower_echo)
    server = ServerApp()
    clock = RoundClock()
    out: dict[str, Any] = {"process_boundary_calls": [], "checksums": {}, "state_bytes": []}
    t0 = time.perf_counter()

    @server.main()
    def main(grid: Grid, context) -> None:
        deadline = time.perf_counter() + 300
        ids = sorted(grid.get_node_ids())
        while len(ids) < p["nodes"] and time.perf_counter() < deadline:  # supernodes register asynchronously
            time.sleep(0.5)
            ids = sorted(grid.get_node_ids())
        got = grid.send_and_receive([Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=n, message_type="query")
                                     for n in ids])
        node_of = {int(m.content["node"]["partition-id"]): m.metadata.src_node_id for m in got}
        assert len(node_of) == p["nodes"], f"{len(node_of)} of {p['nodes']} nodes registered"
        out["startup_seconds"] = time.perf_counter() - t0
        pid_of = {v: k for k, v in node_of.items()}
        for r, pids, fakes, labels in round_plan(p):
            with clock.round():
                if work == "real":
                    cfg = ConfigRecord({**{k: p[k] for k in ("nodes", "seed", "batch_size", "width")}, "round": r})
                    msgs = [Message(RecordDict({"req": ArrayRecord({"fake": f, "labels": y}), "p": cfg}),
                                    dst_node_id=node_of[k], message_type="train")
                            for k, f, y in zip(pids, fakes, labels)]
                else:
                    msgs = [Message(RecordDict({"c": ConfigRecord({"x": r})}), dst_node_id=node_of[k],
                                    message_type="train") for k in pids]
                replies = [m for m in grid.send_and_receive(msgs) if not m.has_error()]
                if work == "real":
                    grads = {pid_of[m.metadata.src_node_id]: m.content.array_records["reply"].to_torch_state_dict()["grad"]
                             for m in replies}
            assert len(replies) == len(pids), f"round {r}: {len(replies)} good replies of {len(pids)}"
            out["process_boundary_calls"].append(len(replies))  # one Ray actor task per message
            if work == "real":
                out["checksums"].update({f"{r}:{k}": checksum(g) for k, g in grads.items()})
                out["state_bytes"] += [m.content.metric_records["stats"]["state-bytes"] for m in replies]

    run_simulation(server, client, num_supernodes=p["nodes"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": p["workers"], "include_dashboard": False,
                                                 "object_store_memory": 256 << 20}})
    assert len(clock.wall) == p["rounds"] + 1, "the Flower ServerApp did not finish its rounds (see its log)"
    return {**out, "round_seconds": clock.wall, "round_cpu_seconds": clock.cpu, "memory_at_round_end": clock.memory}


# ---------------------------------------------------------------------- one system per child process
def child(argv: list[str]) -> int:
    """``child SYSTEM PARAMS_JSON OUT``: run one system under a whole-process-tree memory sampler."""
    import torch

    from _common import PeakMemory

    system, p, out = argv[0], json.loads(argv[1]), Path(argv[2])
    torch.set_num_threads(1)
    with PeakMemory() as mem:
        if system.startswith("edgegan"):
            res = run_edgegan(p, "echo" if system.endswith("echo") else "real", 0 if system.endswith("spill")
                              else p["resident"])
        else:
            res = run_flower(p, "echo" if system.endswith("echo") else "real")
    res.update({"peak_rss_bytes": mem.peak, "processes_at_peak": mem.peak_procs, "peak_breakdown_gib": mem.breakdown(),
                "driver_torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
    out.write_text(json.dumps(res))
    return 0


def _run_child(system: str, p: dict[str, Any], work_dir: Path, timeout_s: float) -> dict[str, Any]:
    out, log = work_dir / f"{system}.json", work_dir / f"{system}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x])}
    cmd = [sys.executable, "-c", "import sys, flower_like_for_like as m; sys.exit(m.child(sys.argv[1:]))",
           system, json.dumps(p), str(out)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
    if rc != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{system} failed (exit {rc}); log tail:\n{tail}")
    res = json.loads(out.read_text())
    res["wall_seconds_total"] = time.perf_counter() - t0
    return res


def _row(system: str, r: dict[str, Any], p: dict[str, Any], request_bytes: int, reply_bytes: int) -> dict[str, Any]:
    first, times, cpu = r["round_seconds"][0], r["round_seconds"][1:], r["round_cpu_seconds"][1:]
    echo = system.endswith("echo")
    row = {"label": LABELS[system], "work": "echo x+1" if echo else "1 critic step on the node's data + reply dL_G/dx",
           "nodes": p["nodes"], "rounds": len(times), "workers": p["workers"],
           "messages_per_round": p["per_round"],
           "process_boundary_calls_per_round": max(r["process_boundary_calls"]),
           "request_payload_bytes_per_round": 8 if echo else request_bytes * p["per_round"],
           "reply_payload_bytes_per_round": 8 if echo else reply_bytes * p["per_round"],
           "seconds_per_round": sum(times) / len(times), "median_seconds_per_round": sorted(times)[len(times) // 2],
           "cpu_seconds_per_round": sum(cpu) / len(cpu), "round_seconds": times, "round_cpu_seconds": cpu,
           "warmup_round_seconds": first, "startup_seconds": r["startup_seconds"],
           "wall_seconds_total": r["wall_seconds_total"],
           "peak_rss_bytes": r["peak_rss_bytes"], "peak_rss_gib": r["peak_rss_bytes"] / 2**30,
           "processes_at_peak": r["processes_at_peak"], "peak_breakdown_gib": r["peak_breakdown_gib"],
           "omp_num_threads": r["omp_num_threads"]}
    mem = r["memory_at_round_end"]
    for kind, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"), ("shmem", "RssShmem")):
        row[f"{kind}_at_round_end_gib"] = sum(m.get(key, 0) for m in mem) / 2**30
    row["processes_at_round_end"] = [{"cmd": m["cmd"], "rss_mib": m.get("VmRSS", 0) >> 20,
                                      "anon_mib": m.get("RssAnon", 0) >> 20} for m in mem]
    for k in ("resident_nodes_per_worker", "activations", "created", "restored", "spilled", "worker_rss_peak_bytes"):
        if k in r:
            row[k] = r[k]
    if r.get("state_bytes"):
        row["context_state_bytes_per_node"] = sum(r["state_bytes"]) / len(r["state_bytes"])
    return row


def run(nodes: int = 1000, rounds: int = 4, per_round: int | None = None, workers: int = 2, resident: int = 512,
        batch_size: int = 8, width: int = 32, seed: int = 0, systems: tuple[str, ...] = SYSTEMS,
        timeout_s: float = 1200.0) -> dict[str, Any]:
    """Run ``systems`` (each in its own child process) on the same nodes and rounds.

    Every system first runs one untimed warm-up round of the same kind (its sampled nodes keep
    the state it created), then ``rounds`` timed rounds. Returns ``{system: row}`` for each
    system (``seconds_per_round``, ``peak_rss_gib``, ``messages_per_round``,
    ``process_boundary_calls_per_round``, …) plus ``setup``, ``ratios`` and
    ``replies`` (largest |difference| of per-node reply checksums between the real-work rows).
    ``per_round`` defaults to half the nodes (about half are online in the churn scenario).
    """
    from edgegan.errors import require

    per_round = nodes // 2 if per_round is None else per_round
    require(1 <= per_round <= nodes, "per_round", f"must be in 1..{nodes}, got {per_round}")
    require(rounds >= 1 and workers >= 1, "rounds", "rounds and workers must be >= 1")
    unknown = sorted(set(systems) - set(SYSTEMS))
    require(not unknown, "systems", f"unknown {unknown}", f"choose from {', '.join(SYSTEMS)}")
    p = {"nodes": nodes, "rounds": rounds, "per_round": per_round, "workers": workers, "resident": resident,
         "batch_size": batch_size, "width": width, "seed": seed}
    image = node_data(nodes, seed)[0].image_shape
    request_bytes = batch_size * 4 * math.prod(image) + batch_size * 8  # float32 fakes + int64 labels
    reply_bytes = batch_size * 4 * math.prod(image)  # float32 gradient of the fake batch
    res: dict[str, Any] = {"setup": {
        **p, "data": f"digits, classes {CLASSES} cycled over nodes, {SAMPLES_PER_NODE} samples per node",
        "request_payload_bytes_per_node": request_bytes, "reply_payload_bytes_per_node": reply_bytes,
        "message": "one message = one sampled node's instruction (fake batch + labels, or x) plus its reply "
                   "(dL_G/dfake, or x+1); messages_per_round = sampled nodes per round, counted the same way "
                   "for both systems",
        "process_boundary_calls": "actor calls per round: edgegan sends one batched call per worker with work "
                                  "(NodeHost.feedback / run_job); Flower runs one Ray actor task per message "
                                  "(flwr RayBackend.process_message), shipping the node's Context both ways",
        "cpu_seconds_per_round": "user + system CPU seconds of the whole process tree during a round (less "
                                 "sensitive than wall time to other jobs on a shared machine)",
        "peak_rss": "sum of RSS over the child process running the system and all its descendants "
                    "(Ray GCS/raylet, workers, actors), sampled every 0.1 s; pages shared between processes "
                    "(torch's libraries, Ray's object store) count once per process. *_at_round_end_gib split "
                    "the largest round-end total into RssAnon (private), RssFile and RssShmem",
        "threads": "OMP_NUM_THREADS=1 and torch.set_num_threads(1) in the driver, pool workers (RayPool threads=1) "
                   "and Flower actors (set in the ClientApp)"}}
    with tempfile.TemporaryDirectory(prefix="flower-lfl-") as work:
        for system in systems:
            print(f"running {system} ({nodes} nodes, {per_round} per round, {rounds} rounds) ...", flush=True)
            r = _run_child(system, p, Path(work), timeout_s)
            res[system] = _row(system, r, p, request_bytes, reply_bytes)
            res[system]["_checksums"] = r["checksums"]
    real = [s for s in ("edgegan", "edgegan_spill", "flower") if s in res]
    sums = {s: res[s].pop("_checksums") for s in systems}
    if len(real) >= 2:
        ref = sums[real[0]]
        diffs = {s: max((abs(ref[k] - sums[s].get(k, float("inf"))) / max(ref[k], 1e-30) for k in ref),
                        default=float("inf")) for s in real[1:]}
        res["replies"] = {
            "compared_to": real[0], "replies_compared": len(ref), "checksum": "sum |dL_G/dfake| per node and round",
            "max_rel_checksum_diff": diffs, "bit_identical": all(d == 0.0 for d in diffs.values()),
            "agree": all(d <= REPLY_RTOL for d in diffs.values()), "rtol": REPLY_RTOL}
    ratios = {}
    for a, b in (("flower", "edgegan"), ("flower", "edgegan_spill"), ("flower_echo", "edgegan_echo")):
        if a in res and b in res:
            ratios[f"{a}_over_{b}_seconds_per_round"] = res[a]["seconds_per_round"] / res[b]["seconds_per_round"]
            ratios[f"{a}_over_{b}_cpu_seconds_per_round"] = (res[a]["cpu_seconds_per_round"]
                                                             / res[b]["cpu_seconds_per_round"])
            ratios[f"{a}_over_{b}_peak_rss"] = res[a]["peak_rss_bytes"] / res[b]["peak_rss_bytes"]
    res["ratios"] = ratios
    return res


COLUMNS = ("seconds_per_round", "cpu_seconds_per_round", "median_seconds_per_round", "startup_seconds", "peak_rss_gib",
           "anon_at_round_end_gib", "shmem_at_round_end_gib", "messages_per_round", "process_boundary_calls_per_round",
           "processes_at_peak")


def main() -> int:
    import argparse

    sys.path.insert(0, str(HERE))
    from _common import machine, print_table, write_json

    ap = argparse.ArgumentParser(description="edgegan RayPool vs Flower run_simulation, same per-node TDGAN work")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=None, help="nodes sampled per round (default nodes/2)")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors of each system")
    ap.add_argument("--resident", type=int, default=512, help="edgegan: resident nodes per worker")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--quick", action="store_true", help="100 nodes, 2 rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="benchmarks/results/flower_like_for_like.json")
    args = ap.parse_args()
    if args.quick:
        args.nodes, args.rounds = min(args.nodes, 100), 2
    res = {"benchmark": "flower_like_for_like", "machine": machine(), "command": " ".join(sys.argv),
           "note": "timed on a shared 2-core machine while other jobs ran; compare ratios within this run only"}
    res.update(run(args.nodes, args.rounds, args.per_round, args.workers, args.resident, seed=args.seed,
                   systems=tuple(s for s in args.systems.split(",") if s)))
    rows = [{"system": s, **{c: res[s][c] for c in COLUMNS}} for s in SYSTEMS if s in res]
    print_table(rows, f"\n{args.nodes} nodes, {res['setup']['per_round']} sampled per round, {args.workers} workers")
    if res["ratios"]:
        print_table([res["ratios"]], "\nratios (same run)")
    if "replies" in res:
        rep = res["replies"]
        print(f"\nreplies agree across systems (rtol {rep['rtol']:g}): {rep['agree']}, bit-identical: "
              f"{rep['bit_identical']} (largest relative checksum difference {rep['max_rel_checksum_diff']})")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
