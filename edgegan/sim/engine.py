"""The simulation engine (DESIGN.md, Runtime): a fixed pool of workers, each hosting many
virtual nodes whose state is parked between activations, driven by the runtime's roles.

* :class:`NodeHost` is one worker: virtual TDGAN edges (seed 003) kept as rows of packed state
  (:class:`~edgegan.tdgan.edge.PackedEdges`), at most ``resident_cap`` in memory; the least recently
  used beyond that are spilled to their fixed slot of the worker's spill file and read back on their
  next activation. Stateless jobs (source pre-training, Stage II methods,
  grid summaries) run on any worker.
* :class:`InprocPool` runs the hosts in this process (tests, tiny runs); :class:`RayPool` runs
  each host as a Ray actor (``ray.util.ActorPool.map_unordered`` for stateless jobs, direct
  calls to the owning actor for a node's feedback) with per-actor resources, fractional GPUs
  included.
* :class:`SimLink` is a :class:`~edgegan.runtime.roles.FeedbackLink`: :class:`~edgegan.runtime.roles.TDGANServer`
  drives TDGAN over it exactly as over gRPC, while the link applies the availability schedule's
  join/leave events (``Schedule.events_at``) between steps through ``connected`` /
  ``disconnected``, as a transport reports streams opening and closing.

The pipelines live in :mod:`edgegan.sim.coalescence`, :mod:`edgegan.sim.tdgan` and :mod:`edgegan.sim.grid`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.runtime.roles import NodeFailure, TDGANServer
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import PackedEdges, class_pools
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo
from edgegan.tdgan.schedule import Schedule

log = logging.getLogger("edgegan.sim")

#: Progress callback: ``progress(phase, completed, total, text)``.
Progress = Callable[[str, int, int, str], None]


def proc_memory_bytes(pid: int | str = "self", field: str = "VmHWM") -> int:
    """A memory field of /proc/PID/status in bytes (VmHWM: peak resident set size, VmRSS: now);
    0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


#: Virtual nodes whose feedback one vectorised pass computes (live together, above ``resident_cap`` if need be).
FEEDBACK_GROUP = 256
#: A worker's spill file (one fixed-size slot per hosted node) and its node list in slot order.
SLAB, SLOTS = "slab.bin", "slots.txt"


def _tag(node_id: str) -> bytes:
    """The 8 bytes that open a slot holding ``node_id``'s parked state (zeros: no state)."""
    return (1 + zlib.crc32(node_id.encode())).to_bytes(8, "little")


class FeedbackBatch(Sequence[FeedbackRequest]):
    """The requests one worker call carries, as ONE fakes tensor (Σ_k B_k, C, H, W) and ONE labels
    tensor (Σ_k B_k,) plus the node ids and steps; ``batch[i]`` is request i (views, no copy).
    Shipping hundreds of small tensors per Ray call made each actor keep ~3 MB per request."""

    def __init__(self, node_ids: list[str], steps: list[int], fakes: torch.Tensor, labels: torch.Tensor,
                 sizes: list[int]) -> None:
        self.node_ids, self.steps, self.fakes, self.labels, self.sizes = node_ids, steps, fakes, labels, sizes
        self._at = list(itertools.accumulate(sizes, initial=0))

    @classmethod
    def of(cls, requests: Sequence[FeedbackRequest]) -> FeedbackBatch:
        if isinstance(requests, FeedbackBatch):
            return requests
        require(len(requests) > 0, "requests", "a worker call needs at least one request")
        return cls([r.node_id for r in requests], [r.step for r in requests],
                   torch.cat([r.fake for r in requests]), torch.cat([r.labels for r in requests]),
                   [len(r.labels) for r in requests])

    def to(self, device: torch.device) -> FeedbackBatch:
        return FeedbackBatch(self.node_ids, self.steps, self.fakes.to(device), self.labels.to(device), self.sizes)

    def __len__(self) -> int:
        return len(self.node_ids)

    def __getitem__(self, i: int) -> FeedbackRequest:  # type: ignore[override]
        rows = slice(self._at[i], self._at[i + 1])
        return FeedbackRequest(self.node_ids[i], self.steps[i], self.fakes[rows], self.labels[rows])


