"""Scale of the simulator (issues 8 and 15): N virtual TDGAN nodes (seed 003) with churn, about half
online each step, each online node doing real work per step (one D_k update on its data and the
feedback ∂loss_G/∂x̂), on a fixed pool of Ray actors that keep at most ``--resident`` live nodes
each and spill the rest to disk; the cloud runs one batched generator step per tick.

Reported: wall time (start-up and per step), peak resident memory of the driver and every
process it started (Ray daemons and actors included, sampled every 0.1 s), nodes spilled and
restored (and the bytes spilled), and where the time per node activation goes (worker-side
restore/create + park/spill, the feedback compute, the cloud). Then two trivial-echo rows at
``--trivial-nodes`` nodes (the same pool, and Flower's ``run_simulation``): ``messages_per_round``
is the number of nodes messaged per round; edgegan carries them in one batched actor call per
worker (``actor_calls_per_round``), Flower in one actor task per message. The like-for-like
comparison with the same real node work on both systems is ``benchmarks/flower_like_for_like.py``
(``--flower-nodes``, block ``flower_like_for_like``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sim_scale.py --nodes 10000 --json benchmarks/results/sim_scale.json
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import PeakMemory, machine, print_table, write_json  # noqa: E402


def run_edgegan(nodes: int, steps: int, workers: int, resident: int, mean_up: float, mean_down: float,
                seed: int, out: Path, backend: str = "ray", device: str = "cpu", num_gpus: float = 0.0) -> dict:
    import torch

    from edgegan.sim.report import read_metrics
    from edgegan.sim.run import simulate
    from edgegan.sim.scenario import scenario_from_dict

    torch.set_num_threads(1)
    sc = scenario_from_dict({
        "name": f"sim-scale-{nodes}", "seed": seed, "pipeline": "tdgan",
        "data": {"dataset": "digits", "partition": "classes", "disjoint": False, "samples_per_node": 20,
                 "classes": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 7], [3, 8], [0, 6]]},
        "nodes": {"count": nodes, "resources": {"num_gpus": num_gpus}},
        "schedule": {"kind": "churn", "steps": steps, "churn": {"mean_up": mean_up, "mean_down": mean_down}},
        "training": {"steps": steps, "tdgan": {"batch_size": 8, "remind_batch_size": 8, "width": 32}},
        "outputs": {"plots": False, "sample_grids": False},
        "engine": {"backend": backend, "workers": workers, "resident_nodes": resident, "device": device},
    })
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with PeakMemory() as mem:
        s = simulate(sc, out, evaluate=False)
    wall = time.perf_counter() - t0
    td = s.tdgan
    hosts = s.engine.workers_stats
    acts = sum(h["activations"] for h in hosts)
    host_overhead = sum(h["activate_s"] + h["park_s"] for h in hosts)
    compute = sum(h["compute_s"] for h in hosts)
    spilled, restored = sum(h["spilled"] for h in hosts), sum(h["restored"] for h in hosts)
    spill_bytes = sum(h.get("spill_bytes", 0) for h in hosts)
    per_ms = lambda sec: 1000 * sec / max(acts, 1)  # noqa: E731
    steps_rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step"]
    # a step row is recorded when the next exchange starts: consecutive wall_s differ by one whole step
    # (exchange, generator update, membership, next requests); step 0 is the rest of the steps' wall time
    cycle = [b["wall_s"] - a["wall_s"] for a, b in zip(steps_rows, steps_rows[1:])]
    cycle = [td.wall_seconds - sum(cycle)] + cycle
    per_step = [{"tick": r["tick"], "online": len(r["online"]), "wall_seconds": w,
                 "end_to_end_per_activation_ms": 1000 * w / max(len(r["online"]), 1),
                 "exchange_per_activation_ms": 1000 * r["exchange_s"] / max(len(r["online"]), 1)}
                for r, w in zip(steps_rows, cycle)]
    return {
        "nodes": nodes, "backend": backend, "device": s.engine.device,
        "num_gpus_per_worker": s.engine.num_gpus_per_worker,
        "load_average_1min_before_after": [load0, os.getloadavg()[0]], "steps": td.ticks, "generator_steps": td.generator_steps,
        "workers": len(hosts), "resident_nodes_per_worker": resident, "mean_online": td.mean_online,
        "activations": acts, "activations_per_step": acts / max(td.ticks, 1),
        "membership_changes": td.totals["membership_changes"],
        "wall_seconds_total": wall, "wall_seconds_steps": td.wall_seconds,
        "startup_seconds": wall - td.wall_seconds,
        "seconds_per_step": td.wall_seconds / td.ticks,
        "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30, "peak_rss_under_4gib": mem.peak < 4 * 2**30,
        "processes_at_peak": mem.peak_procs, "peak_rss_gib_by_process": mem.breakdown(),
        "end_to_end_per_activation_ms": per_ms(td.wall_seconds),
        "end_to_end_per_activation_ms_last_step": per_step[-1]["end_to_end_per_activation_ms"] if per_step else None,
        "per_step": per_step,
        "time_per_activation_ms": {
            "note": "end_to_end = wall time of the steps / activations. Worker-side rows are summed over the "
                    "workers, which run in parallel (so they may add up to more than end_to_end); exchange = "
                    "driver wall time waiting for the workers; cloud = the rest of the step wall time "
                    "(batched G forward/backward, feedback validation, membership, records)",
            "worker_restore_or_create": per_ms(sum(h["activate_s"] for h in hosts)),
            "worker_park_and_spill": per_ms(sum(h["park_s"] for h in hosts)),
            "worker_feedback_compute": per_ms(compute),
            "exchange_wall": per_ms(td.exchange_seconds),
            "cloud_wall": per_ms(td.wall_seconds - td.exchange_seconds)},
        "host_overhead_per_activation_ms": per_ms(host_overhead),
        "feedback_compute_per_activation_ms": per_ms(compute),
        "exchange_per_activation_ms": per_ms(td.exchange_seconds),
        "spilled": spilled, "restored": restored, "spill_bytes": spill_bytes,
        "spill_bytes_per_node": spill_bytes / max(spilled, 1),
        "spilled_per_step": spilled / max(td.ticks, 1), "restored_per_step_after_first": restored / max(td.ticks - 1, 1),
        "spilled_every_step": "holds when activations_per_step / workers > resident_nodes_per_worker: each worker "
                              "activates more distinct nodes per step than it may keep, so it spills on every step "
                              "and restores the parked nodes when they are next online",
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
        host._activate_many([node_id])
        t1 = time.perf_counter()
        host._park()
        host.counters["activations"] += 1
        host.counters["activate_s"] += t1 - t0
        host.counters["park_s"] += time.perf_counter() - t1
        out.append(x + 1)
    return out


def run_edgegan_trivial(nodes: int, rounds: int, per_round: int, workers: int, resident: int, seed: int) -> dict:
    """The same actor pool with trivial work: per round, ``per_round`` random nodes are messaged
    (activated, their parked state restored) and echo one number, like the trivial Flower ClientApp.
    The messages of a round travel as one batched actor call per worker with work."""
    import asyncio
    import random

    import torch

    from edgegan.data import load_digits
    from edgegan.sim.pool import make_pool
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
        calls: list[int] = []

        async def one_round(r: int) -> int:
            pick = rng.sample(ids, min(per_round, nodes))
            groups = [[k for k in pick if host_of[k] == h] for h in range(pool.size)]
            calls.append(sum(1 for g in groups if g))
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
    return {"nodes": nodes, "rounds": rounds, "messages_per_round": per_round,
            "actor_calls_per_round": max(calls), "startup_seconds": startup,
            "first_round_seconds": times[0], "steady_seconds_per_round": steady[len(steady) // 2],
            "round_seconds": times, "activations": acts,
            "host_overhead_per_activation_ms": 1000 * sum(s["activate_s"] + s["park_s"] for s in stats) / max(acts, 1),
            "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30}


def run_flower(nodes: int, rounds: int, per_round: int, workers: int) -> dict:
    """Trivial ClientApp (echo one number) on ``nodes`` supernodes; ``per_round`` messaged per round,
    each message one Ray actor task (flwr's RayBackend runs one ``process_message`` per message)."""
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
            "messages_per_round": per_round, "actor_tasks_per_round": per_round, "round_seconds": times,
            "seconds_per_round": sum(times) / max(len(times), 1), "replies": replies,
            "wall_seconds_total": wall, "startup_seconds": wall - sum(times),
            "peak_rss_bytes": mem.peak, "peak_rss_gib": mem.peak / 2**30}


