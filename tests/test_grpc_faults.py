"""The real cloud and edges under lab-network faults (issue 24): a partition, a frozen peer, a
slow thin link, connections reset every few seconds, a cloud SIGKILLed under load, and a disk
that fills during a checkpoint. Several ``edgegan edge`` processes are online while each fault
happens; edge hosts live in their own network namespaces (``tests/netlab.py``) or dial through
the userspace proxy.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

import netlab
from edgegan.monitor.audit import ENV as AUDIT_ENV
from edgegan.monitor.audit import summarize
from grpc_procs import Procs, cloud_ready, free_port, launch_cloud, scrape, wait_metric, write_config

NETNS = netlab.netns_unavailable()
needs_netns = pytest.mark.skipif(NETNS is not None, reason=f"network namespaces unavailable: {NETNS}")
# rates are compared with rates measured seconds before: these run in `make test`'s solo pass
pytestmark = pytest.mark.timing

CLASSES = ("0,1,2", "3,4,5", "6,7,8,9", "0,5,9")
HB_INTERVAL_S, HB_TIMEOUT_S = 0.5, 3.0


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def tokens(n: int) -> dict[str, str]:
    return {f"e{i}": f"t{i}" for i in range(n)}


def cloud_config(tmp: Path, nodes: int, **cfg) -> Path:
    # a node dropped for a missed feedback deadline is benched guard.timeout_bench_s (60 s by
    # default) before it may open a new Session; 1 s here, so rejoins fit in a test
    base = dict(listen=f"0.0.0.0:{free_port()}", tokens=tokens(nodes), heartbeat_interval_s=HB_INTERVAL_S,
                heartbeat_timeout_s=HB_TIMEOUT_S, eval_dataset=None, log_every=1000, steps=100000,
                guard={"timeout_bench_s": 1.0})
    base.update(cfg)
    return write_config(tmp / "cloud.yaml", **base)


def pack(procs: Procs, host: netlab.Host | None, target: str, nodes: range, retry_s: float = 60.0):
    """One ``edgegan edge`` process hosting nodes ``e{i}`` for i in ``nodes``."""
    return netlab.start_edge_host(procs, host, f"pack{nodes.start}", target,
                                  {f"e{i}": (f"t{i}", CLASSES[i % len(CLASSES)]) for i in nodes}, retry_s)


def step(mport: int) -> float:
    return scrape(mport)["edgegan_generator_step"]


def rate(mport: int, seconds: float) -> float:
    s0, t0 = step(mport), time.monotonic()
    time.sleep(seconds)
    return (step(mport) - s0) / (time.monotonic() - t0)


def wait_online(procs: Procs, cloud, mport: int, n: int, timeout: float = 90.0, exact: bool = True) -> float:
    """Seconds until ``edgegan_nodes_online`` == n (fails after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        assert cloud.poll() is None, f"cloud exited:\n{procs.log(cloud)[-3000:]}"
        v = scrape(mport)["edgegan_nodes_online"]
        if v == n:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"nodes_online = {v}, not {n}, after {timeout} s"
        time.sleep(0.05)


def warm_up(procs: Procs, cloud, mport: int, n: int, steps: int = 20, timeout: float = 120.0) -> None:
    """Wait until ``n`` nodes are online and the generator took ``steps`` steps with all of them.
    An edge's first feedback blocks its event loop for seconds (torch's lazy imports on the first
    optimizer step: ~5 s alone, ~25 s with other jobs loading the machine), long enough to miss
    heartbeats and be dropped once; that start-up churn is over before a fault is measured."""
    deadline = time.monotonic() + timeout
    while True:
        wait_online(procs, cloud, mport, n, timeout=deadline - time.monotonic())
        s0 = step(mport)
        while scrape(mport)["edgegan_nodes_online"] == n and step(mport) < s0 + steps:
            assert time.monotonic() < deadline, f"no {steps} steps with {n} nodes online after {timeout} s"
            time.sleep(0.1)
        if step(mport) >= s0 + steps:
            return


# ---------------------------------------------------------------- partition
@needs_netns
def test_partition_drops_the_cut_host_others_keep_stepping_and_it_rejoins(procs: Procs, tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path, 4, start_nodes=4, checkpoint_every=10)
    port = cfg_port(cfg)
    with netlab.hosts(2) as (a, b):
        cloud = launch_cloud(procs, cfg)
        packs = {h: pack(procs, h, f"{h.cloud_ip}:{port}", r) for h, r in ((a, range(0, 2)), (b, range(2, 4)))}
        _, mport = cloud_ready(procs, cloud)
        warm_up(procs, cloud, mport, 4)
        before = rate(mport, 3.0)
        assert before > 1, f"not training ({before:.2f} steps/s)"
        log_at_cut = len(procs.log(packs[b]))
        b.cut()
        t_cut = time.monotonic()
        left_after = wait_online(procs, cloud, mport, 2, timeout=HB_TIMEOUT_S + 5)
        during = rate(mport, 2 * HB_TIMEOUT_S - (time.monotonic() - t_cut) - 0.2)
        time.sleep(max(0.0, 2 * HB_TIMEOUT_S - (time.monotonic() - t_cut)))
        b.heal()
        rejoin_s = wait_online(procs, cloud, mport, 4, timeout=60)
        after = rate(mport, 2.0)
        print(f"partition: before {before:.2f} steps/s, left after {left_after:.2f} s, during {during:.2f} "
              f"steps/s, rejoined {rejoin_s:.2f} s after the heal, after {after:.2f} steps/s")
        assert left_after <= HB_TIMEOUT_S + 1.0
        assert during >= 0.8 * before, (before, during)
        assert after > 0
        for p in packs.values():
            assert p.poll() is None, procs.log(p)[-2000:]
        for i in (2, 3):  # the same process (its D_k kept in memory) rejoined with its id by itself
            assert f"node e{i} joined run" in procs.log(packs[b])[log_at_cut:], procs.log(packs[b])[-2000:]
    hist = _history(tmp_path)
    two = [h for h in hist if h["accepted"] == 2 and h["missing"] == 0]
    assert two and all(abs(h["digest_pi_mass"] - 1.0) < 1e-5 for h in two), "π did not renormalise over 2 nodes"


def _history(tmp: Path) -> list[dict]:
    from edgegan.checkpoint import load_checkpoint

    return load_checkpoint(tmp / "ckpt" / "cloud.pt")["history"]


class StepWatch:
    """Samples the cloud's generator step every 50 ms in a thread: the longest time without a step."""

    def __init__(self, mport: int) -> None:
        self.mport, self.samples, self._stop = mport, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), step(self.mport)))
            time.sleep(0.05)

    def __enter__(self) -> "StepWatch":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)

    def longest_stall(self) -> float:
        longest, since, last = 0.0, self.samples[0][0], self.samples[0][1]
        for t, s in self.samples[1:]:
            if s != last:
                longest, since, last = max(longest, t - since), t, s
        return max(longest, self.samples[-1][0] - since)

    def monotone(self) -> bool:
        return all(b[1] >= a[1] for a, b in zip(self.samples, self.samples[1:]))


