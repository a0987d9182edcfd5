"""One pool worker: many virtual TDGAN edges (seed 003) kept as rows of packed state
(:class:`~edgegan.tdgan.edge.PackedEdges`), at most ``resident_cap`` in memory, the least recently
used beyond that parked in the worker's :class:`~edgegan.sim.spill.SpillFile`; plus stateless jobs
(source pre-training, Stage II methods, grid summaries) run on any worker."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.runtime.roles import NodeFailure
from edgegan.sim.batches import FeedbackBatch, ReplyBatch
from edgegan.sim.spill import SpillFile
from edgegan.tdgan.config import TDGANConfig
from edgegan.tdgan.edge import PackedEdges, class_pools
from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest, NodeInfo

#: Virtual nodes whose feedback one vectorised pass computes (live together, above ``resident_cap`` if need be).
FEEDBACK_GROUP_NODES = 256
#: Where a worker runs: ``{"ray_node": id or None, "gpu_ids": [...]}``.
Placement = Callable[[], dict[str, Any]]


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


def in_this_process() -> dict[str, Any]:
    """The :data:`Placement` of a worker that is no Ray actor."""
    return {"ray_node": None, "gpu_ids": []}


class NodeHost:
    """One pool worker hosting many virtual nodes (plain object; a Ray pool wraps it in an actor).

    A node's state (D_k, Adam, RNG: :class:`~edgegan.tdgan.edge.PackedEdges` rows) lives in a row of an
    in-memory block while resident (at most ``resident_cap`` rows, least recently used first out) and
    otherwise in its slot of the worker's :class:`~edgegan.sim.spill.SpillFile`.

    Parameters
    ----------
    index : the worker's index in the pool.
    resident_cap : virtual TDGAN nodes kept in memory; the least recently used beyond are spilled.
    spill_dir : folder for the spill file (a temporary folder when None).
    device : where this worker's models run.
    threads : torch intra-op threads of this worker (None: leave as is).
    placement : where this worker runs, reported by :meth:`stats` (default: in this process).
    """

    def __init__(self, index: int, resident_cap: int = 512, spill_dir: str | None = None,
                 device: str = "cpu", threads: int | None = None, placement: Placement = in_this_process) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.index = index
        self.cap = int(resident_cap)
        self.device = torch.device(device)
        self.placement = placement
        self._own_spill = spill_dir is None
        self.spill_dir = Path(spill_dir or tempfile.mkdtemp(prefix=f"edgegan-host{index}-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.spill = SpillFile(self.spill_dir, f"worker {index}")
        self._data: dict[str, TensorData] = {}
        self._pools: dict[str, dict[int, torch.Tensor]] = {}  # per node: indices of each class it holds
        self._crash: dict[str, int] = {}  # node -> the step at which it crashes
        self._packed: PackedEdges | None = None
        self._live = torch.empty(0, 0, dtype=torch.int64)  # rows of resident nodes (int64: fast row copies)
        self._rows = self._block = self._live.view(torch.uint8)  # the rows' packed bytes; a group's rows
        self._free_rows: list[int] = []
        self._resident: OrderedDict[str, int] = OrderedDict()  # node -> row, least recently used first
        self.counters = {"activations": 0, "created": 0, "restored": 0, "spilled": 0, "spill_bytes": 0, "crashed": 0,
                         "activate_s": 0.0, "park_s": 0.0, "compute_s": 0.0, "jobs": 0, "job_s": 0.0}

    @property
    def edges(self) -> PackedEdges:
        """The packed D_k of this worker's nodes (built with the first hosted node)."""
        if self._packed is None:
            raise EdgeganError("nodes", f"worker {self.index} hosts no TDGAN node yet")
        return self._packed

    # ------------------------------------------------------------------ virtual TDGAN edges
    def add_tdgan_nodes(self, cfg: TDGANConfig, nodes: Sequence[tuple[str, TensorData]],
                        crashes: dict[str, int] | None = None) -> list[NodeInfo]:
        """Host ``nodes`` (id, private data); their D_k are built on first activation."""
        for node_id, data in nodes:
            require(node_id not in self._data, "nodes", f"node '{node_id}' is hosted twice")
            self._data[node_id] = data
            self._pools[node_id] = class_pools(data)
        self.spill.add([node_id for node_id, _ in nodes])
        if self._packed is None and nodes:
            self._packed = PackedEdges(cfg, nodes[0][1], self.device)
            self.spill.row_bytes = self._packed.nbytes
            words = -(-self._packed.nbytes // 8)
            self._live = torch.zeros(self.cap + FEEDBACK_GROUP_NODES, words, dtype=torch.int64)
            self._rows = self._live.view(torch.uint8)[:, :self._packed.nbytes]
            self._block = torch.empty(FEEDBACK_GROUP_NODES, words, dtype=torch.int64)
            self._free_rows = list(range(len(self._live)))[::-1]
        self._crash.update(crashes or {})
        return [NodeInfo.of(k, d) for k, d in nodes]

    def adopt_tdgan_nodes(self, cfg: TDGANConfig, nodes: Sequence[tuple[str, TensorData]],
                          crashes: dict[str, int], spilled_from: str) -> dict[str, str]:
        """Host ``nodes`` of a lost worker: a node whose state is readable in its slot of that worker's
        spill file (folder ``spilled_from``) continues from it (``"spilled"``); the others start with a
        fresh D_k (``"fresh"``: their state lived only in the lost worker's memory or on another machine)."""
        self.add_tdgan_nodes(cfg, nodes, crashes)
        self.spill.adopt(Path(spilled_from), [node_id for node_id, _ in nodes])
        return {node_id: "spilled" if node_id in self.spill.parked else "fresh" for node_id, _ in nodes}

    def _activate_many(self, node_ids: Sequence[str]) -> list[int]:
        """The rows of ``node_ids`` in the live block: resident, restored from their slot, or new."""
        rows = []
        for node_id in node_ids:
            row = self._resident.get(node_id)
            if row is not None:
                self._resident.move_to_end(node_id)
                rows.append(row)
                continue
            require(node_id in self._data, "node_id", f"node '{node_id}' is not hosted by worker {self.index}")
            row = self._free_rows.pop()
            if node_id in self.spill.parked:
                self.spill.restore(node_id, self._rows[row].numpy())
                self.counters["restored"] += 1
            else:
                self._rows[row] = self.edges.fresh(node_id, self._data[node_id])
                self.counters["created"] += 1
            self._resident[node_id] = row
            rows.append(row)
        return rows

    def _park(self) -> None:
        """Spill least recently used nodes until at most ``cap`` are resident."""
        while len(self._resident) > self.cap:
            node_id, row = self._resident.popitem(last=False)
            self.counters["spill_bytes"] += self.spill.park(node_id, self._rows[row].numpy())
            self._free_rows.append(row)
            self.counters["spilled"] += 1

    def feedback(self, requests: Sequence[FeedbackRequest]) -> ReplyBatch:
        """Answer each request with its node's feedback (:meth:`~edgegan.tdgan.edge.PackedEdges.feedback`:
        the same maths as :meth:`TDGANEdge.feedback` per node, vectorised over groups of up to
        ``FEEDBACK_GROUP_NODES`` nodes, parked back to ``resident_cap`` after each group); a node
        scheduled to crash at this step answers :class:`NodeFailure`
        ``disconnected`` and its state is dropped. Requests and replies travel stacked
        (:class:`FeedbackBatch`, :class:`ReplyBatch`)."""
        requests = FeedbackBatch.of(requests).to(self.device)
        out: dict[int, FeedbackReply | NodeFailure] = {}  # request index -> its answer
        todo = []
        for i, (node_id, step) in enumerate(zip(requests.node_ids, requests.steps)):
            if self._crash.get(node_id) == step:
                self._drop(node_id)
                out[i] = NodeFailure(FailureReason.DISCONNECTED, f"node '{node_id}' left during step {step}")
            else:
                todo.append(i)
        for start in range(0, len(todo), FEEDBACK_GROUP_NODES):
            chunk = todo[start:start + FEEDBACK_GROUP_NODES]
            for i, reply in zip(chunk, self._feedback_group(requests, chunk)):
                out[i] = reply
        return ReplyBatch([out[i] for i in range(len(requests))])

    def _feedback_group(self, requests: FeedbackBatch, chunk: list[int]) -> list[FeedbackReply]:
        """One vectorised pass over the nodes of requests ``chunk`` (at most ``FEEDBACK_GROUP_NODES``)."""
        c, edges = self.counters, self.edges
        ids = [requests.node_ids[i] for i in chunk]
        t0 = time.perf_counter()
        rows = torch.tensor(self._activate_many(ids))
        t1 = time.perf_counter()
        block = torch.index_select(self._live, 0, rows, out=self._block[:len(rows)])
        replies = edges.feedback(block.view(torch.uint8)[:, :edges.nbytes],
                                 [(k, self._data[k], self._pools[k]) for k in ids], [requests[i] for i in chunk])
        self._live.index_copy_(0, rows, block)
        t2 = time.perf_counter()
        self._park()
        t3 = time.perf_counter()
        c["activations"] += len(chunk)
        c["activate_s"] += t1 - t0
        c["compute_s"] += t2 - t1
        c["park_s"] += t3 - t2
        return replies

    def _drop(self, node_id: str) -> None:
        """A crashed node loses its state (it may rejoin later with a fresh D_k)."""
        self.counters["crashed"] += 1
        row = self._resident.pop(node_id, None)
        if row is not None:
            self._free_rows.append(row)
        if node_id in self.spill.parked:
            self.spill.forget(node_id)
        self._crash.pop(node_id, None)

    def stats(self) -> dict[str, Any]:
        """The counters, the nodes held, the peak memory and where this worker runs."""
        return {**self.counters, "index": self.index, "pid": os.getpid(), "resident": len(self._resident),
                "spilled_now": len(self.spill.parked), "nodes": len(self._data), "rss_peak_bytes": proc_memory_bytes(),
                **self.placement(), "device": str(self.device),
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
        self.spill.close()
        if self._own_spill:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


def remove_folders(host: NodeHost, folders: list[str]) -> None:
    """A job: remove ``folders`` (the temporary spill folders of lost workers)."""
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
