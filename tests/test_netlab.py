"""The network lab itself (issue 24): namespaces cut, heal and clean up; the proxy delays,
throttles and resets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

import netlab

NETNS = netlab.netns_unavailable()


@pytest.fixture
def echo_port():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    def echo(c: socket.socket) -> None:
        with c:
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def roundtrip(s: socket.socket, n: int) -> float:
    t = time.monotonic()
    s.sendall(b"x" * n)
    got = 0
    while got < n:
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        got += len(chunk)
    return time.monotonic() - t


def test_proxy_adds_delay_throttles_and_resets(echo_port: int) -> None:
    with netlab.Proxy(("127.0.0.1", echo_port), delay_s=0.05, jitter_s=0.02, bytes_per_s=1e6, seed=0) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            small = [roundtrip(s, 10) for _ in range(5)]
            assert min(small) >= 2 * (0.05 - 0.02) - 0.005, small  # both directions delayed
            assert roundtrip(s, 300_000) >= 0.3  # 300 kB at 1 MB/s
            assert proxy.reset_all() == 1
            with pytest.raises((ConnectionResetError, ConnectionAbortedError, AssertionError)):
                roundtrip(s, 10)
        proxy.delay_s = proxy.jitter_s = proxy.bytes_per_s = 0  # knobs change live
        proxy.reset_every_s = 0.3
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            assert roundtrip(s, 10) < 0.25
            time.sleep(0.8)
            with pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError, AssertionError)):
                roundtrip(s, 10)
        assert proxy.resets >= 2


@pytest.mark.skipif(NETNS is not None, reason=f"network namespaces unavailable: {NETNS}")
def test_a_host_namespace_is_cut_healed_and_cleaned_up(echo_port: int) -> None:
    def dial(host: netlab.Host) -> int:
        code = (f"import socket; s = socket.create_connection(('{host.cloud_ip}', {echo_port}), timeout=1.5); "
                "s.sendall(b'hi'); assert s.recv(2) == b'hi'")
        return subprocess.run(host.wrap([sys.executable, "-c", code]), capture_output=True, timeout=30).returncode

    with netlab.hosts(2) as (a, b):
        names = (a.name, b.name, a.veth_root, b.veth_root)
        assert dial(a) == 0 and dial(b) == 0
        a.cut()
        assert dial(a) != 0 and dial(b) == 0  # only a is cut off
        a.heal()
        assert dial(a) == 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(n in listed or n in links for n in names)


@pytest.mark.skipif(NETNS is not None, reason=f"network namespaces unavailable: {NETNS}")
def test_stale_namespaces_of_a_dead_run_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netlab.PREFIX}{netlab._b36(dead.pid)}xzn"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netlab.sweep_stale()
        assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
