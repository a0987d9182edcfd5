"""The worker pool: a fixed set of :class:`~edgegan.sim.host.NodeHost` s, in this process
(:class:`InprocPool`) or as Ray actors (:class:`RayPool`, ``ray.util.ActorPool.map_unordered`` for
stateless jobs, direct calls to the owning actor for a node's feedback), with per-actor resources,
fractional GPUs included. A worker whose Ray node dies is lost, not fatal: the pool records it."""

from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Iterable, Iterator

from edgegan.errors import EdgeganError, FailureReason, require
from edgegan.sim.host import NodeHost, remove_folders
from edgegan.sim.ray_connect import init_ray

log = logging.getLogger("edgegan.sim")

#: Seconds to wait for a worker's counters or its clean-up before counting it as lost.
STATS_TIMEOUT_S = 30
#: Object store of a Ray started here.
OBJECT_STORE_BYTES = 256 << 20


def error_line(e: BaseException) -> str:
    """An exception as one line: ``Type: first line of the message``."""
    return f"{type(e).__name__}: {e}".splitlines()[0]


class WorkerLost(Exception):
    """Worker ``host`` died or stopped answering (:attr:`FailureReason.WORKER_LOST`)."""

    reason = FailureReason.WORKER_LOST

    def __init__(self, host: int, detail: str) -> None:
        super().__init__(detail)
        self.host = host
        self.detail = detail