def flower_like_for_like(nodes: int, workers: int, seed: int) -> dict | None:
    """``benchmarks/flower_like_for_like.run`` (same real node work on both systems) when that module exists."""
    import importlib.util

    if importlib.util.find_spec("flower_like_for_like") is None:
        print("benchmarks/flower_like_for_like.py not found: no like-for-like block")
        return None
    import flower_like_for_like

    return flower_like_for_like.run(nodes=nodes, workers=workers, seed=seed)


def main() -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description="simulator scale: N virtual TDGAN nodes with churn, trivial-echo rows, "
                                            "like-for-like against Flower")
    p.add_argument("--nodes", type=int, default=10000)
    p.add_argument("--steps", type=int, default=4, help="TDGAN generator steps (schedule length)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (edgegan) / Flower Ray CPUs")
    p.add_argument("--resident", type=int, default=256, help="virtual nodes kept in memory per actor")
    p.add_argument("--backend", choices=("ray", "inproc"), default="ray")
    p.add_argument("--device", default="cpu", help="cloud device (cpu, cuda, cuda:N, auto); with cuda, Ray workers "
                                                  "get --num-gpus each and run their nodes there")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPU share per Ray worker (0.5: two workers per GPU)")
    p.add_argument("--mean-up", type=float, default=10.0)
    p.add_argument("--mean-down", type=float, default=10.0)
    p.add_argument("--trivial-nodes", type=int, default=1000, help="nodes of the trivial-echo rows (0: skip them)")
    p.add_argument("--flower-rounds", type=int, default=3)
    p.add_argument("--skip-flower", action="store_true", help="no trivial Flower row")
    p.add_argument("--flower-nodes", type=int, default=1000,
                   help="nodes of the like-for-like block (benchmarks/flower_like_for_like.py; 0: skip it)")
    p.add_argument("--flower-json", default=None,
                   help="take the like-for-like block from this benchmarks/flower_like_for_like.py JSON instead of "
                        "running it (recorded as its source)")
    p.add_argument("--reuse-edgegan", action="store_true", help="take the edgegan part from the existing --json")
    p.add_argument("--quick", action="store_true", help="100 nodes, 3 steps, 2 Flower rounds, no like-for-like")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/sim_scale.json")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.steps, args.flower_rounds, args.flower_nodes = min(args.nodes, 100), 3, 2, 0
        args.trivial_nodes = min(args.trivial_nodes, 100)
    res: dict = {"benchmark": "sim_scale", "machine": machine(), "command": " ".join(sys.argv),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "note": "timed on a shared 2-core machine while other jobs ran"}
    if args.reuse_edgegan:
        e = json.loads(Path(args.json).read_text())["edgegan"]
    else:
        e = run_edgegan(args.nodes, args.steps, args.workers, args.resident, args.mean_up, args.mean_down,
                        args.seed, Path("/tmp") / f"sim_scale_run_{os.getpid()}", args.backend, args.device,
                        args.num_gpus)
    res["edgegan"] = e
    print_table([{k: e[k] for k in ("nodes", "steps", "mean_online", "activations", "spilled", "restored",
                                    "spill_bytes", "startup_seconds", "seconds_per_step", "peak_rss_gib",
                                    "end_to_end_per_activation_ms", "end_to_end_per_activation_ms_last_step")}],
                "\nedgegan (Ray actor pool, TDGAN: D_k update + feedback per activation, batched cloud step)")
    print_table([{k: v for k, v in e["time_per_activation_ms"].items() if k != "note"}],
                "\nwhere the time per activation goes (ms)")
    if args.trivial_nodes:
        per_round = args.trivial_nodes // 2  # about half online, as in the churn scenario
        t = run_edgegan_trivial(args.trivial_nodes, max(args.flower_rounds, 3), per_round, args.workers,
                                args.resident, args.seed)
        res["edgegan_trivial"] = t
        print_table([{k: t[k] for k in ("nodes", "rounds", "messages_per_round", "actor_calls_per_round",
                                        "startup_seconds", "first_round_seconds", "steady_seconds_per_round",
                                        "peak_rss_gib")}],
                    "\nedgegan (same Ray actor pool, trivial work: activate + echo)")
        if not args.skip_flower:
            f = run_flower(args.trivial_nodes, args.flower_rounds, per_round, args.workers)
            res["flower"] = f
            print_table([{k: f[k] for k in ("nodes", "rounds", "messages_per_round", "actor_tasks_per_round",
                                            "startup_seconds", "first_round_seconds", "steady_seconds_per_round",
                                            "peak_rss_gib")}],
                        "\nFlower run_simulation (trivial ClientApp)")
            res["comparison_trivial"] = {
                "nodes": args.trivial_nodes, "messages_per_round": per_round,
                "edgegan_trivial_seconds_per_round": t["steady_seconds_per_round"],
                "flower_trivial_steady_seconds_per_round": f["steady_seconds_per_round"],
                "flower_over_edgegan_trivial": f["steady_seconds_per_round"] / t["steady_seconds_per_round"],
                "edgegan_trivial_peak_rss_gib": t["peak_rss_gib"], "flower_trivial_peak_rss_gib": f["peak_rss_gib"],
                "note": "both rows echo one number per messaged node (no learning work); the same messages per "
                        "round, carried by edgegan in actor_calls_per_round batched calls and by Flower in one actor "
                        "task per message; Flower's first round includes its actor start-up. Real node work on both "
                        "systems: flower_like_for_like"}
            print_table([{k: v for k, v in res["comparison_trivial"].items() if k != "note"}],
                        "\ntrivial echo: same nodes, same messages per round")
    if args.flower_json:
        lfl = json.loads(Path(args.flower_json).read_text())
        res["flower_like_for_like"] = {**lfl, "source": f"{args.flower_json} (written by: {lfl.get('command')})"}
    elif args.flower_nodes:
        lfl = flower_like_for_like(args.flower_nodes, args.workers, args.seed)
        if lfl is not None:
            res["flower_like_for_like"] = lfl
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    from edgegan.errors import EdgeganError

    try:
        raise SystemExit(main())
    except EdgeganError as err:  # e.g. --device cuda without a GPU: one line, exit 2
        print(f"sim_scale: {err}", file=sys.stderr)
        raise SystemExit(2)
