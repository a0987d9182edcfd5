"""The Stage I cloud role (seed 000, Alg. 1): collect the source nodes' uploads, compute their
barycenter once enough arrived, serve it for Stage II. No transport inside (DESIGN.md, Runtime)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import torch
from torch import nn

from edgegan.barycenter.aggregate import aggregate
from edgegan.checkpoint import atomic_write_bytes
from edgegan.errors import require
from edgegan.monitor.metrics import Metrics
from edgegan.nn import same_architecture
from edgegan.runtime.cloud_base import CloudServer, FeedbackLink, wait_any
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.tensor_codec import decode_bundle, encode_bundle

log = logging.getLogger("edgegan.runtime")


class CoalesceServer(CloudServer):
    """Stage I in the cloud (seed 000, Alg. 1): collect the nodes' (G_k, D_k, η_k), compute
    their barycenter with ``cfg.training``, serve it for Stage II.

    ``uploads/<node>.bundle`` (each upload, verified bytes, written atomically as it arrives)
    and ``barycenter.bundle`` live in ``cfg.checkpoint_dir``; a restarted cloud serves them.
    """

    BUNDLES = ("barycenter",)

    def __init__(self, cfg: CloudConfig, metrics: Metrics | None = None, device: torch.device | None = None) -> None:
        super().__init__(cfg, metrics, device)
        self.uploads: dict[str, tuple[dict[str, nn.Module], dict[str, float]]] = {}
        self._barycenter: bytes | None = None
        self._ready = asyncio.Event()
        for path in sorted((self.dir / "uploads").glob("*.bundle")):
            self.uploads[path.stem] = decode_bundle(path.read_bytes(), self.device)
        bary = self.dir / "barycenter.bundle"
        if bary.is_file():
            self._barycenter = bary.read_bytes()
            self._ready.set()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "uploads": sorted(self.uploads), "barycenter_ready": self._barycenter is not None}

    def add_upload(self, node_id: str, blob: bytes) -> tuple[int, int]:
        """Accept node ``node_id``'s verified bundle (``generator``, ``critic``, scalar ``eta``),
        persist it atomically; returns (uploads held, uploads expected)."""
        models, scalars = decode_bundle(blob, self.device)
        require(set(models) == {"generator", "critic"}, "bundle.models",
                f"got {sorted(models)}", "upload exactly 'generator' and 'critic'")
        eta = scalars.get("eta", float("nan"))
        require(math.isfinite(eta) and eta > 0, "bundle.scalars.eta", f"must be a finite radius > 0, got {eta}")
        for other, (m, _) in self.uploads.items():
            if other != node_id:
                require(same_architecture(m["generator"], models["generator"]), "bundle.models.generator",
                        f"node '{node_id}' uploaded a different architecture than '{other}'",
                        "every node must pre-train the same architecture")
                break
        atomic_write_bytes(self.dir / "uploads" / f"{node_id}.bundle", blob)
        self.uploads[node_id] = (models, scalars)
        self.metrics.uploads.inc()
        self._changed.set()
        return len(self.uploads), self.cfg.coalesce.expected_uploads

    def _barycenter_now(self) -> bytes:
        """Stage I in the cloud: the W1 barycenter of the uploads (seed 000, Alg. 1)."""
        ids = sorted(self.uploads)
        gens = [self.uploads[k][0]["generator"] for k in ids]
        crits = [self.uploads[k][0]["critic"] for k in ids]
        eta = [self.uploads[k][1]["eta"] for k in ids]
        c = self.cfg.coalesce
        res = aggregate(c.aggregator, gens, crits, eta, c.steps_per_stage, wgan=self.cfg.training,
                        checkpoint_dir=self.dir / "stage1")
        models = {"generator": res.generator, "critic_prev": res.critic_prev, "critic_new": res.critic_new}
        blob = encode_bundle(models, {"nodes": float(len(ids))})
        atomic_write_bytes(self.dir / "barycenter.bundle", blob)
        if self.eval_dataset is not None:
            self._evaluate(res.generator)
        return blob

    async def run(self, link: FeedbackLink | None, stop: asyncio.Event) -> str:
        """Wait for ``coalesce.expected_uploads`` uploads, compute the barycenter, then serve it
        until ``stop`` (``"finished"``); ``"shutdown"`` when stopped before."""
        while self._barycenter is None and not stop.is_set():
            if len(self.uploads) >= self.cfg.coalesce.expected_uploads:
                log.info("stage I: barycenter of %s", ", ".join(sorted(self.uploads)))
                with self.metrics.aggregation_seconds.time():
                    self._barycenter = await self.compute(self._barycenter_now)
                self._ready.set()
                break
            self._changed.clear()
            await wait_any(self._changed, stop, timeout=self.cfg.heartbeat_interval_s)
        if self._barycenter is None:
            return "shutdown"
        self.finished = True
        await stop.wait()  # keep serving downloads until told to stop
        return "finished"

    async def bundle(self, name: str, wait_s: float = 0.0) -> bytes | None:
        self._check_bundle(name)
        if not self._ready.is_set() and wait_s > 0:
            await wait_any(self._ready, self.stopping, timeout=wait_s)
        return self._barycenter
