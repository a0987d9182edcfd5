"""``edgegan simulate --backend grpc``: a TDGAN scenario as real processes on this machine.

One ``edgegan cloud`` process and ``engine.hosts`` ``edgegan edge`` host processes (the nodes
spread round robin, each host serving its nodes from one :class:`~edgegan.runtime.edge_host.EdgeHost`)
talk gRPC over loopback, secured as a lab deployment is: a bearer token per node, generated for the
run, and mutual TLS under a throw-away CA whose client certificates name the node ids of their host
(the cloud binds each token to them). The scenario's schedule drives the real streams through the
cloud's :class:`~edgegan.runtime.scheduled.StreamGate`: a node is a member at tick t exactly when the
schedule has it online and its Session is open; a scheduled leave ends its Session, a ``crashes``
entry cuts a node's stream and drops its D_k, an ``engine.host_kills`` entry SIGKILLs a whole host
(restarted here; its nodes come back with fresh D_k at their next join).

The simulator reads the cloud's ``ticks.jsonl`` as it grows, and scores G from the cloud's
snapshots exactly as the other backends score their in-process G, so the run folder is the same:
``metrics.jsonl``, ``summary.json`` (``engine.backend: grpc``), ``report.md``, plots, plus
``logs/cloud.log`` and ``logs/host-H.log``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import edgegan
from edgegan.config import to_dict
from edgegan.data import TensorData, save_partitions
from edgegan.errors import EdgeganError, require
from edgegan.runtime.config import CloudConfig, TLSConfig
from edgegan.runtime.guard import GuardConfig
from edgegan.runtime.pki import make_certs
from edgegan.runtime.scheduled import schedule_to_dict
from edgegan.sim.availability import Availability
from edgegan.sim.context import RunContext
from edgegan.tdgan.harness import build_generator

log = logging.getLogger("edgegan.sim")
READY_TIMEOUT_S = 120.0  # a fresh process imports torch and binds its port well within this
EXIT_TIMEOUT_S = 60.0  # hosts leave once the cloud says Done


def _private(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def _env() -> dict[str, str]:
    """One compute thread per process (as every pool worker and the in-process cloud use)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = str(Path(edgegan.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class HostProcess:
    """One ``edgegan edge`` host: its nodes, its command line, the process and what happened to it."""

    index: int
    nodes: list[str]
    argv: list[str]
    log_path: Path
    kill_step: int | None = None
    proc: subprocess.Popen | None = None
    restarts: list[dict[str, Any]] = field(default_factory=list)

    def start(self, extra: list[str]) -> None:
        with open(self.log_path, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgegan", *self.argv, *extra], stdout=f,
                                         stderr=subprocess.STDOUT, env=_env())

    def stats(self) -> dict[str, Any]:
        return {"index": self.index, "nodes": len(self.nodes), "pid": self.proc.pid if self.proc else None,
                "returncode": self.proc.returncode if self.proc else None, "killed_at_step": self.kill_step,
                "restarts": self.restarts, "log": str(self.log_path)}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class GrpcRun:
    """The processes of one run and the folder they share (``out/grpc``, logs in ``out/logs``)."""

    def __init__(self, ctx: RunContext, data: TensorData, av: Availability, parts: dict[str, TensorData],
                 steps: int) -> None:
        sc = ctx.sc
        self.ctx, self.av = ctx, av
        self.dir = ctx.work_dir / "grpc"
        self.logs = ctx.work_dir / "logs"
        for d in (self.dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        ids = list(parts)
        k = min(sc.engine.hosts, len(ids))
        groups = [ids[h::k] for h in range(k)]
        tokens = {n: secrets.token_urlsafe(24) for n in ids}
        certs = make_certs(self.dir / "tls", {f"host-{h}": g for h, g in enumerate(groups)})
        schedule = self.dir / "schedule.json"
        schedule.write_text(json.dumps(schedule_to_dict(av.to_schedule())))
        self.cloud_dir = self.dir / "cloud"
        cfg = CloudConfig(mode="tdgan", listen="127.0.0.1:0", run_id=sc.name, tokens=tokens,
                          tls=TLSConfig(str(certs["server.cert"]), str(certs["server.key"]), str(certs["ca"])),
                          checkpoint_dir=str(self.cloud_dir), checkpoint_every=steps + 1, metrics_port=0,
                          metrics_addr="127.0.0.1", image_shape=list(data.image_shape), num_classes=data.num_classes,
                          steps=steps, feedback_timeout_s=sc.engine.feedback_timeout_s, device=str(ctx.device),
                          tdgan=sc.training.tdgan, eval_dataset=None, schedule=str(schedule),
                          join_wait_s=sc.engine.join_wait_s,
                          snapshot_every=sc.evaluation.every if ctx.evaluate else 0, linger_s=60.0,
                          # every window reopens a Session (Register + Session): a schedule replayed
                          # at simulation speed opens many more per second than a lab's nodes
                          guard=GuardConfig(calls_per_s=10.0, call_burst=100))
        cfg.validate()
        self.cloud_yaml = _private(self.dir / "cloud.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.ready = self.dir / "cloud.ready.json"
        self.cloud: subprocess.Popen | None = None
        kills = {h.host: h.step for h in sc.engine.host_kills}
        self.hosts: list[HostProcess] = []
        for h, group in enumerate(groups):
            hdir = self.dir / f"host-{h}"
            hdir.mkdir(exist_ok=True)
            save_partitions(hdir / "data.pt", {n: parts[n] for n in group})
            tok = _private(hdir / "tokens.yaml", yaml.safe_dump({n: tokens[n] for n in group}))
            crash = ",".join(f"{n}:{s}" for n, s in av.crashes.items() if n in group)
            argv = ["edge", "--mode", "tdgan", "--node-ids", ",".join(group), "--tokens", str(tok),
                    "--node-data", str(hdir / "data.pt"), "--tls-ca", str(certs["ca"]),
                    "--tls-cert", str(certs[f"host-{h}.cert"]), "--tls-key", str(certs[f"host-{h}.key"]),
                    "--retry-s", str(max(120.0, sc.engine.join_wait_s)), "--device", "cpu",
                    *(["--crash-at", crash] if crash else [])]
            self.hosts.append(HostProcess(h, group, argv, self.logs / f"host-{h}.log", kills.get(h)))

    # ------------------------------------------------------------------ processes
    def start(self) -> int:
        """Start the cloud, wait until it serves, start the hosts; returns the cloud's port."""
        with open(self.logs / "cloud.log", "ab") as f:
            self.cloud = subprocess.Popen([sys.executable, "-m", "edgegan", "cloud", "--config", str(self.cloud_yaml),
                                           "--ready-file", str(self.ready)], stdout=f, stderr=subprocess.STDOUT,
                                          env=_env())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.is_file():
            if self.cloud.poll() is not None or time.monotonic() > deadline:
                raise EdgeganError("engine", f"the cloud process did not start ({_tail(self.logs / 'cloud.log')})",
                                   f"see {self.logs / 'cloud.log'}")
            time.sleep(0.05)
        ready = json.loads(self.ready.read_text())
        self.metrics_port = ready.get("metrics_port")
        target = f"127.0.0.1:{ready['port']}"
        for h in self.hosts:
            h.argv[1:1] = ["--cloud", target]
            h.start(["--die-at-step", str(h.kill_step)] if h.kill_step is not None else [])
        log.info("grpc backend: cloud on %s (metrics :%s), %d edge host(s)", target, self.metrics_port, len(self.hosts))
        return int(ready["port"])

    def check_hosts(self, record: Callable[[dict[str, Any]], None]) -> None:
        """Restart a host killed as scheduled; a host that fails while the cloud runs is an error."""
        for h in self.hosts:
            assert h.proc is not None
            rc = h.proc.poll()
            if rc is None or rc == 0:  # running, or left after the cloud's Done
                continue
            if rc == -signal.SIGKILL and h.kill_step is not None and not h.restarts:
                t0 = time.perf_counter()
                h.start([])
                h.restarts.append({"after_returncode": rc, "restart_s": time.perf_counter() - t0})
                log.warning("edge host %d killed (SIGKILL) at step %d: restarted, its %d node(s) rejoin at their "
                            "next scheduled join with fresh D_k", h.index, h.kill_step, len(h.nodes))
                record({"kind": "host_killed", "host": h.index, "step": h.kill_step, "nodes": h.nodes})
            elif self.cloud is not None and self.cloud.poll() is None:
                raise EdgeganError("engine", f"edge host {h.index} exited with {rc} mid-run ({_tail(h.log_path)})",
                                   f"see {h.log_path}")

    def finish(self) -> dict[str, Any]:
        """Wait for the cloud's exit and the hosts' (they leave on Done); the cloud's report."""
        assert self.cloud is not None
        rc = self.cloud.wait()
        require(rc == 0, "engine", f"the cloud process exited with {rc} ({_tail(self.logs / 'cloud.log')})",
                f"see {self.logs / 'cloud.log'}")
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for h in self.hosts:
            assert h.proc is not None
            try:
                h.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("edge host %d still running %g s after the run: terminating it", h.index, EXIT_TIMEOUT_S)
                h.proc.terminate()
                h.proc.wait(10)
        return json.loads((self.cloud_dir / "report.json").read_text())

    def kill_all(self) -> None:
        for p in [self.cloud, *(h.proc for h in self.hosts)]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)

    # ------------------------------------------------------------------ what the cloud writes
    def snapshot(self, step: int, timeout_s: float = 60.0) -> dict[str, Any]:
        """The cloud's G snapshot after ``step`` (waits for the file while the cloud runs)."""
        path = self.cloud_dir / "snapshots" / f"step-{step:07d}.pt"
        deadline = time.monotonic() + timeout_s
        while not path.is_file():
            require(time.monotonic() < deadline and (self.cloud is None or self.cloud.poll() is None
                                                     or path.is_file()),
                    "engine", f"the cloud wrote no snapshot for step {step}", f"see {self.logs / 'cloud.log'}")
            time.sleep(0.05)
        return torch.load(path, weights_only=True)

    def generator(self, snap: dict[str, Any], data: TensorData) -> torch.nn.Module:
        G = build_generator(self.ctx.sc.training.tdgan, data.image_shape, data.num_classes).to(self.ctx.device)
        G.load_state_dict(snap["generator"])
        return G

    def rows(self, stall_s: float):
        """Yield the cloud's tick rows as they are written, until the cloud exits; a run that writes
        nothing for ``stall_s`` seconds is an error."""
        path = self.cloud_dir / "ticks.jsonl"
        pos, last, buf = 0, time.monotonic(), ""
        while True:
            assert self.cloud is not None
            alive = self.cloud.poll() is None
            if path.is_file():
                with open(path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    last = time.monotonic()
                    yield json.loads(line)
            if not alive:
                return
            require(time.monotonic() - last < stall_s, "engine", f"no tick for {stall_s:g} s",
                    f"see {self.logs}/cloud.log and host-*.log")
            yield None  # let the caller check the hosts
            time.sleep(0.05)