# ---------------------------------------------------------------- frozen peer
FEEDBACK_TIMEOUT_S = 2.0


def test_frozen_peer_costs_the_others_one_deadline_is_dropped_and_rejoins(procs: Procs, tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path, 4, listen=f"127.0.0.1:{free_port()}", start_nodes=4,
                       feedback_timeout_s=FEEDBACK_TIMEOUT_S)
    cloud = launch_cloud(procs, cfg)
    target = f"127.0.0.1:{cfg_port(cfg)}"
    packs = [pack(procs, None, target, range(0, 2)), pack(procs, None, target, range(2, 4))]
    _, mport = cloud_ready(procs, cloud)
    warm_up(procs, cloud, mport, 4)
    before = rate(mport, 2.0)
    frozen = packs[1]
    log_at_freeze = len(procs.log(frozen))
    with StepWatch(mport) as watch:
        netlab.freeze(frozen)
        time.sleep(3 * FEEDBACK_TIMEOUT_S)
        online_frozen = scrape(mport)["edgegan_nodes_online"]
        netlab.thaw(frozen)
    rejoin_s = wait_online(procs, cloud, mport, 4, timeout=60)
    stall = watch.longest_stall()
    print(f"frozen peer: before {before:.2f} steps/s, longest stall {stall:.2f} s while frozen "
          f"(deadline {FEEDBACK_TIMEOUT_S} s), online while frozen {online_frozen}, rejoined {rejoin_s:.2f} s after SIGCONT")
    assert online_frozen == 2
    assert stall <= FEEDBACK_TIMEOUT_S + 1.0, stall
    after_freeze = procs.log(frozen)[log_at_freeze:]
    for i in (2, 3):
        assert f"node e{i} joined run" in after_freeze, after_freeze[-2000:]
    assert scrape(mport)["edgegan_feedback_timeouts_total"] >= 1