class ReplyBatch(Sequence[FeedbackReply | NodeFailure]):
    """What a worker call answers, in the order of its :class:`FeedbackBatch`: the replies' gradients as
    ONE tensor (rows of failed nodes absent), their stats, and a :class:`NodeFailure` per failed node;
    ``batch[i]`` is node i's :class:`FeedbackReply` (a view of the gradient rows) or failure."""

    def __init__(self, answers: Sequence[FeedbackReply | NodeFailure]) -> None:
        replies = [a for a in answers if isinstance(a, FeedbackReply)]
        self.failures = {i: a for i, a in enumerate(answers) if isinstance(a, NodeFailure)}
        self.node_ids = [a.node_id if isinstance(a, FeedbackReply) else "" for a in answers]
        self.steps = [a.step if isinstance(a, FeedbackReply) else -1 for a in answers]
        self.stats = [a.stats if isinstance(a, FeedbackReply) else {} for a in answers]
        self.sizes = [len(a.grad) if isinstance(a, FeedbackReply) else 0 for a in answers]
        self.grads = torch.cat([r.grad.cpu() for r in replies]) if replies else torch.empty(0)
        self._at = list(itertools.accumulate(self.sizes, initial=0))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> FeedbackReply | NodeFailure:  # type: ignore[override]
        if i in self.failures:
            return self.failures[i]
        return FeedbackReply(self.node_ids[i], self.steps[i], self.grads[self._at[i]:self._at[i + 1]], self.stats[i])


