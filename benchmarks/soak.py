"""Soak: a real cloud and edge hosts under churn, partitions and connection resets for M minutes
(issue 24); does memory, file descriptors, threads or the step rate drift, and is any feedback
lost or applied twice?

Setup: one ``edgegan cloud`` in the root network namespace; ``--hosts`` edge hosts, each a network
namespace (``tests/netlab.py``) with ``--nodes-per-host`` TDGAN nodes in one process
(``edgegan edge --node-ids … --tokens …``: each node its own Session stream, token and D_k, as
a lab's edge host runs them); every host dials the cloud through the userspace proxy, which resets every connection
every ``--reset-every-s``. Faults, seeded (``--seed``) and kept out of the first and last 10 % of
the measured span (and 45 s before the last, for a restarted host to come back): every ``--partition-every-s`` one host is cut off for 2 × heartbeat_timeout_s
and healed; every ``--churn-every-s`` one host process is SIGKILLed and restarted 3 s later
(its nodes rejoin with their ids and a fresh D_k). A warm-up of 180 s or more (the default from
15 minutes on: 300 s) also rehearses every fault once before the measured span, so that memory a
fault path allocates the first time it runs (a host's first restart, the first partition) is not
read as growth: a leak grows with every repetition, a first use does not.

Every 10 s it records, from /proc, RSS, open fds, threads and CPU seconds of the cloud, of each
host process and of this script (which runs the proxy), the generator steps/s, the machine's CPU
steal time (a VM whose host slows it shows here, not in the cloud's own numbers), the proxy's live
connections, and from /metrics and the audit log (``EDGEGAN_AUDIT_DIR``,
:mod:`edgegan.monitor.audit`) joins (reconnects), leaves (drops), rejected feedback, feedback
sent and applied. After the warm-up (``--warmup-s``) it reports the cloud's RSS slope (least
squares, MiB/h), fd and thread drift (median of the last 3 samples minus the first 3), steps/s
in the last 10 % against the first 10 %, and from the audit ``lost`` (sent, asked, neither
applied nor failed) and ``duplicated`` (applied twice). Host processes restart on churn, so
their numbers are listed per sample but not fitted.

    python benchmarks/soak.py --minutes 5 --json benchmarks/results/soak_5min.json

Needs root for the namespaces; without them every host runs in the root namespace and no
partition happens (the output says so).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import netlab  # noqa: E402
from _common import machine, print_table, write_json  # noqa: E402
from grpc_procs import Procs, cloud_ready, free_port, launch_cloud, scrape, write_config  # noqa: E402

from edgegan.monitor.audit import ENV as AUDIT_ENV  # noqa: E402
from edgegan.monitor.audit import summarize  # noqa: E402

CLASSES = ("0,1,2", "3,4,5", "6,7,8,9", "0,5,9", "1,4,7", "2,6,8")
HB_INTERVAL_S, HB_TIMEOUT_S, FEEDBACK_TIMEOUT_S = 0.5, 3.0, 5.0
SAMPLE_S = 10.0


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds, threads and CPU seconds (user + system) of ``pid`` from /proc (zeros
    once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return {"rss_mib": 0.0, "fds": 0, "threads": 0, "cpu_s": 0.0}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "fds": fds, "threads": int(fields["Threads"]),
            "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")}


def slope_per_h(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per hour."""
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine (/proc/stat's ``cpu`` line)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields)


def steal_pct(before: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """Percent of CPU time the hypervisor took since ``before``, and the new reading."""
    now = cpu_ticks()
    total = now[1] - before[1]
    return (round(100 * (now[0] - before[0]) / total, 2) if total else 0.0), now


def fault_windows(t0: float, warmup_s: float, measured: tuple[float, float], span: float,
                  ) -> list[tuple[float, float]]:
    """When faults may start: inside the measured span after its first 10 % and until 45 s (a
    restarted host's import) before its last 10 %; with a warm-up of 180 s or more, also once in
    the warm-up (from 30 s until 45 s before it ends), so every fault path has run before the fits."""
    main = (measured[0] + 0.1 * span + SAMPLE_S, measured[1] - 0.1 * span - 45.0)
    return [(t0 + 30.0, t0 + warmup_s - 45.0), main] if warmup_s >= 180 else [main]


def drift(ys: list[float]) -> float:
    return statistics.median(ys[-3:]) - statistics.median(ys[:3])


class AuditCounts:
    """Running totals of the audit log's ``sent`` records and applied feedback, read incrementally
    for the 10-s samples (a full :func:`summarize` re-reads the whole log, work that grows with the
    run and, at 64 nodes, took a core from the cloud it measures); the reconciliation (lost,
    duplicated) is one :func:`summarize` at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.pos, self.sent, self.applied = folder, {}, 0, 0

    def update(self) -> dict[str, int]:
        for p in sorted(self.folder.glob("*.jsonl")):
            with open(p, "rb") as f:
                f.seek(self.pos.get(p, 0))
                chunk = f.read()
            whole = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next sample
            self.pos[p] = self.pos.get(p, 0) + len(whole)
            for line in whole.splitlines():
                r = json.loads(line)
                if r["kind"] == "sent":
                    self.sent += 1
                elif r["kind"] == "step":
                    self.applied += len(r["applied"])
        return {"sent": self.sent, "applied": self.applied}


def main() -> int:
    from _common import parser

    p = parser(__doc__.splitlines()[0], "benchmarks/results/soak.json")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--nodes-per-host", type=int, default=32, help="nodes per edge-host process")
    p.add_argument("--warmup-s", type=float, default=None,
                   help="seconds left out of the fits [default: 60, or 300 from 15 minutes on]; from 180 s "
                        "every fault is rehearsed once inside it")
    p.add_argument("--partition-every-s", type=float, default=100.0)
    p.add_argument("--churn-every-s", type=float, default=120.0)
    p.add_argument("--reset-every-s", type=float, default=45.0)
    args = p.parse_args()
    if args.warmup_s is None:
        args.warmup_s = 300.0 if args.minutes >= 15 else 60.0
    rng = random.Random(args.seed)
    total_s = args.minutes * 60
    n_nodes = args.hosts * args.nodes_per_host
    why_no_netns = netlab.netns_unavailable()
    tmp = Path(tempfile.mkdtemp(prefix="edgegan-soak-"))
    os.environ[AUDIT_ENV] = str(tmp / "audit")
    procs = Procs(tmp)
    cfg = write_config(tmp / "cloud.yaml", listen=f"127.0.0.1:{free_port()}",
                       tokens={f"e{i}": f"t{i}" for i in range(n_nodes)}, heartbeat_interval_s=HB_INTERVAL_S,
                       heartbeat_timeout_s=HB_TIMEOUT_S, feedback_timeout_s=FEEDBACK_TIMEOUT_S, eval_dataset=None,
                       log_every=1000, checkpoint_every=200, steps=10 ** 9, start_nodes=n_nodes,
                       guard={"timeout_bench_s": 1.0})
    cport = int(cfg.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    samples: list[dict] = []
    counts = AuditCounts(tmp / "audit")
    events: list[dict] = []
    partitions = healed = 0
    with netlab.Proxy(("127.0.0.1", cport), reset_every_s=0, seed=args.seed, host="0.0.0.0") as proxy, \
            (netlab.hosts(args.hosts) if why_no_netns is None else _no_hosts(args.hosts)) as hosts:
        def start_host(h: int):
            host = hosts[h]
            ip = host.cloud_ip if host is not None else "127.0.0.1"
            nodes = {f"e{i}": (f"t{i}", CLASSES[i % len(CLASSES)])
                     for i in range(h * args.nodes_per_host, (h + 1) * args.nodes_per_host)}
            return netlab.start_edge_host(procs, host, f"host{h}", f"{ip}:{proxy.port}", nodes, retry_s=120)

        try:
            cloud = launch_cloud(procs, cfg)
            host_procs = [start_host(h) for h in range(args.hosts)]
            _, mport = cloud_ready(procs, cloud, timeout=180)
            t0 = time.monotonic()
            measured = (t0 + args.warmup_s, t0 + total_s)
            span = measured[1] - measured[0]
            windows = fault_windows(t0, args.warmup_s, measured, span)
            next_partition = next_churn = 0.0
            entered: int | None = None
            next_sample, last, cpu = t0, None, cpu_ticks()
            restart_at: dict[int, float] = {}
            cut: tuple[int, float] | None = None
            healing: float | None = None
            while time.monotonic() < t0 + total_s:
                now = time.monotonic()
                w = next((i for i, (a, b) in enumerate(windows) if a <= now <= b), None)
                faulting = w is not None  # faults may start now
                if faulting and w != entered:  # a fault window opens: first partition, then churn
                    entered = w
                    next_partition = max(next_partition, windows[w][0] + rng.uniform(0, 10))
                    next_churn = max(next_churn, windows[w][0] + args.churn_every_s / 2 + rng.uniform(0, 10))
                proxy.reset_every_s = args.reset_every_s if faulting else 0
                if cut is None and why_no_netns is None and faulting and now >= next_partition:
                    h = rng.randrange(args.hosts)
                    hosts[h].cut()
                    cut, partitions = (h, now), partitions + 1
                    events.append({"t": round(now - t0, 1), "event": f"cut host{h}"})
                    next_partition = now + args.partition_every_s
                if cut is not None and now - cut[1] >= 2 * HB_TIMEOUT_S:
                    hosts[cut[0]].heal()
                    events.append({"t": round(now - t0, 1), "event": f"heal host{cut[0]}"})
                    cut, healing = None, now
                if healing is not None and scrape(mport)["edgegan_nodes_online"] == n_nodes:
                    events.append({"t": round(now - t0, 1), "event": f"all {n_nodes} nodes online again"})
                    healed, healing = healed + 1, None
                elif healing is not None and now - healing > 60:
                    healing = None  # not healed within a minute
                if faulting and now >= next_churn and not restart_at:
                    h = rng.randrange(args.hosts)
                    host_procs[h].send_signal(signal.SIGKILL)
                    host_procs[h].wait(10)
                    restart_at[h] = now + 3.0
                    events.append({"t": round(now - t0, 1), "event": f"SIGKILL host{h} process"})
                    next_churn = now + args.churn_every_s
                for h, at in list(restart_at.items()):
                    if now >= at:
                        host_procs[h] = start_host(h)
                        del restart_at[h]
                        events.append({"t": round(now - t0, 1), "event": f"restart host{h} process"})
                if now >= next_sample:
                    m = scrape(mport)
                    audit = counts.update()
                    row = {"t_s": round(now - t0, 1), "step": m["edgegan_generator_step"],
                           "online": m["edgegan_nodes_online"], "cloud": proc_stats(cloud.pid),
                           "hosts": [proc_stats(hp.pid) for hp in host_procs],
                           "driver": proc_stats(os.getpid()),  # this script and its TCP proxy
                           "reconnects": m["edgegan_joins_total"], "drops": m["edgegan_leaves_total"],
                           "rejected": sum(v for k, v in m.items() if k.startswith("edgegan_feedback_rejected_total")),
                           "feedback_timeouts": m["edgegan_feedback_timeouts_total"],
                           "proxy_resets": proxy.resets, "proxy_connections": proxy.live,
                           "sent": audit["sent"], "applied": audit["applied"]}
                    row["steps_per_s"] = None if last is None else round(
                        (row["step"] - last["step"]) / (row["t_s"] - last["t_s"]), 3)
                    row["steal_pct"], cpu = steal_pct(cpu)
                    samples.append(row)
                    last = row
                    print(f"t={row['t_s']:6.1f}s step {row['step']:.0f} online {row['online']:.0f} "
                          f"{row['steps_per_s']} steps/s cloud rss {row['cloud']['rss_mib']:.1f} MiB "
                          f"fds {row['cloud']['fds']} threads {row['cloud']['threads']} "
                          f"reconnects {row['reconnects']:.0f} drops {row['drops']:.0f}", flush=True)
                    next_sample += SAMPLE_S
                time.sleep(0.1)
            cloud.send_signal(signal.SIGTERM)
            procs.wait(cloud, 60)
        finally:
            procs.kill_all()
    audit = summarize(tmp / "audit")
    post = [s for s in samples if s["t_s"] >= args.warmup_s and s["steps_per_s"] is not None]
    k = max(1, round(0.1 * len(post)))
    ts = [s["t_s"] for s in post]
    out = {
        "setup": {"hosts": args.hosts, "nodes_per_host": args.nodes_per_host, "nodes": n_nodes,
                  "processes_per_host": 1, "namespaces": why_no_netns is None,
                  "why_no_namespaces": why_no_netns, "minutes": args.minutes, "warmup_s": args.warmup_s,
                  "partition_every_s": args.partition_every_s, "partition_s": 2 * HB_TIMEOUT_S,
                  "churn_every_s": args.churn_every_s, "reset_every_s": args.reset_every_s, "seed": args.seed,
                  "heartbeat_timeout_s": HB_TIMEOUT_S, "feedback_timeout_s": FEEDBACK_TIMEOUT_S,
                  "loadavg_at_end": list(os.getloadavg())},
        "rss_slope_mib_per_h": round(slope_per_h(ts, [s["cloud"]["rss_mib"] for s in post]), 3),
        # the same fit over the second half only: a warm-up that saturates and a leak differ here
        "rss_slope_second_half_mib_per_h": round(slope_per_h(ts[len(ts) // 2:], [s["cloud"]["rss_mib"]
                                                                               for s in post[len(post) // 2:]]), 3),
        "fd_drift": drift([s["cloud"]["fds"] for s in post]),
        "thread_drift": drift([s["cloud"]["threads"] for s in post]),
        "rate_start": statistics.fmean(s["steps_per_s"] for s in post[:k]),
        "rate_end": statistics.fmean(s["steps_per_s"] for s in post[-k:]),
        "steal_pct_start": round(statistics.fmean(s["steal_pct"] for s in post[:k]), 2),
        "steal_pct_end": round(statistics.fmean(s["steal_pct"] for s in post[-k:]), 2),
        "lost": audit["lost"], "duplicated": audit["duplicated"], "phantom": audit["phantom"],
        "partitions": partitions, "partitions_healed": healed,
        "reconnects": samples[-1]["reconnects"], "drops": samples[-1]["drops"],
        "rejected": samples[-1]["rejected"], "proxy_resets": samples[-1]["proxy_resets"],
        "rejected_by_reason": {k.split('reason="')[1].split('"')[0]: v for k, v in m.items()
                               if k.startswith("edgegan_feedback_rejected_total{") and v},
        "online_end": samples[-1]["online"],
        "rejections_logged": [line for line in procs.log(cloud).splitlines() if "rejected feedback" in line][:20],
        "audit": audit, "events": events, "samples": samples, "machine": machine(),
    }
    out["rate_end_over_start"] = round(out["rate_end"] / out["rate_start"], 3) if out["rate_start"] else None
    shutil.rmtree(tmp, ignore_errors=True)
    print_table([{k: out[k] for k in ("rss_slope_mib_per_h", "rss_slope_second_half_mib_per_h", "fd_drift", "thread_drift", "rate_end_over_start",
                                      "lost", "duplicated", "partitions_healed", "reconnects", "drops")}],
                f"soak: {args.minutes:g} min, {args.hosts} hosts × {args.nodes_per_host} nodes"
                f"{'' if why_no_netns is None else ' (no namespaces: ' + why_no_netns + ')'}")
    write_json(args.json, out)
    return 0


class _no_hosts:
    """Stand-in for :func:`netlab.hosts` where namespaces are not permitted: root namespace, no cuts."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> list[None]:
        return [None] * self.n

    def __exit__(self, *exc) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