def cfg_port(cfg: Path) -> int:
    return int(yaml.safe_load(cfg.read_text())["listen"].rpartition(":")[2])


@contextmanager
def proxied_cloud(procs: Procs, tmp_path: Path, seed: int, **cfg) -> Iterator[tuple]:
    """A cloud and 4 nodes (one pack) reaching it through a :class:`netlab.Proxy`, warmed up:
    (cloud process, metrics port, proxy, packs)."""
    config = cloud_config(tmp_path, 4, listen=f"127.0.0.1:{free_port()}", start_nodes=4, feedback_timeout_s=5.0,
                          **cfg)
    cloud = launch_cloud(procs, config)
    with netlab.Proxy(("127.0.0.1", cfg_port(config)), seed=seed) as proxy:
        packs = [pack(procs, None, f"127.0.0.1:{proxy.port}", range(0, 4))]
        _, mport = cloud_ready(procs, cloud)
        warm_up(procs, cloud, mport, 4, steps=10)
        yield cloud, mport, proxy, packs


# ---------------------------------------------------------------- slow link
DELAY_S, JITTER_S, BYTES_PER_S = 0.050, 0.020, 1e6


def test_slow_thin_link_finishes_drops_nobody_and_step_time_grows_by_the_latency(procs: Procs, tmp_path: Path) -> None:
    steps, phase_steps = 120, 10
    with proxied_cloud(procs, tmp_path, seed=1, steps=steps) as (cloud, mport, proxy, packs):
        leaves = scrape(mport)["edgegan_leaves_total"]
        # direct and slow phases alternate (fast, slow, fast, slow; phase_steps steps each) so the
        # load other jobs put on the machine drifts under both alike
        totals = {False: [0.0, 0.0, 0.0, 0.0], True: [0.0, 0.0, 0.0, 0.0]}  # steps, s, roundtrip sum, count
        for slow in (False, True, False, True):
            proxy.delay_s, proxy.jitter_s, proxy.bytes_per_s = (DELAY_S, JITTER_S, BYTES_PER_S) if slow else (0, 0, 0)
            m0, t0 = scrape(mport), time.monotonic()
            while step(mport) < m0["edgegan_generator_step"] + phase_steps:
                time.sleep(0.05)
            m1 = scrape(mport)
            for k, v in enumerate((m1["edgegan_generator_step"] - m0["edgegan_generator_step"], time.monotonic() - t0,
                                   m1["edgegan_feedback_roundtrip_seconds_sum"] - m0["edgegan_feedback_roundtrip_seconds_sum"],
                                   m1["edgegan_feedback_roundtrip_seconds_count"] - m0["edgegan_feedback_roundtrip_seconds_count"])):
                totals[slow][k] += v
        m = scrape(mport)
        assert procs.wait(cloud, 120) == 0, procs.log(cloud)[-3000:]
        for p in packs:
            assert procs.wait(p, 30) == 0, procs.log(p)[-2000:]
    rep = json.loads((tmp_path / "ckpt" / "report.json").read_text())
    # per step each node receives one fake batch and returns one gradient (32×1×8×8 float32
    # each, ~8.3 KiB with framing): both directions' delay plus both transfers at BYTES_PER_S
    wire = 2 * (32 * 64 * 4 + 400) / BYTES_PER_S
    mean_added, worst_added = 2 * DELAY_S + wire, 2 * (DELAY_S + JITTER_S) + wire
    step_time = {k: v[1] / v[0] for k, v in totals.items()}
    roundtrip = {k: v[2] / v[3] for k, v in totals.items()}
    grown, rt_grown = step_time[True] - step_time[False], roundtrip[True] - roundtrip[False]
    print(f"slow link: step {step_time[False] * 1e3:.0f} ms direct, {step_time[True] * 1e3:.0f} ms through "
          f"{DELAY_S * 1e3:.0f}±{JITTER_S * 1e3:.0f} ms, {BYTES_PER_S / 1e6:g} MB/s (+{grown * 1e3:.0f} ms); "
          f"feedback round trip {roundtrip[False] * 1e3:.0f} → {roundtrip[True] * 1e3:.0f} ms (+{rt_grown * 1e3:.0f}); "
          f"added by the link: mean {mean_added * 1e3:.0f} ms, worst {worst_added * 1e3:.0f} ms")
    assert rep["finished"] and rep["step"] == steps
    assert m["edgegan_leaves_total"] == leaves and m["edgegan_feedback_timeouts_total"] == 0
    # a step waits for its slowest node: it may grow up to the worst case (both directions at
    # delay + jitter, plus the transfers); 100 ms of slack for the load of other jobs
    assert grown <= worst_added + 0.1, grown
    assert 2 * (DELAY_S - JITTER_S) - 0.02 <= rt_grown <= worst_added + 0.1, rt_grown


