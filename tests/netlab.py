"""A small network lab for the fault tests (issue 24): edge hosts in their own network
namespaces, links that can be cut and healed, and a userspace TCP proxy for delay, jitter,
throttling and connection resets.

Namespaces: each :class:`Host` is a network namespace joined to the root namespace (where the
cloud listens) by a veth pair with a /30 from ``10.213.0.0/16``; a host's processes dial the
root side's address. :meth:`Host.cut` takes the root end of the pair down (packets vanish, no
RST: an edge that is alive but unreachable), :meth:`Host.heal` brings it back. Names are
``egl<pid base36><counter>…``, so parallel pytest workers never collide and a later run can
sweep what a crashed run left (:func:`sweep_stale`: every ``egl*`` namespace or link whose pid
is gone). Needs root and ``ip``; :func:`netns_unavailable` says why not, and the tests skip
with that reason. This kernel has no netem, iptables or nft: delay and loss come from the
proxy, partitions from link state.

Proxy: :class:`Proxy` listens on 127.0.0.1 and forwards to the cloud, per direction adding a
delay ``delay_s ± jitter_s`` (byte order kept: a chunk never overtakes the previous one) and a
bandwidth cap; :meth:`Proxy.reset_all` resets every live connection (RST, SO_LINGER 0), and
``reset_every_s`` does so periodically. It runs its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

PREFIX = "egl"
SUBNET = (10, 213)  # 10.213.0.0/16, carved into /30s
_LOCK = Path("/tmp/edgegan-netlab.lock")
_counter = 0


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here (None: they can): not root, no ``ip``, or
    ``ip netns add`` refused."""
    if shutil.which("ip") is None:
        return "the 'ip' tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"{PREFIX}{_b36(os.getpid())}probe"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete every ``egl*`` namespace and link whose creating process is gone (a crashed run);
    returns what it deleted."""
    gone = []
    pat = re.compile(rf"^{PREFIX}([0-9a-z]+?)x")
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)[@:]", _ip("-o", "link", check=False).stdout, re.M)]
    for name in names + links:
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1), 36)):
            kind = "netns" if name in names else "link"
            _ip(*((kind, "del", name) if kind == "netns" else ("link", "del", name)), check=False)
            gone.append(name)
    return gone


def _subnet_in_use(a: int, b: int) -> bool:
    return f"inet {SUBNET[0]}.{SUBNET[1]}.{a}.{b + 1}/" in _ip("-o", "addr", check=False).stdout


def _free_subnet() -> tuple[int, int]:
    """A /30 no link uses yet (callers hold the lock file until the address is set)."""
    for _ in range(200):
        a, b = random.randrange(256), random.randrange(0, 256, 4)
        if not _subnet_in_use(a, b):
            return a, b
    raise RuntimeError("no free /30 in 10.213.0.0/16")


class Host:
    """One edge host: namespace ``name`` joined by a veth pair; ``cloud_ip`` is the root side's
    address (the cloud listens on 0.0.0.0), ``ip`` the host's own."""

    def __init__(self, index: int) -> None:
        global _counter
        _counter += 1
        tag = f"{PREFIX}{_b36(os.getpid())}x{_b36(_counter)}"
        self.name = f"{tag}n"
        self.veth_root, self.veth_host = f"{tag}a", f"{tag}b"
        assert len(self.veth_root) <= 15, self.veth_root
        self.index = index
        self.up = False
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_host)
            _ip("link", "set", self.veth_host, "netns", self.name)
            with open(_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                a, b = _free_subnet()
                self.cloud_ip = f"{SUBNET[0]}.{SUBNET[1]}.{a}.{b + 1}"
                self.ip = f"{SUBNET[0]}.{SUBNET[1]}.{a}.{b + 2}"
                _ip("addr", "add", f"{self.cloud_ip}/30", "dev", self.veth_root)
            _ip("addr", "add", f"{self.ip}/30", "dev", self.veth_host, ns=self.name)
            _ip("link", "set", "lo", "up", ns=self.name)
            _ip("link", "set", self.veth_host, "up", ns=self.name)
            self.heal()
        except BaseException:
            self.close()
            raise

    def cut(self) -> None:
        """Partition: the root end goes down; packets in both directions vanish (no RST)."""
        _ip("link", "set", self.veth_root, "down")
        self.up = False

    def heal(self) -> None:
        _ip("link", "set", self.veth_root, "up")
        for ns, dev in ((None, self.veth_root), (self.name, self.veth_host)):  # forget ARP failures of the cut
            _ip("neigh", "flush", "dev", dev, ns=ns, check=False)
        self.up = True

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs: same pid, so signals reach it)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        _ip("link", "del", self.veth_root, check=False)  # takes its peer along
        _ip("netns", "del", self.name, check=False)


@contextlib.contextmanager
def hosts(n: int) -> Iterator[list[Host]]:
    """``n`` edge hosts, deleted on exit whatever happens (stale ones of dead runs swept first)."""
    sweep_stale()
    made: list[Host] = []
    try:
        for i in range(n):
            made.append(Host(i))
        yield made
    finally:
        for h in made:
            h.close()


