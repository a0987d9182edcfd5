"""Scale of the simulator (issue 8): N virtual nodes with churn, each doing a light TDGAN feedback
step (seed 003) when online, on a fixed pool of Ray actors; then the same node count with
trivial work through Flower's ``run_simulation`` for comparison.

Reported: wall time (start-up and per step), peak resident memory of the driver and every
process it started (Ray daemons and actors included, sampled every 0.1 s), host-side overhead
per node activation (restore/create + park/spill, excluding the feedback compute), and Flower's
wall time per round with the same number of nodes messaged per round.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sim_scale.py --nodes 1000 --json benchmarks/results/sim_scale.json
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, print_table, write_json  # noqa: E402


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples Σ RSS over this process and all its descendants; ``peak`` in bytes."""

    def __init__(self, every: float = 0.1) -> None:
        self.every, self.peak, self.peak_procs = every, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = _descendants(me)
            total = sum(_rss(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(pids)
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def run_edgegan(nodes: int, steps: int, workers: int, resident: int, mean_up: float, mean_down: float,
                seed: int, out: Path) -> dict:
    import torch

    from edgegan.sim.run import simulate
    from edgegan.sim.scenario import scenario_from_dict

    torch.set_num_threads(1)
    sc = scenario_from_dict({
        "name": f"sim-scale-{nodes}", "seed": seed, "pipeline": "tdgan",
        "data": {"dataset": "digits", "partition": "classes", "disjoint": False, "samples_per_node": 20,
                 "classes": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 7], [3, 8], [0, 6]]},
        "nodes": {"count": nodes},
        "schedule": {"kind": "churn", "steps": steps, "churn": {"mean_up": mean_up, "mean_down": mean_down}},
        "training": {"steps": steps, "tdgan": {"batch_size": 8, "remind_batch_size": 8, "width": 32}},
        "outputs": {"plots": False, "sample_grids": False},
        "engine": {"backend": "ray", "workers": workers, "resident_nodes": resident},
    })
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        s = simulate(sc, out, evaluate=False)
    wall = time.perf_counter() - t0
    td = s.tdgan
    hosts = s.engine.workers_stats
    acts = sum(h["activations"] for h in hosts)
    host_overhead = sum(h["activate_s"] + h["park_s"] for h in hosts)
    compute = sum(h["compute_s"] for h in hosts)
    return {
        "nodes": nodes, "steps": td.ticks, "generator_steps": td.generator_steps, "workers": len(hosts),
        "resident_nodes_per_worker": resident, "mean_online": td.mean_online, "activations": acts,
        "membership_changes": td.totals["membership_changes"],
        "wall_seconds_total": wall, "wall_seconds_steps": td.wall_seconds,
        "startup_seconds": wall - td.wall_seconds,
        "seconds_per_step": td.wall_seconds / td.ticks,
        "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30, "processes_at_peak": mem.peak_procs,
        "host_overhead_per_activation_ms": 1000 * host_overhead / max(acts, 1),
        "feedback_compute_per_activation_ms": 1000 * compute / max(acts, 1),
        "exchange_per_activation_ms": 1000 * td.exchange_seconds / max(acts, 1),
        "end_to_end_per_activation_ms": 1000 * td.wall_seconds / max(acts, 1),
        "spilled": sum(h["spilled"] for h in hosts), "restored": sum(h["restored"] for h in hosts),
        "created": sum(h["created"] for h in hosts),
        "worker_peak_rss_bytes": [h["rss_peak_bytes"] for h in hosts],
        "accepted": td.totals["accepted"], "rejected": td.totals["rejected"],
    }


def echo(host, node_ids: list[str], x: int) -> list[int]:
    """A job for :meth:`NodeHost.run_job`: activate each node's parked state and answer ``x + 1``,
    the engine's cost per activation with no learning work (the like-for-like peer of a trivial
    Flower ClientApp)."""
    out = []
    for node_id in node_ids:
        t0 = time.perf_counter()
        host._activate(node_id)
        t1 = time.perf_counter()
        host._park()
        host.counters["activations"] += 1
        host.counters["activate_s"] += t1 - t0
        host.counters["park_s"] += time.perf_counter() - t1
        out.append(x + 1)
    return out