class WorkerPool(abc.ABC):
    """What both pools share: where each worker runs (its first :meth:`NodeHost.stats`), the record
    of workers lost during the run (their Ray node died, or they stopped answering), and calls to a
    worker's :class:`NodeHost` methods by name."""

    backend: str

    def __init__(self, first_stats: list[dict[str, Any]], device: str) -> None:
        self.device = device
        self.placement = [{k: st[k] for k in ("ray_node", "spill_dir", "own_spill_dir")} for st in first_stats]
        self.lost: dict[int, dict[str, Any]] = {}

    @abc.abstractmethod
    async def call(self, host: int, method: str, *args: Any) -> Any:
        """``NodeHost.<method>(*args)`` on worker ``host``, awaited."""

    @abc.abstractmethod
    def call_sync(self, host: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """``NodeHost.<method>(*args)`` on worker ``host``; :class:`WorkerLost` when it is gone or
        gives no answer within ``timeout_s`` (None: no limit)."""

    @abc.abstractmethod
    def map_unordered(self, fn: Callable[..., Any], jobs: Iterable[tuple[tuple, dict]]) -> Iterator[Any]:
        """Run ``fn(host, *args, **kwargs)`` per job on the live workers; yields results as they finish."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Close every worker (and a Ray this pool started)."""

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
        """Make sure a lost worker can no longer act (nothing to do in this process)."""

    def stats(self) -> list[dict[str, Any]]:
        """Each worker's counters; a lost worker is ``{"index", "lost": True, "error", …}``."""
        return [{**self.lost[i], "lost": True} if i in self.lost else self._stats(i) for i in range(self.size)]

    def _stats(self, host: int) -> dict[str, Any]:
        try:
            return self.call_sync(host, "stats", timeout_s=STATS_TIMEOUT_S)
        except WorkerLost as e:  # it died since its last call (its Ray node was killed): lost, not fatal
            return {**self.lose(host, e.detail), "lost": True}


class InprocPool(WorkerPool):
    """``workers`` hosts in this process, called one after another."""

    backend = "inproc"

    def __init__(self, workers: int, resident_cap: int = 512, device: str = "cpu",
                 spill_dir: str | None = None) -> None:
        require(workers >= 1, "workers", f"must be >= 1, got {workers}")
        self.hosts = [NodeHost(i, resident_cap, None if spill_dir is None else f"{spill_dir}/host{i}", device)
                      for i in range(workers)]
        super().__init__([h.stats() for h in self.hosts], device)

    async def call(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.hosts[host], method)(*args)

    def call_sync(self, host: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return getattr(self.hosts[host], method)(*args)

    def map_unordered(self, fn: Callable[..., Any], jobs: Iterable[tuple[tuple, dict]]) -> Iterator[Any]:
        hosts = [self.hosts[i] for i in self.alive()]
        for i, (args, kwargs) in enumerate(jobs):
            yield hosts[i % len(hosts)].run_job(fn, args, kwargs)

    def shutdown(self) -> None:
        for h in self.hosts:
            h.close()


def ray_placement() -> dict[str, Any]:
    """Where a Ray actor runs: its cluster node and the GPUs Ray gave it (a :data:`~edgegan.sim.host.Placement`)."""
    import ray

    return {"ray_node": ray.get_runtime_context().get_node_id(), "gpu_ids": [int(i) for i in ray.get_gpu_ids()]}


class RayPool(WorkerPool):
    """``workers`` Ray actors, each a :class:`NodeHost` with ``num_cpus`` / ``num_gpus`` resources
    (``workers`` 0: as many as the cluster's CPUs, or GPU shares, allow).

    Joins ``address`` (``auto`` or ``ray://…``) when given, uses an already initialised Ray, or
    starts a local one sized to the machine (and shuts it down again in :meth:`shutdown`).
    """

    backend = "ray"

    def __init__(self, workers: int = 0, resident_cap: int = 512, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 address: str | None = None, spill_dir: str | None = None,
                 object_store_bytes: int = OBJECT_STORE_BYTES, connect_timeout_s: float = 30.0) -> None:
        try:
            import ray
            from ray.exceptions import GetTimeoutError, RayActorError, RayError
        except ImportError:  # pragma: no cover - ray is a dependency
            raise EdgeganError("backend", "ray is not installed", "pip install 'ray>=2.9' or use --backend inproc")
        self._ray = ray
        self._gone = (RayActorError, GetTimeoutError)  # what a call to a dead or hung actor raises
        self._any_error = RayError  # what any Ray call may raise
        self._started = init_ray(ray, address, connect_timeout_s, object_store_bytes)
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0.0))
        if num_gpus > 0 and gpus == 0:
            log.warning("nodes.resources.num_gpus=%s but the Ray cluster has no GPU: running on CPU", num_gpus)
            num_gpus = 0.0
        if workers <= 0:
            by_cpu = int(float(res.get("CPU", 1.0)) // num_cpus)
            workers = max(1, min(by_cpu, int(gpus // num_gpus) if num_gpus else by_cpu))
        device = "cuda" if num_gpus > 0 else "cpu"
        actor_cls = ray.remote(NodeHost)
        # SPREAD: one actor per Ray node before any node gets a second, so a multi-machine
        # cluster shares the work instead of packing the pool onto the head
        self.actors = [actor_cls.options(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD").remote(
            i, resident_cap, None if spill_dir is None else f"{spill_dir}/host{i}", device, max(1, int(num_cpus)),
            ray_placement) for i in range(workers)]
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        super().__init__(ray.get([a.stats.remote() for a in self.actors]), device)  # waits until every actor is up

    async def call(self, host: int, method: str, *args: Any) -> Any:
        return await getattr(self.actors[host], method).remote(*args)

    def call_sync(self, host: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        try:
            return self._ray.get(getattr(self.actors[host], method).remote(*args), timeout=timeout_s)
        except self._gone as e:
            raise WorkerLost(host, error_line(e)) from e

    def map_unordered(self, fn: Callable[..., Any], jobs: Iterable[tuple[tuple, dict]]) -> Iterator[Any]:
        """``ray.util.ActorPool.map_unordered``: each idle actor takes the next job."""
        from ray.util import ActorPool

        pool = ActorPool([self.actors[i] for i in self.alive()])
        return pool.map_unordered(lambda a, job: a.run_job.remote(fn, job[0], job[1]), list(jobs))

    def _release(self, host: int) -> None:
        try:  # a worker that stopped answering must not come back and act on its old nodes
            self._ray.kill(self.actors[host])
        except self._any_error:  # already gone with its node
            pass

    def shutdown(self) -> None:
        alive = [self.actors[i] for i in self.alive()]
        orphaned = [r["spill_dir"] for r in self.lost.values() if r["own_spill_dir"]]
        refs = [a.close.remote() for a in alive]
        if alive and orphaned:  # a survivor removes the temporary spill folders of lost workers it can see
            refs.append(alive[0].run_job.remote(remove_folders, (orphaned,), {}))
        try:
            self._ray.get(refs, timeout=STATS_TIMEOUT_S)
        except self._any_error:  # an actor that died since its last call has nothing to clean up
            pass
        for a in alive:
            self._ray.kill(a)
        if self._started:
            self._ray.shutdown()


def make_pool(backend: str, workers: int = 0, resident_cap: int = 512, num_cpus: float = 1.0,
              num_gpus: float = 0.0, address: str | None = None, device: str = "cpu",
              spill_dir: str | None = None, connect_timeout_s: float = 30.0) -> WorkerPool:
    """The pool for ``backend`` (``inproc`` | ``ray``); ``workers`` 0 sizes it by the machine."""
    if backend == "inproc":
        return InprocPool(workers or 1, resident_cap, device, spill_dir)
    if backend == "ray":
        return RayPool(workers, resident_cap, num_cpus, num_gpus, address, spill_dir,
                       connect_timeout_s=connect_timeout_s)
    raise EdgeganError("backend", f"unknown backend {backend!r}", "choose inproc or ray")
