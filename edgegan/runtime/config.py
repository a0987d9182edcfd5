"""Process configuration of a real cloud (``edgegan cloud --config FILE``), validated from YAML.

Example: ``configs/cloud.yaml``. Sizes are bytes, times seconds, ports TCP ports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from edgegan.config import check_fields
from edgegan.data.registry import DATASETS
from edgegan.errors import EdgeganError, require
from edgegan.gan.train import WGANConfig
from edgegan.runtime.guard import GuardConfig
from edgegan.tdgan.config import TDGANConfig

MiB = 1 << 20


@dataclass
class TLSConfig:
    """Server TLS: certificate chain + key (PEM); ``client_ca`` turns on client certificates."""

    cert: Optional[str] = field(default=None, metadata={"unit": "path to the server certificate chain (PEM)"})
    key: Optional[str] = field(default=None, metadata={"unit": "path to the server private key (PEM)"})
    client_ca: Optional[str] = field(default=None, metadata={
        "unit": "path to a CA (PEM); when set, edges must present a certificate it signed"})

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    def validate(self, prefix: str = "tls") -> None:
        require((self.cert is None) == (self.key is None), f"{prefix}.cert",
                "cert and key go together", "give both tls.cert and tls.key, or neither")
        require(self.client_ca is None or self.enabled, f"{prefix}.client_ca",
                "client certificates need server TLS", "set tls.cert and tls.key too")
        for name in ("cert", "key", "client_ca"):
            p = getattr(self, name)
            require(p is None or os.path.isfile(p), f"{prefix}.{name}", f"file '{p}' not found")


@dataclass
class CoalesceConfig:
    """Stage I in the cloud (seed 000, Alg. 1): wait for uploads, then compute the barycenter."""

    expected_uploads: int = field(default=2, metadata={"unit": "uploads (G_k, D_k, η_k) to wait for"})
    aggregator: str = field(default="recursive_w1", metadata={
        "unit": "recursive_w1 (seed 000 Alg. 1), win, nwb or weight_average (edgegan.barycenter.aggregate)"})
    steps_per_stage: int = field(default=200, metadata={"unit": "generator steps per recursive stage"})

    def validate(self, prefix: str = "coalesce") -> None:
        from edgegan.barycenter.aggregate import aggregator_name

        try:
            self.aggregator = aggregator_name(self.aggregator)
        except EdgeganError as e:
            raise EdgeganError(f"{prefix}.aggregator", e.problem, e.fix) from None
        check_fields(self, prefix, ("expected_uploads", "steps_per_stage"), 1)


@dataclass
class CloudConfig:
    """Everything a cloud process needs: network, security, limits, liveness, checkpoints, the run."""

    mode: Literal["tdgan", "coalesce"] = field(default="tdgan", metadata={"unit": "which pipeline this cloud runs"})
    listen: str = field(default="127.0.0.1:7600", metadata={"unit": "host:port of the gRPC server"})
    run_id: str = field(default="edgegan", metadata={"unit": "name of the run (kept across restarts)"})
    tokens: dict[str, str] = field(default_factory=dict, metadata={
        "unit": "node id → bearer token; 'env:VAR' reads the token from environment variable VAR"})
    allow_anonymous: bool = field(default=False, metadata={
        "unit": "with no tokens: accept any node id (isolated lab networks only)"})
    tls: TLSConfig = field(default_factory=TLSConfig)
    max_message_bytes: int = field(default=64 * MiB, metadata={
        "unit": "bytes per gRPC message the cloud sends (what it receives is bounded per RPC: guard)"})
    chunk_bytes: int = field(default=1 * MiB, metadata={"unit": "bytes per chunk of a model stream"})
    max_model_bytes: int = field(default=512 * MiB, metadata={"unit": "bytes of one model bundle upload"})
    heartbeat_interval_s: float = field(default=2.0, metadata={"unit": "seconds between heartbeats"})
    heartbeat_timeout_s: float = field(default=10.0, metadata={"unit": "seconds of silence before a node is dropped"})
    feedback_timeout_s: float = field(default=30.0, metadata={
        "unit": "seconds a node may take to answer one fake batch before it is dropped"})
    stream_drain_s: float = field(default=1.0, metadata={
        "unit": "seconds the cloud waits, when it ends a Session, for the edge to half-close (after Closing)"})
    rejoin_grace_s: float = field(default=20.0, metadata={
        "unit": "after a restart, seconds to wait for nodes that were online to reconnect"})
    checkpoint_dir: str = field(default="runs/cloud", metadata={"unit": "folder of cloud.pt and uploads"})
    checkpoint_every: int = field(default=50, metadata={"unit": "generator steps between checkpoints"})
    metrics_port: Optional[int] = field(default=None, metadata={
        "unit": "TCP port of /metrics (0: any free port, logged; none: no endpoint)"})
    metrics_addr: str = field(default="0.0.0.0", metadata={"unit": "address the /metrics endpoint binds"})
    image_shape: list[int] = field(default_factory=lambda: [1, 8, 8], metadata={"unit": "(C, H, W) of the data"})
    num_classes: int = field(default=10, metadata={"unit": "classes of the conditional generator"})
    steps: int = field(default=1000, metadata={"unit": "TDGAN generator steps of the run"})
    start_nodes: int = field(default=1, metadata={"unit": "online nodes needed before the first step"})
    min_nodes: int = field(default=1, metadata={"unit": "online nodes needed for any later step"})
    exit_when_done: bool = field(default=True, metadata={"unit": "exit once the run is finished"})
    linger_s: float = field(default=2.0, metadata={
        "unit": "after the run ends, seconds to keep serving until every registered node has been told"})
    device: str = field(default="auto", metadata={"unit": "cpu, cuda, cuda:N or auto"})
    malloc_arenas: int = field(default=2, metadata={
        "unit": "glibc malloc arenas of the cloud process (0: glibc's default, 8 per core): a long-running server's "
                "threads (event loop, compute, parsing, gRPC) otherwise each fragment an arena of their own"})
    malloc_trim_every_s: float = field(default=60.0, metadata={
        "unit": "seconds between glibc malloc_trim calls of the cloud process, which hand freed heap pages back "
                "to the OS (0: never)"})
    schedule: Optional[str] = field(default=None, metadata={
        "unit": "tdgan: JSON schedule (tasks and join/leave events by tick, as `edgegan simulate --backend grpc` "
                "writes it); nodes are then members exactly when it has them online and their stream is open"})
    join_wait_s: float = field(default=60.0, metadata={
        "unit": "with schedule: seconds a tick waits for the stream of a node it brings online"})
    snapshot_every: int = field(default=0, metadata={
        "unit": "with schedule: generator steps between G snapshots in checkpoint_dir/snapshots (0: only the last)"})
    eval_dataset: Optional[str] = field(default="auto", metadata={
        "unit": "data set the cloud reads to score G (feature-FID, class accuracy); auto: digits for 1x8x8 "
                "images of 10 classes; none: no evaluation"})
    data_root: Optional[str] = field(default=None, metadata={"unit": "folder of torchvision-format files"})
    eval_every: int = field(default=500, metadata={"unit": "generator steps between evaluations"})
    log_every: int = field(default=50, metadata={"unit": "generator steps between progress lines in the log"})
    eval_samples_per_class: int = field(default=200, metadata={"unit": "conditional samples per class"})
    training: WGANConfig = field(default_factory=WGANConfig, metadata={
        "unit": "coalesce: settings of the edges' Stage I pre-training / Stage II adaptation and of the barycenter"})
    tdgan: TDGANConfig = field(default_factory=TDGANConfig)
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self, prefix: str = "") -> None:
        p = f"{prefix}." if prefix else ""
        host, _, port = self.listen.rpartition(":")
        require(bool(host) and port.isdigit(), f"{p}listen", f"expected host:port, got {self.listen!r}")
        require(bool(self.tokens) or self.allow_anonymous, f"{p}tokens", "no node tokens configured",
                "list node id → token under tokens, or set allow_anonymous: true on an isolated network")
        for nid, tok in self.tokens.items():
            require(bool(nid) and bool(self.token_of(nid)), f"{p}tokens.{nid}", "empty node id or token")
        require(self.max_message_bytes >= 1 * MiB, f"{p}max_message_bytes", f"{self.max_message_bytes} is < 1 MiB")
        require(0 < self.chunk_bytes <= self.max_message_bytes // 2, f"{p}chunk_bytes",
                f"must be in (0, max_message_bytes/2], got {self.chunk_bytes}")
        require(self.max_model_bytes > 0, f"{p}max_model_bytes", f"must be > 0, got {self.max_model_bytes}")
        require(0 < self.heartbeat_interval_s < self.heartbeat_timeout_s, f"{p}heartbeat_interval_s",
                "need 0 < heartbeat_interval_s < heartbeat_timeout_s")
        check_fields(self, prefix, ("feedback_timeout_s", "stream_drain_s"), 0, strict_low=True)
        check_fields(self, prefix, ("rejoin_grace_s", "join_wait_s", "snapshot_every", "malloc_arenas",
                                      "malloc_trim_every_s"), 0)
        if self.schedule is not None:
            require(self.mode == "tdgan", f"{p}schedule", "a schedule drives a tdgan run", "set mode: tdgan")
            require(os.path.isfile(self.schedule), f"{p}schedule", f"no file '{self.schedule}'",
                    "give the path of a schedule JSON (tasks, events)")
        require(self.metrics_port is None or 0 <= self.metrics_port < 65536, f"{p}metrics_port", "not a TCP port")
        require(len(self.image_shape) == 3 and all(d >= 1 for d in self.image_shape), f"{p}image_shape",
                f"expected [C, H, W], got {self.image_shape}")
        check_fields(self, prefix, ("checkpoint_every", "num_classes", "steps", "eval_every", "log_every",
                                    "eval_samples_per_class", "min_nodes", "start_nodes"), 1)
        require(self.eval_dataset in (None, "auto", *DATASETS), f"{p}eval_dataset",
                f"unknown data set {self.eval_dataset!r}", "choose auto, null or one of " + ", ".join(DATASETS))
        self.tls.validate(f"{p}tls")
        self.training.validate(f"{p}training")
        self.tdgan.validate(f"{p}tdgan")
        self.coalesce.validate(f"{p}coalesce")
        self.guard.validate(f"{p}guard")

    def token_of(self, node_id: str) -> str:
        """The bearer token of ``node_id`` (resolving ``env:VAR``)."""
        tok = self.tokens[node_id]
        if tok.startswith("env:"):
            val = os.environ.get(tok[4:], "")
            if not val:
                raise EdgeganError(f"tokens.{node_id}", f"environment variable {tok[4:]} is empty or unset")
            return val
        return tok