# ---------------------------------------------------------------- userspace TCP proxy
class _Pipe:
    """One direction of one connection: chunks released in order after delay ± jitter, paced
    to ``bytes_per_s``."""

    def __init__(self, proxy: "Proxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy, self.reader, self.writer = proxy, reader, writer
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.last_release = 0.0

    async def read(self) -> None:
        p = self.proxy
        while data := await self.reader.read(16384):
            now = time.monotonic()
            delay = max(0.0, p.delay_s + p.rng.uniform(-p.jitter_s, p.jitter_s)) if p.delay_s else 0.0
            release = max(now + delay, self.last_release)
            if p.bytes_per_s:
                release = max(release, self.last_release) + len(data) / p.bytes_per_s
            self.last_release = release
            self.queue.put_nowait((release, data))
        self.queue.put_nowait((0.0, b""))

    async def write(self) -> None:
        while True:
            release, data = await self.queue.get()
            if not data:
                self.writer.write_eof() if self.writer.can_write_eof() else None
                return
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.writer.write(data)
            await self.writer.drain()


class Proxy:
    """TCP proxy 127.0.0.1:``port`` → ``target``. Knobs (change them any time): ``delay_s``,
    ``jitter_s`` (uniform ±, per direction), ``bytes_per_s`` (per direction, 0: unlimited),
    ``reset_every_s`` (0: never). ``resets`` counts connections reset, ``accepted`` connections."""

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0, jitter_s: float = 0.0,
                 bytes_per_s: float = 0.0, reset_every_s: float = 0.0, seed: int = 0, host: str = "127.0.0.1") -> None:
        self.target, self.host = target, host
        self.delay_s, self.jitter_s, self.bytes_per_s, self.reset_every_s = delay_s, jitter_s, bytes_per_s, reset_every_s
        self.rng = random.Random(seed)
        self.resets = self.reset_events = self.accepted = 0
        self.port = 0
        self._conns: set[tuple[asyncio.Task, socket.socket, socket.socket]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="netlab-proxy")

    def __enter__(self) -> "Proxy":
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        ticker = asyncio.ensure_future(self._tick())
        self._ready.set()
        await self._stop.wait()
        ticker.cancel()
        server.close()
        self._reset()
        await asyncio.sleep(0.05)

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            if self.reset_every_s and time.monotonic() - last >= self.reset_every_s:
                last = time.monotonic()
                self._reset()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        self.accepted += 1
        up, down = _Pipe(self, creader, uwriter), _Pipe(self, ureader, cwriter)
        task = asyncio.current_task()
        entry = (task, cwriter.get_extra_info("socket"), uwriter.get_extra_info("socket"))
        self._conns.add(entry)
        try:
            await asyncio.gather(up.read(), up.write(), down.read(), down.write())
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(entry)
            cwriter.transport.abort()
            uwriter.transport.abort()

    def _reset(self) -> int:
        self.reset_events += 1
        n = 0
        for task, *socks in list(self._conns):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            task.cancel()  # its finally aborts both transports: an RST each way
            n += 1
        self.resets += n
        return n

    def reset_all(self) -> int:
        """Reset every live connection now (RST both ways); returns how many."""
        return asyncio.run_coroutine_threadsafe(self._areset(), self._loop).result(10)

    async def _areset(self) -> int:
        return self._reset()

    @property
    def live(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


# ---------------------------------------------------------------- processes inside hosts
def start_in(procs, host: Host | None, name: str, *args: str, script: str | None = None):
    """Like ``Procs.start`` (``python -m edgegan ARGS``, or ``python SCRIPT ARGS``; logged,
    killed at teardown), inside ``host`` (None: the root namespace)."""
    from grpc_procs import _env

    log = procs.tmp / f"{name}.log"
    f = open(log, "ab")
    argv = [sys.executable, *((script,) if script else ("-m", "edgegan")), *args]
    p = subprocess.Popen(host.wrap(argv) if host else argv, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                         cwd=Path(__file__).resolve().parents[1])
    procs.procs.append(p)
    procs.logs[p.pid] = log
    return p


def start_edge_host(procs, host: Host | None, name: str, target: str, nodes: dict[str, tuple[str, str]],
                    retry_s: float = 60.0):
    """``edgegan edge`` hosting ``nodes`` (id → (token, comma-separated classes)) in one process
    (:class:`~edgegan.runtime.edge_host.EdgeHost`: each node its own Session stream, token and D_k),
    inside ``host``; the tokens go to a 0600 file beside the logs."""
    tokens = procs.tmp / f"{name}.tokens.yaml"
    tokens.touch(mode=0o600)
    tokens.write_text("".join(f"{k}: {tok}\n" for k, (tok, _) in nodes.items()))
    return start_in(procs, host, name, "edge", "--cloud", target, "--retry-s", str(retry_s),
                    "--node-ids", ",".join(nodes), "--tokens", str(tokens),
                    "--node-classes", ";".join(c for _, c in nodes.values()))


def freeze(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGSTOP)


def thaw(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGCONT)