def run_edgegan_trivial(nodes: int, rounds: int, per_round: int, workers: int, resident: int, seed: int) -> dict:
    """The same actor pool with trivial work: per round, ``per_round`` random nodes are activated
    (their parked state restored) and echo one number, like the trivial Flower ClientApp."""
    import asyncio
    import random

    import torch

    from edgegan.data import load_digits
    from edgegan.sim.engine import make_pool
    from edgegan.tdgan.config import TDGANConfig

    torch.set_num_threads(1)
    digits = load_digits()
    cfg = TDGANConfig(batch_size=8, remind_batch_size=8, width=32)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        pool = make_pool("ray", workers, resident)
        ids = [f"n{i}" for i in range(nodes)]
        host_of = {k: i % pool.size for i, k in enumerate(ids)}
        for h in range(pool.size):
            pool.call_sync(h, "add_tdgan_nodes", cfg, [(k, digits.subset(list(range(i % 1700, i % 1700 + 20))))
                                                       for i, k in enumerate(ids) if host_of[k] == h])
        startup = time.perf_counter() - t0
        rng = random.Random(seed)
        times: list[float] = []

        async def one_round(r: int) -> int:
            pick = rng.sample(ids, min(per_round, nodes))
            groups = [[k for k in pick if host_of[k] == h] for h in range(pool.size)]
            got = await asyncio.gather(*(pool.call(h, "run_job", echo, (g, r), {}) for h, g in enumerate(groups) if g))
            return sum(len(g) for g in got)

        for r in range(rounds):
            t1 = time.perf_counter()
            replies = asyncio.run(one_round(r))
            times.append(time.perf_counter() - t1)
            assert replies == min(per_round, nodes)
        stats = pool.stats()
        pool.shutdown()
    steady = sorted(times[1:]) or times
    acts = sum(s["activations"] for s in stats)
    return {"nodes": nodes, "rounds": rounds, "messages_per_round": per_round, "startup_seconds": startup,
            "first_round_seconds": times[0], "steady_seconds_per_round": steady[len(steady) // 2],
            "round_seconds": times, "activations": acts,
            "host_overhead_per_activation_ms": 1000 * sum(s["activate_s"] + s["park_s"] for s in stats) / max(acts, 1),
            "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30}


def run_flower(nodes: int, rounds: int, per_round: int, workers: int) -> dict:
    """Trivial ClientApp (echo one number) on ``nodes`` supernodes; ``per_round`` messaged per round."""
    import random

    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        x = msg.content["c"]["x"]
        return Message(RecordDict({"c": ConfigRecord({"x": x + 1})}), reply_to=msg)

    server = ServerApp()
    times: list[float] = []
    replies: list[int] = []
    ready: list[float] = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.perf_counter() + 300
        ids = sorted(grid.get_node_ids())
        while len(ids) < nodes and time.perf_counter() < deadline:  # supernodes register asynchronously
            time.sleep(0.5)
            ids = sorted(grid.get_node_ids())
        ready.append(time.perf_counter())
        rng = random.Random(0)
        for r in range(rounds):
            t0 = time.perf_counter()
            pick = rng.sample(ids, min(per_round, len(ids)))
            msgs = [Message(RecordDict({"c": ConfigRecord({"x": r})}), dst_node_id=n, message_type="train")
                    for n in pick]
            got = list(grid.send_and_receive(msgs))
            times.append(time.perf_counter() - t0)
            replies.append(sum(1 for m in got if m.has_content()))
            print(f"flower round {r + 1}/{rounds}: {times[-1]:.2f} s, {replies[-1]} replies", flush=True)

    t0 = time.perf_counter()
    with PeakMemory() as mem:
        run_simulation(server, client, num_supernodes=nodes,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": workers, "include_dashboard": False}})
    wall = time.perf_counter() - t0
    steady = sorted(times[1:]) or times  # round 1 also starts Flower's Ray actors
    return {"nodes": nodes, "nodes_ready_after_seconds": (ready[0] - t0) if ready else None, "rounds": len(times),
            "first_round_seconds": times[0] if times else None,
            "steady_seconds_per_round": steady[len(steady) // 2] if steady else None,
            "messages_per_round": per_round, "round_seconds": times,
            "seconds_per_round": sum(times) / max(len(times), 1), "replies": replies,
            "wall_seconds_total": wall, "startup_seconds": wall - sum(times),
            "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30}


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description="simulator scale: N virtual TDGAN nodes with churn vs Flower")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="TDGAN generator steps (schedule length)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (edgegan) / Flower Ray CPUs")
    p.add_argument("--resident", type=int, default=256, help="virtual nodes kept in memory per actor")
    p.add_argument("--mean-up", type=float, default=10.0)
    p.add_argument("--mean-down", type=float, default=10.0)
    p.add_argument("--flower-rounds", type=int, default=3)
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument("--reuse-edgegan", action="store_true", help="take the edgegan part from the existing --json")
    p.add_argument("--quick", action="store_true", help="100 nodes, 5 steps, 2 Flower rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/sim_scale.json")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.steps, args.flower_rounds = min(args.nodes, 100), 5, 2
    res: dict = {"benchmark": "sim_scale", "machine": machine(), "command": " ".join(sys.argv),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "note": "timed on a shared 2-core machine while other jobs ran"}
    if args.reuse_edgegan:
        import json

        e = json.loads(Path(args.json).read_text())["edgegan"]
    else:
        e = run_edgegan(args.nodes, args.steps, args.workers, args.resident, args.mean_up, args.mean_down,
                        args.seed, Path("/tmp") / f"sim_scale_run_{os.getpid()}")
    res["edgegan"] = e
    print_table([{k: e[k] for k in ("nodes", "steps", "mean_online", "activations", "startup_seconds",
                                    "seconds_per_step", "peak_rss_gib", "host_overhead_per_activation_ms",
                                    "end_to_end_per_activation_ms")}], "\nedgegan (Ray actor pool, TDGAN feedback)")
    per_round = max(1, round(e["activations"] / e["steps"]))
    t = run_edgegan_trivial(args.nodes, max(args.flower_rounds, 3), per_round, args.workers, args.resident, args.seed)
    res["edgegan_trivial"] = t
    print_table([{k: t[k] for k in ("nodes", "rounds", "messages_per_round", "startup_seconds",
                                    "first_round_seconds", "steady_seconds_per_round", "peak_rss_gib")}],
                "\nedgegan (same Ray actor pool, trivial work: activate + echo)")
    if not args.skip_flower:
        f = run_flower(args.nodes, args.flower_rounds, per_round, args.workers)
        res["flower"] = f
        print_table([{k: f[k] for k in ("nodes", "rounds", "messages_per_round", "startup_seconds",
                                        "first_round_seconds", "steady_seconds_per_round", "peak_rss_gib")}],
                    "\nFlower run_simulation (trivial ClientApp)")
        res["comparison"] = {
            "edgegan_seconds_per_step": e["seconds_per_step"],
            "flower_steady_seconds_per_round": f["steady_seconds_per_round"],
            "flower_mean_seconds_per_round_incl_first": f["seconds_per_round"],
            "edgegan_faster_than_flower_steady": e["seconds_per_step"] < f["steady_seconds_per_round"],
            "edgegan_trivial_seconds_per_round": t["steady_seconds_per_round"],
            "edgegan_trivial_faster_than_flower_steady": t["steady_seconds_per_round"] < f["steady_seconds_per_round"],
            "flower_over_edgegan_trivial": f["steady_seconds_per_round"] / t["steady_seconds_per_round"],
            "edgegan_under_4gib": e["peak_rss_gib"] < 4.0,
            "note": "edgegan_seconds_per_step: real TDGAN work (D_k update + feedback per node, generator step in "
                    "the cloud); edgegan_trivial and Flower: trivial work (echo) on the same number of nodes "
                    "per round; Flower's first round includes its actor start-up"}
        print_table([{k: v for k, v in res["comparison"].items() if k != "note"}],
                    "\ncomparison (same node count, same nodes messaged per round)")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