class NodeHost:
    """One pool worker hosting many virtual nodes (plain object; :class:`RayPool` wraps it in an actor).

    A node's state (D_k, Adam, RNG: :class:`~edgegan.tdgan.edge.PackedEdges` rows) lives in a row of an
    in-memory block while resident (at most ``resident_cap`` rows, least recently used first out) and
    otherwise in its fixed slot of one spill file per worker (``slab.bin``: an 8-byte tag + the row;
    ``slots.txt`` lists the nodes in slot order, so another worker can continue a lost worker's nodes).

    Parameters
    ----------
    index : the worker's index in the pool.
    resident_cap : virtual TDGAN nodes kept in memory; the least recently used beyond are spilled.
    spill_dir : folder for the spill file (a temporary folder when None).
    device : where this worker's models run.
    threads : torch intra-op threads of this worker (None: leave as is).
    """

    def __init__(self, index: int, resident_cap: int = 512, spill_dir: str | None = None,
                 device: str = "cpu", threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.index = index
        self.cap = int(resident_cap)
        self.device = torch.device(device)
        self._own_spill = spill_dir is None
        self.spill_dir = Path(spill_dir or tempfile.mkdtemp(prefix=f"edgegan-host{index}-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, TensorData] = {}
        self._pools: dict[str, dict[int, torch.Tensor]] = {}  # per node: indices of each class it holds
        self._crash: dict[str, int] = {}
        self._packed: PackedEdges | None = None
        self._live = torch.empty(0, 0, dtype=torch.int64)  # rows of resident nodes (int64: fast row copies)
        self._rows = self._block = self._live.view(torch.uint8)  # the rows' packed bytes; a group's rows
        self._free_rows: list[int] = []
        self._resident: OrderedDict[str, int] = OrderedDict()  # node -> row, least recently used first
        self._slot: dict[str, int] = {}  # node -> its slot in the spill file
        self._spilled: set[str] = set()
        self._fd = os.open(self.spill_dir / SLAB, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # this run's only
        (self.spill_dir / SLOTS).write_text("")
        self.counters = {"activations": 0, "created": 0, "restored": 0, "spilled": 0, "spill_bytes": 0, "crashed": 0,
                         "activate_s": 0.0, "park_s": 0.0, "compute_s": 0.0, "jobs": 0, "job_s": 0.0}

    # ------------------------------------------------------------------ virtual TDGAN edges
    def add_tdgan_nodes(self, cfg: TDGANConfig, nodes: Sequence[tuple[str, TensorData]],
                        crashes: dict[str, int] | None = None) -> list[NodeInfo]:
        """Host ``nodes`` (id, private data); their D_k are built on first activation."""
        for node_id, data in nodes:
            require(node_id not in self._data, "nodes", f"node '{node_id}' is hosted twice")
            self._data[node_id] = data
            self._pools[node_id] = class_pools(data)
            self._slot[node_id] = len(self._slot)
        with open(self.spill_dir / SLOTS, "a") as f:
            f.write("".join(f"{node_id}\n" for node_id, _ in nodes))
        if self._packed is None and nodes:
            self._packed = PackedEdges(cfg, nodes[0][1], self.device)
            words = -(-self._packed.nbytes // 8)
            self._live = torch.zeros(self.cap + FEEDBACK_GROUP, words, dtype=torch.int64)
            self._rows = self._live.view(torch.uint8)[:, :self._packed.nbytes]
            self._block = torch.empty(FEEDBACK_GROUP, words, dtype=torch.int64)
            self._free_rows = list(range(len(self._live)))[::-1]
        self._crash.update(crashes or {})
        return [_info(k, d) for k, d in nodes]

    def adopt_tdgan_nodes(self, cfg: TDGANConfig, nodes: Sequence[tuple[str, TensorData]],
                          crashes: dict[str, int], spilled_from: str) -> dict[str, str]:
        """Host ``nodes`` of a lost worker: a node whose state is readable in its slot of that worker's
        spill file (folder ``spilled_from``) continues from it (``"spilled"``); the others start with a
        fresh D_k (``"fresh"``: their state lived only in the lost worker's memory or on another machine)."""
        self.add_tdgan_nodes(cfg, nodes, crashes)
        src = Path(spilled_from)
        try:
            slots = {k: i for i, k in enumerate((src / SLOTS).read_text().splitlines())}
            fd = os.open(src / SLAB, os.O_RDONLY)
        except OSError:
            slots, fd = {}, -1
        out = {}
        try:
            for node_id, _ in nodes:
                if node_id in slots:
                    size = self._slot_bytes()
                    state = os.pread(fd, size, slots[node_id] * size)
                    if len(state) == size and state[:8] == _tag(node_id):
                        os.pwrite(self._fd, state, self._slot[node_id] * size)
                        self._spilled.add(node_id)
                out[node_id] = "spilled" if node_id in self._spilled else "fresh"
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    def _slot_bytes(self) -> int:
        return 8 + self._packed.nbytes  # type: ignore[union-attr]

    def _activate_many(self, node_ids: Sequence[str]) -> list[int]:
        """The rows of ``node_ids`` in the live block: resident, restored from their slot, or new."""
        rows = []
        size = self._slot_bytes() if self._packed else 0
        for node_id in node_ids:
            row = self._resident.get(node_id)
            if row is not None:
                self._resident.move_to_end(node_id)
                rows.append(row)
                continue
            require(node_id in self._data, "node_id", f"node '{node_id}' is not hosted by worker {self.index}")
            row = self._free_rows.pop()
            if node_id in self._spilled:
                tag = bytearray(8)
                offset = self._slot[node_id] * size
                os.preadv(self._fd, [tag, self._rows[row].numpy()], offset)
                require(bytes(tag) == _tag(node_id), "spill", f"worker {self.index}: the spill slot of node "
                        f"'{node_id}' does not hold its state", "do not share a spill folder between runs")
                os.pwrite(self._fd, bytes(8), offset)  # a slot holds state only while the node is parked
                self._spilled.discard(node_id)
                self.counters["restored"] += 1
            else:
                self._rows[row] = self._packed.fresh(node_id, self._data[node_id])  # type: ignore[union-attr]
                self.counters["created"] += 1
            self._resident[node_id] = row
            rows.append(row)
        return rows

    def _park(self) -> None:
        """Spill least recently used nodes until at most ``cap`` are resident (raw, no fsync: a cache)."""
        size = self._slot_bytes() if self._packed else 0
        while len(self._resident) > self.cap:
            node_id, row = self._resident.popitem(last=False)
            self.counters["spill_bytes"] += os.pwritev(self._fd, [_tag(node_id), self._rows[row].numpy()],
                                                       self._slot[node_id] * size)
            self._free_rows.append(row)
            self._spilled.add(node_id)
            self.counters["spilled"] += 1

    def feedback(self, requests: Sequence[FeedbackRequest]) -> ReplyBatch:
        """Answer each request with its node's feedback (:meth:`~edgegan.tdgan.edge.PackedEdges.feedback`:
        the same maths as :meth:`TDGANEdge.feedback` per node, vectorised over groups of up to
        ``FEEDBACK_GROUP`` nodes, parked back to ``resident_cap`` after each group); a node
        scheduled to crash at this step answers :class:`NodeFailure`
        ``disconnected`` and its state is dropped. Requests and replies travel stacked
        (:class:`FeedbackBatch`, :class:`ReplyBatch`)."""
        requests = FeedbackBatch.of(requests).to(self.device)
        out: list[FeedbackReply | NodeFailure | None] = [None] * len(requests)
        todo = []
        for i, (node_id, step) in enumerate(zip(requests.node_ids, requests.steps)):
            if self._crash.get(node_id) == step:
                self._drop(node_id)
                out[i] = NodeFailure(FailureReason.DISCONNECTED, f"node '{node_id}' left during step {step}")
            else:
                todo.append(i)
        c = self.counters
        for start in range(0, len(todo), FEEDBACK_GROUP):
            chunk = todo[start:start + FEEDBACK_GROUP]
            ids = [requests.node_ids[i] for i in chunk]
            t0 = time.perf_counter()
            rows = torch.tensor(self._activate_many(ids))
            t1 = time.perf_counter()
            block = torch.index_select(self._live, 0, rows, out=self._block[:len(rows)])
            replies = self._packed.feedback(block.view(torch.uint8)[:, :self._packed.nbytes],  # type: ignore[union-attr]
                                            [(k, self._data[k], self._pools[k]) for k in ids],
                                            [requests[i] for i in chunk])
            self._live.index_copy_(0, rows, block)
            for i, reply in zip(chunk, replies):
                out[i] = reply
            t2 = time.perf_counter()
            self._park()
            t3 = time.perf_counter()
            c["activations"] += len(chunk)
            c["activate_s"] += t1 - t0
            c["compute_s"] += t2 - t1
            c["park_s"] += t3 - t2
        return ReplyBatch(out)  # type: ignore[arg-type]

    def _drop(self, node_id: str) -> None:
        """A crashed node loses its state (it may rejoin later with a fresh D_k)."""
        self.counters["crashed"] += 1
        row = self._resident.pop(node_id, None)
        if row is not None:
            self._free_rows.append(row)
        if node_id in self._spilled:
            self._spilled.discard(node_id)
            os.pwrite(self._fd, bytes(8), self._slot[node_id] * self._slot_bytes())
        self._crash.pop(node_id, None)

    def stats(self) -> dict[str, Any]:
        ray = sys.modules.get("ray")  # inside a Ray actor: which cluster node hosts this worker, which GPUs
        in_ray = ray is not None and ray.is_initialized()
        return {**self.counters, "index": self.index, "pid": os.getpid(), "resident": len(self._resident),
                "spilled_now": len(self._spilled), "nodes": len(self._data), "rss_peak_bytes": proc_memory_bytes(),
                "ray_node": ray.get_runtime_context().get_node_id() if in_ray else None,
                "gpu_ids": [int(i) for i in ray.get_gpu_ids()] if in_ray else [], "device": str(self.device),
                "spill_dir": str(self.spill_dir), "own_spill_dir": self._own_spill}

    # ------------------------------------------------------------------ stateless jobs
    def run_job(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a module-level job function on this worker (pre-training, Stage II, grid uploads);
        counted in ``jobs`` / ``job_s`` (``activations`` counts TDGAN node activations)."""
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.counters["jobs"] += 1
            self.counters["job_s"] += time.perf_counter() - t0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._own_spill:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


def _remove_folders(host: NodeHost, folders: list[str]) -> None:
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


def _info(node_id: str, data: TensorData) -> NodeInfo:
    from edgegan.data.partition import label_histogram

    hist = label_histogram(data.y, data.num_classes)
    return NodeInfo(node_id, len(data), tuple(int(c) for c in hist))


# ---------------------------------------------------------------------- pools
def _error_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


class _Pool:
    """What both pools share: where each worker runs (its first :meth:`NodeHost.stats`) and the
    record of workers lost during the run (their Ray node died, or they stopped answering)."""

    def _placed(self, first_stats: list[dict[str, Any]]) -> None:
        self.placement = [{k: st[k] for k in ("ray_node", "spill_dir", "own_spill_dir")} for st in first_stats]
        self.lost: dict[int, dict[str, Any]] = {}

    @property
    def size(self) -> int:
        return len(self.placement)

    def alive(self) -> list[int]:
        """Indices of the workers still in use."""
        return [i for i in range(self.size) if i not in self.lost]

    def lose(self, host: int, error: str) -> dict[str, Any]:
        """Stop using worker ``host``; returns its record (``summary.engine.lost_workers``), which the
        caller completes (tick, nodes re-created)."""
        self.lost[host] = {"index": host, "error": error, **self.placement[host]}
        self._release(host)
        return self.lost[host]

    def _release(self, host: int) -> None:
        pass

    def stats(self) -> list[dict[str, Any]]:
        """Each worker's counters; a lost worker is ``{"index", "lost": True, "error", …}``."""
        return [{**self.lost[i], "lost": True} if i in self.lost else self._stats(i) for i in range(self.size)]

    def _stats(self, host: int) -> dict[str, Any]:
        return self.call_sync(host, "stats")  # type: ignore[attr-defined]


class InprocPool(_Pool):
    """``workers`` hosts in this process, called one after another."""

    backend = "inproc"

    def __init__(self, workers: int, resident_cap: int = 512, device: str = "cpu",
                 spill_dir: str | None = None) -> None:
        require(workers >= 1, "workers", f"must be >= 1, got {workers}")
        self.hosts = [NodeHost(i, resident_cap, None if spill_dir is None else f"{spill_dir}/host{i}", device)
                      for i in range(workers)]
        self.device = device
        self._placed([h.stats() for h in self.hosts])

    async def call(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.hosts[host], method)(*args)

    def call_sync(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.hosts[host], method)(*args)

    def map_unordered(self, fn: Callable[..., Any], jobs: Iterable[tuple[tuple, dict]]) -> Iterator[Any]:
        """Run ``fn(host, *args, **kwargs)`` per job; yields results as they finish."""
        hosts = [self.hosts[i] for i in self.alive()]
        for i, (args, kwargs) in enumerate(jobs):
            yield hosts[i % len(hosts)].run_job(fn, args, kwargs)

    def shutdown(self) -> None:
        for h in self.hosts:
            h.close()


class RayPool(_Pool):
    """``workers`` Ray actors, each a :class:`NodeHost` with ``num_cpus`` / ``num_gpus`` resources.

    Joins ``address`` (``auto`` or ``ray://…``) when given, uses an already initialised Ray, or
    starts a local one sized to the machine (and shuts it down again in :meth:`shutdown`).
    """

    backend = "ray"

    def __init__(self, workers: int = 0, resident_cap: int = 512, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 address: str | None = None, spill_dir: str | None = None,
                 object_store_bytes: int = 256 << 20, connect_timeout_s: float = 30.0) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            raise EdgeganError("backend", "ray is not installed", "pip install 'ray>=2.9' or use --backend inproc")
        self._ray = ray
        self._started = False
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's CUDA env warning
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "configure_logging": True,
                                  "logging_level": logging.WARNING, "log_to_driver": True}
            if address:
                _check_reachable(address, connect_timeout_s)
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=object_store_bytes, **kw)
            self._started = True
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0.0))
        if num_gpus > 0 and gpus == 0:
            log.warning("nodes.resources.num_gpus=%s but the Ray cluster has no GPU: running on CPU", num_gpus)
            num_gpus = 0.0
        if workers <= 0:
            by_cpu = int(float(res.get("CPU", 1.0)) // num_cpus)
            workers = max(1, min(by_cpu, int(gpus // num_gpus) if num_gpus else by_cpu))
        device = "cuda" if num_gpus > 0 else "cpu"
        threads = max(1, int(num_cpus))
        actor_cls = ray.remote(NodeHost)
        # SPREAD: one actor per Ray node before any node gets a second, so a multi-machine
        # cluster shares the work instead of packing the pool onto the head
        self.actors = [actor_cls.options(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD").remote(
            i, resident_cap, None if spill_dir is None else f"{spill_dir}/host{i}", device, threads)
            for i in range(workers)]
        self.device = device
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self._placed(ray.get([a.stats.remote() for a in self.actors]))  # waits until every actor is up

    async def call(self, host: int, method: str, *args: Any) -> Any:
        return await getattr(self.actors[host], method).remote(*args)

    def call_sync(self, host: int, method: str, *args: Any) -> Any:
        return self._ray.get(getattr(self.actors[host], method).remote(*args))

    def map_unordered(self, fn: Callable[..., Any], jobs: Iterable[tuple[tuple, dict]]) -> Iterator[Any]:
        """``ray.util.ActorPool.map_unordered``: each idle actor takes the next job."""
        from ray.util import ActorPool

        pool = ActorPool([self.actors[i] for i in self.alive()])
        return pool.map_unordered(lambda a, job: a.run_job.remote(fn, job[0], job[1]), list(jobs))

    def _stats(self, host: int) -> dict[str, Any]:
        """A worker whose actor died since its last call (its raylet was killed) is lost, not fatal."""
        try:
            return self._ray.get(self.actors[host].stats.remote(), timeout=30)
        except Exception as e:  # ActorDiedError / ActorUnavailableError / GetTimeoutError
            return {**self.lose(host, _error_line(e)), "lost": True}

    def _release(self, host: int) -> None:
        try:  # a worker that stopped answering must not come back and act on its old nodes
            self._ray.kill(self.actors[host])
        except Exception:  # already gone with its node
            pass

    def shutdown(self) -> None:
        alive = [self.actors[i] for i in self.alive()]
        orphaned = [r["spill_dir"] for r in self.lost.values() if r["own_spill_dir"]]
        refs = [a.close.remote() for a in alive]
        if alive and orphaned:  # a survivor removes the temporary spill folders of lost workers it can see
            refs.append(alive[0].run_job.remote(_remove_folders, (orphaned,), {}))
        try:
            self._ray.get(refs, timeout=30)
        except Exception:  # an actor that died since its last call has nothing to clean up
            pass
        for a in alive:
            self._ray.kill(a)
        if self._started:
            self._ray.shutdown()


#: HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server
#: (Ray's GCS and its client server both are) answers with a SETTINGS frame of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast with one line when a Ray address (GCS ``HOST:PORT`` or ``ray://HOST:PORT``) does
    not answer as a gRPC server within ``timeout_s`` (nothing listening, a dropped route, or another
    service on that port); ``ray.init`` itself would retry for minutes."""
    import socket

    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EdgeganError("engine.ray_address", f"{address!r} is not HOST:PORT or ray://HOST:PORT",
                           "pass e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001")
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:  # the server's first frame header: type byte 3 is 4 (SETTINGS)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError as e:
        raise EdgeganError("engine.ray_address", f"cannot reach Ray at {address} within {timeout_s:g} s ({e})",
                           "start the head with `ray start --head` there, or check host, port and firewall")
    if len(head) < 9 or head[3] != 4:
        raise EdgeganError("engine.ray_address", f"{address} does not answer as a Ray (gRPC) server",
                           "pass the head's GCS port (ray start --port, 6379) or its client port (ray://…:10001)")


def make_pool(backend: str, workers: int = 0, resident_cap: int = 512, num_cpus: float = 1.0,
              num_gpus: float = 0.0, address: str | None = None, device: str = "cpu",
              spill_dir: str | None = None, connect_timeout_s: float = 30.0) -> InprocPool | RayPool:
    """The pool for ``backend`` (``inproc`` | ``ray``); ``workers`` 0 sizes it by the machine."""
    if backend == "inproc":
        return InprocPool(workers or 1, resident_cap, device, spill_dir)
    if backend == "ray":
        return RayPool(workers, resident_cap, num_cpus, num_gpus, address, spill_dir,
                       connect_timeout_s=connect_timeout_s)
    raise EdgeganError("backend", f"unknown backend {backend!r}", "choose inproc or ray")


# ---------------------------------------------------------------------- the feedback link
@dataclass
class VirtualNodes:
    """What re-creates virtual TDGAN nodes on another worker: the TDGAN config, each node's private
    data and its scheduled crash step."""

    cfg: TDGANConfig
    data: dict[str, TensorData]
    crashes: dict[str, int]


class SimLink:
    """A :class:`~edgegan.runtime.roles.FeedbackLink` over a pool of virtual nodes that follows a
    :class:`Schedule`.

    Step (tick) ``t`` of the schedule is one generator step. Before step ``t`` the link applies
    ``schedule.events_at(t)`` through ``server.connected`` / ``server.disconnected``; a tick where
    nobody is online runs no generator step (recorded as idle, like a cloud waiting for nodes).
    A node that fails during its step (crash, dead worker) is dropped like a closed stream.

    A worker whose call fails or times out is lost (its Ray node died): every node it hosted leaves
    at once, as crashed, and is re-created on the surviving worker with the fewest nodes when the
    schedule next lets it join (:meth:`NodeHost.adopt_tdgan_nodes`: from its spill file where the
    survivor can read it, else with a fresh D_k); ``pool.lost`` records what happened.

    ``on_step(row)`` receives one dict per tick (``kind`` ``step`` or ``idle``) once its
    generator step is applied.
    """

    def __init__(self, server: TDGANServer, pool: InprocPool | RayPool, host_of: dict[str, int],
                 infos: dict[str, NodeInfo], schedule: Schedule, on_step: Callable[[dict[str, Any]], None],
                 nodes: VirtualNodes) -> None:
        self.server = server
        self.pool = pool
        self.host_of = host_of
        self.hosted = Counter(host_of.values())
        self.nodes = nodes
        self.schedule = schedule
        self.on_step = on_step
        self.connected: set[str] = set()
        self.orphans: dict[str, int] = {}  # node -> the lost worker that hosted it, until re-created
        self.tick = 0
        self.done: tuple[int, str] | None = None
        self._row: dict[str, Any] | None = None
        self._idle: list[dict[str, Any]] = []
        self.exchange_s = 0.0
        self.activations = 0
        for info in infos.values():
            server.register(info)

    def start(self) -> None:
        self._advance(0)

    def _advance(self, t: int) -> None:
        """Apply membership for tick ``t`` (and skip idle ticks after it)."""
        total = self.schedule.total_steps
        while t < total:
            for ev in self.schedule.events_at(t):
                if ev.kind == "leave" and ev.node_id in self.connected:
                    self.connected.discard(ev.node_id)
                    self.server.disconnected(ev.node_id)
                elif ev.kind == "join" and ev.node_id not in self.connected:
                    if ev.node_id in self.orphans:
                        self._rehost(ev.node_id, t)
                    self.connected.add(ev.node_id)
                    self.server.connected(ev.node_id)
            if self.connected:
                break
            self._idle.append({"kind": "idle", "tick": t, "step": self.server.tdgan.step, "online": []})
            t += 1
        self.tick = t

    def _lose(self, host: int, why: str, tick: int) -> None:
        """Worker ``host`` is gone: its nodes become orphans; the connected ones leave now."""
        mine = sorted(k for k, h in self.host_of.items() if h == host)
        record = self.pool.lose(host, why)
        record.update(tick=tick, step=self.server.tdgan.step, nodes=len(mine),
                      online=sorted(set(mine) & self.connected), recreated={})
        log.warning("worker %d lost at tick %d (%s): its %d node(s) leave and are re-created on a surviving "
                    "worker when they next join", host, tick, why, len(mine))
        require(bool(self.pool.alive()), "engine.workers",
                f"every pool worker is lost (the last: worker {host}, {why})",
                "restart the Ray nodes (`ray start`) and run the scenario again")
        for node_id in mine:
            self.orphans[node_id] = host
            self.hosted[host] -= 1
            if node_id in self.connected:
                self.connected.discard(node_id)
                self.server.disconnected(node_id)

    def _rehost(self, node_id: str, tick: int) -> None:
        """Re-create an orphan on the surviving worker hosting the fewest nodes."""
        while True:
            to = min(self.pool.alive(), key=lambda h: (self.hosted[h], h))
            lost = self.pool.lost[self.orphans[node_id]]
            crash = {node_id: self.nodes.crashes[node_id]} if node_id in self.nodes.crashes else {}
            try:
                how = self.pool.call_sync(to, "adopt_tdgan_nodes", self.nodes.cfg,
                                          [(node_id, self.nodes.data[node_id])], crash, lost["spill_dir"])
                break
            except EdgeganError:
                raise
            except Exception as e:  # the survivor died too
                self._lose(to, _error_line(e), tick)
        del self.orphans[node_id]
        self.host_of[node_id] = to
        self.hosted[to] += 1
        lost["recreated"][node_id] = {"worker": to, "tick": tick, "state": how[node_id]}
        log.info("node %s re-created on worker %d (%s state)", node_id, to, how[node_id])

    def _complete(self) -> None:
        if self._row is not None:
            stats = self.server.history[-1] if self.server.history else {}
            self._row.update({k: v for k, v in stats.items() if k not in ("step",)})
            row, self._row = self._row, None
            self.on_step(row)
        for row in self._idle:
            self.on_step(row)
        self._idle = []

    async def exchange(self, requests: Sequence[FeedbackRequest],
                       timeout_s: float) -> dict[str, FeedbackReply | NodeFailure]:
        self._complete()
        t0 = time.perf_counter()
        tick = self.tick
        groups: dict[int, list[FeedbackRequest]] = {}
        for req in requests:
            groups.setdefault(self.host_of[req.node_id], []).append(req)
        tasks = {h: asyncio.ensure_future(self.pool.call(h, "feedback", FeedbackBatch.of(reqs)))
                 for h, reqs in groups.items()}
        done, _ = await asyncio.wait(tasks.values(), timeout=timeout_s)
        out: dict[str, FeedbackReply | NodeFailure] = {}
        for h, task in tasks.items():
            reqs = groups[h]
            if task in done and task.exception() is None:
                for req, ans in zip(reqs, task.result()):
                    out[req.node_id] = ans
            else:
                why = f"timed out after {timeout_s:g} s" if task not in done else _error_line(task.exception())
                if task not in done:
                    task.cancel()
                for req in reqs:
                    out[req.node_id] = NodeFailure(FailureReason.WORKER_LOST, why)
                self._lose(h, why, tick)
        failed = sorted(k for k, v in out.items() if isinstance(v, NodeFailure))
        for node_id in failed:  # a crashed node, or one of a lost worker, may rejoin in a later window
            if node_id in self.connected:
                self.connected.discard(node_id)
                self.server.disconnected(node_id)
        m = self.server.metrics
        sent = sum(r.fake.numel() * 4 + r.labels.numel() * 8 for r in requests)
        got = sum(a.nbytes() for a in out.values() if isinstance(a, FeedbackReply))
        m.bytes_sent.inc(sent)
        m.bytes_received.inc(got)
        dt = time.perf_counter() - t0
        for _ in requests:
            m.roundtrip.observe(dt)
        self.exchange_s += dt
        self.activations += len(requests)
        losses = {kind: [a.stats[kind] for a in out.values() if isinstance(a, FeedbackReply) and kind in a.stats]
                  for kind in ("d_loss", "g_loss")}
        self._row = {"kind": "step", "tick": tick, "step": requests[0].step if requests else self.server.tdgan.step,
                     "online": sorted(r.node_id for r in requests), "failed": failed,
                     "exchange_s": dt,
                     **{f"{k}_mean": (sum(v) / len(v) if v else None) for k, v in losses.items()}}
        self._advance(tick + 1)
        return out

    def drop(self, node_id: str, failure: NodeFailure) -> None:
        if node_id in self.connected:
            self.connected.discard(node_id)
            self.server.disconnected(node_id)

    async def finish(self, step: int, reason: str) -> None:
        self._complete()
        self.done = (step, reason)
