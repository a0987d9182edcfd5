"""Helpers for the gRPC tests: real ``python -m edgegan cloud|edge`` processes on 127.0.0.1,
health polling, Prometheus scraping and throw-away TLS certificates."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from edgegan.runtime.pki import make_certs  # noqa: F401  (the tests' throw-away TLS)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Procs:
    """Starts processes, remembers them, and kills every one of them at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        f = open(log, "ab")
        p = subprocess.Popen([sys.executable, "-m", "edgegan", *args], stdout=f, stderr=subprocess.STDOUT,
                             env=_env(), cwd=REPO)
        self.procs.append(p)
        self.logs[p.pid] = log
        return p

    def log(self, p: subprocess.Popen) -> str:
        return self.logs[p.pid].read_text(errors="replace")

    def wait(self, p: subprocess.Popen, timeout: float) -> int:
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {p.pid} still running after {timeout} s; log:\n{self.log(p)[-3000:]}")

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)


def write_config(path: Path, **cfg: Any) -> Path:
    base = {"listen": f"127.0.0.1:{free_port()}", "tokens": {"e0": "t0", "e1": "t1", "e2": "t2"},
            "checkpoint_dir": str(path.parent / "ckpt"), "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 3.0,
            "rejoin_grace_s": 30.0, "metrics_port": 0, "metrics_addr": "127.0.0.1", "device": "cpu",
            "linger_s": 0.5, "tdgan": {"width": 32, "batch_size": 32, "remind_batch_size": 32}}
    base.update(cfg)
    path.write_text(yaml.safe_dump(base))
    return path


def launch_cloud(procs: Procs, config: Path, name: str = "cloud") -> subprocess.Popen:
    """Start a cloud process without waiting (edges may start beside it: they retry)."""
    (procs.tmp / f"{name}.ready.json").unlink(missing_ok=True)
    return procs.start(name, "cloud", "--config", str(config), "--ready-file", str(procs.tmp / f"{name}.ready.json"))


def cloud_ready(procs: Procs, p: subprocess.Popen, name: str = "cloud", timeout: float = 90.0,
                tls_ca: Path | None = None, tls_client: tuple[Path, Path] | None = None) -> tuple[int, int]:
    """Wait for the cloud's ready file and a SERVING health check; (port, metrics port)."""
    ready = procs.tmp / f"{name}.ready.json"
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        assert p.poll() is None, f"cloud exited with {p.returncode}:\n{procs.log(p)[-3000:]}"
        assert time.monotonic() < deadline, f"cloud not ready after {timeout} s:\n{procs.log(p)[-3000:]}"
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    wait_serving(info["port"], tls_ca, tls_client, deadline - time.monotonic())
    return info["port"], info["metrics_port"]


def start_cloud(procs: Procs, config: Path, name: str = "cloud", timeout: float = 90.0,
                tls_ca: Path | None = None, tls_client: tuple[Path, Path] | None = None
                ) -> tuple[subprocess.Popen, int, int]:
    """Start a cloud and wait until it serves; (process, port, metrics port)."""
    p = launch_cloud(procs, config, name)
    return (p, *cloud_ready(procs, p, name, timeout, tls_ca, tls_client))


def config_port(config: Path) -> int:
    """The port a config's ``listen`` names (known before the cloud is up)."""
    return int(yaml.safe_load(config.read_text())["listen"].rpartition(":")[2])


def wait_serving(port: int, tls_ca: Path | None, tls_client: tuple[Path, Path] | None, timeout: float) -> None:
    """Poll the gRPC health service until it answers SERVING (``tls_client``: cert, key)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{port}"
    if tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        cert, key = (tls_client[0].read_bytes(), tls_client[1].read_bytes()) if tls_client else (None, None)
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes(), key, cert))
    deadline = time.monotonic() + timeout
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service="edgegan.v1.EdgeGAN"), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def start_edge(procs: Procs, port: int, node_id: str, token: str, classes: str, *extra: str) -> subprocess.Popen:
    return procs.start(node_id, "edge", "--cloud", f"127.0.0.1:{port}", "--node-id", node_id, "--token", token,
                       "--classes", classes, "--device", "cpu", *extra)


def wait_for_log(procs: Procs, p: subprocess.Popen, text: str, timeout: float = 90.0) -> None:
    """Wait until process ``p`` has written ``text`` to its log (fails if it exits first)."""
    deadline = time.monotonic() + timeout
    while text not in procs.log(p):
        assert p.poll() is None, f"pid {p.pid} exited ({p.returncode}) before logging {text!r}:\n{procs.log(p)[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not logged after {timeout} s:\n{procs.log(p)[-3000:]}"
        time.sleep(0.1)


def scrape(metrics_port: int) -> dict[str, float]:
    """The cloud's /metrics as {sample name with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_metric(procs: Procs, cloud: subprocess.Popen, metrics_port: int, name: str, at_least: float,
                timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        assert cloud.poll() is None, f"cloud exited early:\n{procs.log(cloud)[-3000:]}"
        v = scrape(metrics_port).get(name, float("-inf"))
        if v >= at_least:
            return v
        assert time.monotonic() < deadline, f"{name} = {v} < {at_least} after {timeout} s"
        time.sleep(0.1)
