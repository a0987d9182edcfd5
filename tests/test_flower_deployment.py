"""The same Flower apps under a real ``flower-superlink`` and two ``flower-supernode`` processes
on loopback (insecure), submitted with ``flwr run``: one source node and one target node."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ('source-classes="0,1,2,3,4" eta="1.0" pretrain-steps=3 steps-per-stage=2 adapt-steps=2 '
        'batch-size=32 critic-steps=2 eval-samples=200 device="cpu"')


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"port {port} not open after {timeout}s:\n{log.read_text()[-2000:]}")


@pytest.fixture
def flower_processes(tmp_path):
    """SuperLink + 2 SuperNodes (partition 0: source, 1: target); killed (process groups) at teardown."""
    if not (BIN / "flower-superlink").exists():
        pytest.skip("flower-superlink not installed next to this Python")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    link, node0, node1 = _free_ports(3)
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            p = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=tmp_path, start_new_session=True)
        procs.append(p)
        return p, log

    try:
        p, log = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                       "--disable-runtime-dependency-installation")
        _wait_port(link, p, log)
        for pid, port in ((0, node0), (1, node1)):
            start(f"supernode{pid}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--port", str(port), "--node-config", f"partition-id={pid}")
        home = Path(env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        yield env, tmp_path
    finally:
        for p in procs:
            with_signal(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with_signal(p, signal.SIGKILL)
                p.wait(timeout=5)


def with_signal(p: subprocess.Popen, sig: int) -> None:
    """Signal the process group started for ``p`` (it includes the SuperExec children)."""
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def test_superlink_two_supernodes_complete_a_run(flower_processes):
    env, tmp_path = flower_processes
    assert shutil.which("flwr", path=env["PATH"]) is not None
    done = subprocess.run([str(BIN / "flwr"), "run", str(REPO), "loop", "--run-config", TINY, "--stream"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Successfully started run" in out
    assert "aggregate_train: Received 2 results and 0 failures" in out, out[-3000:]
    assert "aggregate_evaluate: Received 1 results and 0 failures" in out, out[-3000:]
    assert "'fid-adapted'" in out and "'sources': 1" in out  # MetricRecords in Flower's own log