# ---------------------------------------------------------------- connection resets
RESET_EVERY_S = 10.0


def test_connection_resets_cost_at_most_one_step_and_feedback_is_applied_exactly_once(
        procs: Procs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit"))
    with proxied_cloud(procs, tmp_path, seed=2) as (cloud, mport, proxy, _):
        first = int(step(mport))  # failures before this are the start-up churn (see warm_up)
        proxy.reset_every_s = RESET_EVERY_S
        rejoins = []
        for _ in range(2):
            events = proxy.reset_events
            while proxy.reset_events == events:
                time.sleep(0.05)
            t = time.monotonic()
            while scrape(mport)["edgegan_nodes_online"] == 4 and time.monotonic() - t < 2:
                time.sleep(0.02)
            wait_online(procs, cloud, mport, 4, timeout=RESET_EVERY_S - 1)
            rejoins.append(time.monotonic() - t)
        proxy.reset_every_s = 0
        time.sleep(1.0)
        resets = proxy.reset_events
        procs.kill_all()
    audit = summarize(tmp_path / "audit", since_step=first)
    print(f"connection resets: {resets} reset events, rejoined within {[round(r, 2) for r in rejoins]} s, audit {audit}")
    assert audit["duplicated"] == 0 and audit["lost"] == 0 and audit["phantom"] == 0 and audit["sent_twice"] == 0
    assert audit["applied"] > 40
    for node, n in audit["failures_by_node"].items():
        assert n <= resets, (node, n, resets)


# ---------------------------------------------------------------- cloud SIGKILL under load
def test_cloud_sigkill_under_load_then_restart_resumes_forward_and_applies_no_step_twice(
        procs: Procs, tmp_path: Path, monkeypatch) -> None:
    from edgegan.checkpoint import load_checkpoint

    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit"))
    n = 16
    cfg = cloud_config(tmp_path, n, listen=f"127.0.0.1:{free_port()}", start_nodes=n, checkpoint_every=40,
                       feedback_timeout_s=5.0, rejoin_grace_s=30.0)
    cloud = launch_cloud(procs, cfg)
    target = f"127.0.0.1:{cfg_port(cfg)}"
    packs = [pack(procs, None, target, range(i, i + 8), retry_s=90) for i in range(0, n, 8)]
    _, mport = cloud_ready(procs, cloud)
    warm_up(procs, cloud, mport, n, steps=15)
    wait_metric(procs, cloud, mport, "edgegan_checkpoints_total", 2)
    # 5 steps past a checkpoint, far (35 steps) from the next: a fast run must not race past it
    wait_metric(procs, cloud, mport, "edgegan_generator_step", step(mport) + 5)
    killed_at = step(mport)
    cloud.kill()
    cloud.wait(10)
    saved = load_checkpoint(tmp_path / "ckpt" / "cloud.pt")["tdgan"]["step"]
    cloud2 = launch_cloud(procs, cfg, name="cloud2")
    _, mport2 = cloud_ready(procs, cloud2, name="cloud2")
    with StepWatch(mport2) as watch:
        rejoin_s = wait_online(procs, cloud2, mport2, n, timeout=60)
        wait_metric(procs, cloud2, mport2, "edgegan_generator_step", killed_at + 10)
    first = watch.samples[0][1]
    print(f"cloud SIGKILL: killed at step {killed_at:.0f}, checkpoint at {saved}, restarted at {first:.0f}, "
          f"{n} nodes online {rejoin_s:.2f} s after it served")
    assert f"resumed from {tmp_path / 'ckpt' / 'cloud.pt'} at step {saved}" in procs.log(cloud2)
    assert first >= saved and watch.monotone()
    # retry back-off: jittered, doubling from 0.2 s to 2 s (at most 3 s a wait), then Register
    assert rejoin_s <= 3.0 + 2.0, rejoin_s
    for p in packs:
        assert p.poll() is None, procs.log(p)[-2000:]
    procs.kill_all()
    audit = summarize(tmp_path / "audit")
    print(f"audit {audit}")
    assert audit["duplicated"] == 0 and audit["lost"] == 0 and audit["phantom"] == 0
    # the steps after the checkpoint died with the first cloud and were taken again by the second
    assert audit["rolled_back"] >= killed_at - saved - 1 > 0


# ---------------------------------------------------------------- disk full during a checkpoint
def _tmpfs(path: Path, size: str) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_counts_and_serves(procs: Procs, tmp_path: Path) -> None:
    from edgegan.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt"
    why = _tmpfs(ckpt, "4m")
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs: {why}")
    try:
        cfg = cloud_config(tmp_path, 2, listen=f"127.0.0.1:{free_port()}", start_nodes=2, checkpoint_every=10)
        cloud = launch_cloud(procs, cfg)
        p = pack(procs, None, f"127.0.0.1:{cfg_port(cfg)}", range(0, 2))
        _, mport = cloud_ready(procs, cloud)
        wait_metric(procs, cloud, mport, "edgegan_checkpoints_total", 2)
        filler = ckpt / "filler"
        with open(filler, "wb") as f:  # the disk is full from here on
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        good = (ckpt / "cloud.pt").read_bytes()
        written = scrape(mport)["edgegan_checkpoints_total"]
        wait_metric(procs, cloud, mport, "edgegan_checkpoint_failures_total", 2)
        at_failure = step(mport)
        assert (ckpt / "cloud.pt").read_bytes() == good
        assert load_checkpoint(ckpt / "cloud.pt")["tdgan"]["step"] % 10 == 0
        assert sorted(x.name for x in ckpt.iterdir()) == ["cloud.pt", "filler"]  # no temp file left
        failures = scrape(mport)["edgegan_checkpoint_failures_total"]
        lines = [ln for ln in procs.log(cloud).splitlines() if "not written" in ln]
        assert len(lines) >= failures - 1 and len(lines) <= failures and "No space left on device" in lines[0], lines
        assert scrape(mport)["edgegan_checkpoints_total"] == written
        wait_metric(procs, cloud, mport, "edgegan_generator_step", at_failure + 20)  # still serving
        filler.unlink()
        wait_metric(procs, cloud, mport, "edgegan_checkpoints_total", written + 1)
        assert load_checkpoint(ckpt / "cloud.pt")["tdgan"]["step"] > at_failure
        print(f"disk full: {failures:.0f} checkpoints failed, one log line each: {lines[0]}")
        assert p.poll() is None
    finally:
        procs.kill_all()
        subprocess.run(["umount", "-l", str(ckpt)], capture_output=True)
