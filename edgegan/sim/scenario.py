"""Simulation scenarios: YAML validated into dataclasses (``edgegan simulate --scenario``).

A scenario names the data and how it is split over nodes, which pipeline(s) run
(``coalescence`` — seed 000 two-stage adaptive coalescence; ``tdgan`` — seed 003 temporary
discriminators; ``grid`` — seed 002 amortized grid barycenters), the Stage I aggregator, who is
online when (explicit windows, seeded churn or a CSV trace), training budgets, evaluation,
outputs and the engine. Unknown keys and bad values are one-line :class:`EdgeganError` s naming
the field. ``seed`` drives every RNG of the run (partition, churn, model init, training).

Built-in scenarios ship inside the package (``edgegan/sim/scenarios/*.yaml``) so they load
after a non-editable install; ``configs/scenarios/`` in the source tree holds identical copies
(a test checks they match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

from edgegan.barycenter.aggregate import aggregator_name
from edgegan.barycenter.grid import AGGREGATORS as GRID_AGGREGATORS
from edgegan.barycenter.nwb import NWBConfig
from edgegan.barycenter.win import WINConfig
from edgegan.baselines.coalescence import METHODS
from edgegan.config import check_fields, from_dict, read_yaml
from edgegan.data.registry import DATASETS as IMAGE_DATASETS
from edgegan.errors import EdgeganError, require
from edgegan.gan.train import WGANConfig
from edgegan.nn.factory import arch_field, check_arch
from edgegan.tdgan.config import TDGANConfig

PIPELINES = ("coalescence", "tdgan", "grid")


@dataclass
class DataSpec:
    """What data the nodes hold and how it is split."""

    dataset: str = field(default="digits", metadata={
        "unit": ", ".join(IMAGE_DATASETS) + " (images) or gaussian (vectors)"})
    data_root: Optional[str] = field(default=None, metadata={"unit": "folder of torchvision-format files"})
    partition: Literal["classes", "dirichlet", "iid"] = field(default="classes", metadata={
        "unit": "classes: node k holds classes[k mod len]; dirichlet: class proportions ~ Dir(alpha); iid"})
    classes: list[list[int]] = field(default_factory=lambda: [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]], metadata={
        "unit": "class lists per node (cycled when shorter than nodes.count)"})
    disjoint: bool = field(default=True, metadata={
        "unit": "a sample goes to at most one node (false: nodes listing a class share its samples)"})
    alpha: float = field(default=0.5, metadata={"unit": "Dirichlet concentration (partition: dirichlet)"})
    samples_per_node: Optional[int] = field(default=None, metadata={"unit": "cap on samples per node"})
    dim: int = field(default=2, metadata={"unit": "dimension of the gaussian data set"})
    gaussian_samples: int = field(default=2000, metadata={"unit": "samples per node (gaussian)"})
    grid_size: int = field(default=64, metadata={"unit": "grid cells per side (grid pipeline)"})

    def validate(self, prefix: str = "data") -> None:
        ok = self.dataset in IMAGE_DATASETS + ("gaussian",)
        require(ok, f"{prefix}.dataset", f"unknown data set {self.dataset!r}",
                "choose one of " + ", ".join(IMAGE_DATASETS + ("gaussian",)))
        for i, cl in enumerate(self.classes):
            require(len(cl) > 0, f"{prefix}.classes[{i}]", "is empty", "give every node at least one class")
        check_fields(self, prefix, ("alpha",), 0, strict_low=True)
        if self.samples_per_node is not None:
            check_fields(self, prefix, ("samples_per_node",), 1)
        check_fields(self, prefix, ("dim",), 1)
        check_fields(self, prefix, ("gaussian_samples",), 2)
        check_fields(self, prefix, ("grid_size",), 8)


@dataclass
class ResourceSpec:
    """Ray resources of each pool actor (its virtual nodes share them)."""

    num_cpus: float = field(default=1.0, metadata={"unit": "CPUs per actor"})
    num_gpus: float = field(default=0.0, metadata={
        "unit": "GPU share per actor, e.g. 0.25 = four actors per GPU; ignored (CPU) when CUDA is absent"})

    def validate(self, prefix: str = "nodes.resources") -> None:
        check_fields(self, prefix, ("num_cpus",), 0, strict_low=True)
        check_fields(self, prefix, ("num_gpus",), 0)


@dataclass
class NodesSpec:
    """The simulated nodes: how many, their ids, relevance radii η_k and resources."""

    count: int = field(default=3, metadata={"unit": "nodes (sources for coalescence)"})
    id_prefix: str = field(default="node", metadata={"unit": "node ids are <prefix><index>"})
    eta: list[float] = field(default_factory=list, metadata={
        "unit": "relevance radius η_k per node (seed 000 §3; λ_k = 1/η_k); empty = 1.0, one value = all"})
    resources: ResourceSpec = field(default_factory=ResourceSpec)

    def validate(self, prefix: str = "nodes") -> None:
        check_fields(self, prefix, ("count",), 1)
        require(bool(self.id_prefix), f"{prefix}.id_prefix", "is empty")
        require(len(self.eta) in (0, 1, self.count), f"{prefix}.eta",
                f"{len(self.eta)} radii for {self.count} nodes", "give none, one, or one per node")
        for i, e in enumerate(self.eta):
            require(e > 0, f"{prefix}.eta[{i}]", f"must be > 0, got {e}")

    @property
    def ids(self) -> list[str]:
        return [f"{self.id_prefix}{i}" for i in range(self.count)]

    def eta_of(self) -> list[float]:
        if not self.eta:
            return [1.0] * self.count
        return list(self.eta) * self.count if len(self.eta) == 1 else list(self.eta)


@dataclass
class WindowSpec:
    """Node ``node`` is online during steps [join, leave) (leave null: to the end)."""

    node: str = ""
    join: int = 0
    leave: Optional[int] = None


@dataclass
class ChurnSpec:
    """Seeded exponential up/down times per node, in steps."""

    mean_up: float = field(default=40.0, metadata={"unit": "mean online period (steps)"})
    mean_down: float = field(default=20.0, metadata={"unit": "mean offline period (steps)"})
    initial_online: Optional[float] = field(default=None, metadata={
        "unit": "probability a node starts online (null: the stationary mean_up / (mean_up + mean_down))"})

    def validate(self, prefix: str = "schedule.churn") -> None:
        check_fields(self, prefix, ("mean_up", "mean_down"), 0, strict_low=True)
        p = self.initial_online
        require(p is None or 0 <= p <= 1, f"{prefix}.initial_online", f"must be in [0, 1], got {p}")


@dataclass
class CrashSpec:
    """Node ``node`` receives its step-``step`` request and disappears without answering."""

    node: str = ""
    step: int = 0


@dataclass
class ScheduleSpec:
    """Who is online at each step (TDGAN: generator steps; coalescence: pre-training iterations)."""

    kind: Literal["always", "windows", "churn", "trace"] = field(default="always", metadata={
        "unit": "always online, explicit windows, seeded churn, or a CSV trace (node,join,leave)"})
    steps: Optional[int] = field(default=None, metadata={
        "unit": "length of the schedule in steps (null: training.steps for tdgan, training.pretrain_steps "
                "for coalescence)"})
    windows: list[WindowSpec] = field(default_factory=list)
    unlisted: Literal["online", "offline"] = field(default="online", metadata={
        "unit": "kind windows: nodes without a window are online throughout or never"})
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    trace: Optional[str] = field(default=None, metadata={
        "unit": "CSV with header node,join,leave (relative paths: next to the scenario file)"})
    crashes: list[CrashSpec] = field(default_factory=list)

    def validate(self, prefix: str = "schedule") -> None:
        if self.steps is not None:
            check_fields(self, prefix, ("steps",), 1)
        if self.kind == "trace":
            require(bool(self.trace), f"{prefix}.trace", "kind trace needs a CSV path", "set schedule.trace")
        for i, w in enumerate(self.windows):
            require(bool(w.node), f"{prefix}.windows[{i}].node", "is empty")
            require(w.join >= 0, f"{prefix}.windows[{i}].join", f"must be >= 0, got {w.join}")
            require(w.leave is None or w.leave > w.join, f"{prefix}.windows[{i}].leave",
                    f"must be > join ({w.join}), got {w.leave}")
        for i, c in enumerate(self.crashes):
            require(c.step >= 0, f"{prefix}.crashes[{i}].step", f"must be >= 0, got {c.step}")


@dataclass
class TrainingSpec(WGANConfig):
    """The run's :class:`~edgegan.gan.WGANConfig` (lr, betas, critic steps, batch, the one
    ``latent_dim``) plus architecture and budgets; ``tdgan`` holds TDGAN's own settings."""

    arch: str = arch_field()
    generator_width: int = field(default=128, metadata={"unit": "hidden size / base channels of G_k"})
    critic_width: int = field(default=64, metadata={"unit": "hidden size / base channels of D_k"})
    pretrain_steps: int = field(default=300, metadata={"unit": "WGAN-GP iterations per source node"})
    stage1_steps: int = field(default=150, metadata={"unit": "generator iterations per recursive stage (Alg. 1)"})
    adapt_steps: int = field(default=300, metadata={"unit": "generator iterations per Stage II method"})
    steps: int = field(default=200, metadata={"unit": "TDGAN generator steps"})
    win: WINConfig = field(default_factory=WINConfig)
    nwb: NWBConfig = field(default_factory=NWBConfig)
    tdgan: TDGANConfig = field(default_factory=TDGANConfig)

    def validate(self, prefix: str = "training") -> None:
        check_arch(self.arch, f"{prefix}.arch")
        super().validate(prefix)
        check_fields(self, prefix, ("generator_width", "critic_width", "pretrain_steps", "stage1_steps",
                                    "adapt_steps", "steps"), 1)


@dataclass
class TargetSpec:
    """Coalescence Stage II: the data-poor target node and the methods compared there."""

    classes: list[int] = field(default_factory=lambda: [2, 5, 8], metadata={"unit": "classes at the target"})
    samples: int = field(default=20, metadata={"unit": "local samples at the target"})
    methods: list[str] = field(default_factory=lambda: ["barycentric_fa", "ternary_fa", "edge_only", "transfer",
                                                        "weight_average"], metadata={
        "unit": "edgegan.baselines.coalescence.METHODS to compare at equal iteration budgets"})
    eta0: list[float] = field(default_factory=lambda: [1.0, 1.0], metadata={
        "unit": "Stage II radii (barycenter replay, local data); λ = 1/η, equal in seed 000 Alg. 2"})

    def validate(self, prefix: str = "target") -> None:
        check_fields(self, prefix, ("samples",), 1)
        require(len(self.eta0) == 2, f"{prefix}.eta0", f"needs 2 radii (replay, local), got {len(self.eta0)}")
        for i, e in enumerate(self.eta0):
            require(e > 0, f"{prefix}.eta0[{i}]", f"must be > 0, got {e}")
        for i, m in enumerate(self.methods):
            require(m in METHODS, f"{prefix}.methods[{i}]", f"unknown method {m!r}", "choose from " + ", ".join(METHODS))


@dataclass
class GridSpec:
    """Grid pipeline (seed 002): node summaries and the comparison reference."""

    summary: Literal["mean_density"] = field(default="mean_density", metadata={
        "unit": "node upload: mean of its histograms, normalised to mass 1"})
    weights: Literal["by_samples", "uniform", "eta"] = field(default="by_samples", metadata={
        "unit": "barycentric weights λ_k: n_k / Σn, uniform, or ∝ 1/η_k"})
    model: Optional[str] = field(default=None, metadata={"unit": "DCNN checkpoint (null: the shipped 64×64 net)"})
    reg: float = field(default=0.004, metadata={"unit": "grid-sinkhorn entropic regularisation"})
    compare_to: Optional[str] = field(default="grid-sinkhorn", metadata={
        "unit": "reference aggregator for KL / L1 (null: none)"})

    def validate(self, prefix: str = "grid") -> None:
        check_fields(self, prefix, ("reg",), 0, strict_low=True)
        require(self.compare_to is None or self.compare_to in GRID_AGGREGATORS, f"{prefix}.compare_to",
                f"unknown aggregator {self.compare_to!r}", "choose " + " or ".join(GRID_AGGREGATORS))


@dataclass
class EvaluationSpec:
    """How often and on how many samples generators are scored."""

    every: int = field(default=50, metadata={"unit": "iterations (Stage II) / generator steps (TDGAN) between scores"})
    samples: int = field(default=1000, metadata={"unit": "samples per feature-FID / coverage score"})
    samples_per_class: int = field(default=100, metadata={"unit": "conditional samples per class (TDGAN)"})

    def validate(self, prefix: str = "evaluation") -> None:
        check_fields(self, prefix, ("every", "samples", "samples_per_class"), 1)


@dataclass
class OutputsSpec:
    """What the run folder gets besides metrics.jsonl, summary.json and report.md."""

    plots: bool = field(default=True, metadata={"unit": "PNG plots (feature-FID, nodes online, coverage)"})
    sample_grids: bool = field(default=True, metadata={"unit": "PNG sample grids per method"})
    models: bool = field(default=False, metadata={"unit": "save final generators (checkpoints)"})


@dataclass
class HostKillSpec:
    """grpc backend: edge-host process ``host`` is killed (SIGKILL) when one of its nodes is asked
    for generator step ``step``; it is restarted and its nodes rejoin with fresh D_k at their next
    scheduled join."""

    host: int = 0
    step: int = 0


@dataclass
class EngineSpec:
    """Where the virtual nodes run (command-line flags override these)."""

    backend: Literal["inproc", "ray", "grpc"] = field(default="ray", metadata={
        "unit": "ray actor pool, in-process, or real processes: a cloud and `hosts` edge hosts over gRPC + TLS"})
    hosts: int = field(default=2, metadata={"unit": "grpc: edge-host processes the nodes are spread over"})
    join_wait_s: float = field(default=60.0, metadata={
        "unit": "grpc: seconds a tick waits for the stream of a node the schedule brings online"})
    host_kills: list[HostKillSpec] = field(default_factory=list)  # grpc only; other backends ignore them
    workers: int = field(default=0, metadata={"unit": "pool actors (0: sized by the machine / cluster)"})
    resident_nodes: int = field(default=512, metadata={
        "unit": "virtual nodes kept in memory per actor; the least recently used beyond are spilled to disk"})
    device: str = field(default="auto", metadata={"unit": "cloud device: cpu, cuda, cuda:N or auto"})
    feedback_timeout_s: float = field(default=120.0, metadata={"unit": "seconds an actor may take per step"})
    ray_address: Optional[str] = field(default=None, metadata={
        "unit": "join this Ray cluster (auto, ray://host:port); null: start a local Ray sized to the machine"})
    ray_connect_timeout_s: float = field(default=30.0, metadata={
        "unit": "seconds to wait for ray_address to accept a connection before a one-line error"})

    def validate(self, prefix: str = "engine") -> None:
        check_fields(self, prefix, ("workers",), 0)
        check_fields(self, prefix, ("hosts",), 1)
        check_fields(self, prefix, ("join_wait_s",), 0, strict_low=True)
        for i, k in enumerate(self.host_kills):
            require(0 <= k.host < self.hosts, f"{prefix}.host_kills[{i}].host", f"{k.host} is not in [0, {self.hosts})")
            require(k.step >= 1, f"{prefix}.host_kills[{i}].step", f"must be >= 1, got {k.step}")
        require(len({k.host for k in self.host_kills}) == len(self.host_kills), f"{prefix}.host_kills",
                "a host is killed twice", "kill each host at most once")
        check_fields(self, prefix, ("resident_nodes",), 1)
        check_fields(self, prefix, ("feedback_timeout_s", "ray_connect_timeout_s"), 0, strict_low=True)


@dataclass
class Scenario:
    """A whole simulated run."""

    name: str = field(default="scenario", metadata={"unit": "run name"})
    description: str = field(default="", metadata={"unit": "one line for `edgegan scenarios`"})
    seed: int = field(default=0, metadata={"unit": "seed of every RNG in the run"})
    pipeline: Union[str, list[str]] = field(default="coalescence", metadata={
        "unit": "coalescence, tdgan, grid, or a list of them (run in that order)"})
    aggregator: str = field(default="recursive-w1", metadata={
        "unit": "Stage I: recursive-w1, win, nwb, weight-average; grid pipeline: grid-dcnn, grid-sinkhorn"})
    data: DataSpec = field(default_factory=DataSpec)
    nodes: NodesSpec = field(default_factory=NodesSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    outputs: OutputsSpec = field(default_factory=OutputsSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)
    source: str = field(default="", metadata={"unit": "file the scenario was read from (set by load_scenario)"})

    def validate(self, prefix: str = "") -> None:
        pipes = [self.pipeline] if isinstance(self.pipeline, str) else list(self.pipeline)
        require(len(pipes) > 0, "pipeline", "is empty", "choose coalescence, tdgan or grid")
        for i, p in enumerate(pipes):
            require(p in PIPELINES, "pipeline" if isinstance(self.pipeline, str) else f"pipeline[{i}]",
                    f"unknown pipeline {p!r}", "choose from " + ", ".join(PIPELINES))
        require(len(set(pipes)) == len(pipes), "pipeline", f"repeats a pipeline: {pipes}")
        self.pipeline = pipes
        if "grid" in pipes:
            require(self.aggregator in GRID_AGGREGATORS or pipes != ["grid"], "aggregator",
                    f"unknown grid aggregator {self.aggregator!r}", "choose " + " or ".join(GRID_AGGREGATORS))
            require(self.data.dataset == "digits", "data.dataset", "the grid pipeline uses digits",
                    "set data.dataset: digits")
        if "coalescence" in pipes:
            try:
                aggregator_name(self.aggregator)
            except EdgeganError as e:
                raise EdgeganError("aggregator", e.problem, e.fix) from None
        if "tdgan" in pipes:
            require(self.data.dataset != "gaussian", "data.dataset", "TDGAN needs a labelled image data set",
                    "choose " + ", ".join(IMAGE_DATASETS))
        if self.data.dataset == "gaussian":
            require(self.training.arch == "mlp", "training.arch", "gaussian vectors need arch mlp")
        if self.data.partition == "classes" and self.data.dataset != "gaussian" and pipes != ["grid"]:
            require(bool(self.data.classes), "data.classes", "partition classes needs class lists",
                    "e.g. classes: [[0, 1, 2], [3, 4, 5]]")
        ids = set(self.nodes.ids)
        for i, w in enumerate(self.schedule.windows):
            require(w.node in ids, f"schedule.windows[{i}].node", f"unknown node {w.node!r}",
                    f"ids are {self.nodes.id_prefix}0..{self.nodes.id_prefix}{self.nodes.count - 1}")
        for i, c in enumerate(self.schedule.crashes):
            require(c.node in ids, f"schedule.crashes[{i}].node", f"unknown node {c.node!r}",
                    f"ids are {self.nodes.id_prefix}0..{self.nodes.id_prefix}{self.nodes.count - 1}")

    @property
    def pipelines(self) -> list[str]:
        return [self.pipeline] if isinstance(self.pipeline, str) else list(self.pipeline)

    def schedule_steps(self, pipeline: str) -> int:
        """Length of the availability schedule for ``pipeline``."""
        if self.schedule.steps is not None:
            return self.schedule.steps
        return self.training.steps if pipeline == "tdgan" else self.training.pretrain_steps


def builtin_dir() -> Path:
    """Folder of the built-in scenario YAMLs shipped in the package."""
    return Path(str(resources.files("edgegan.sim") / "scenarios"))


def builtin_scenarios() -> dict[str, Path]:
    """Built-in scenario name → YAML path."""
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


def scenario_from_dict(data: dict, source: str = "") -> Scenario:
    """Validate a mapping into a :class:`Scenario` (the seed also seeds ``training.tdgan``, and
    ``training.latent_dim`` is the TDGAN generator's too: one latent space per scenario)."""
    require(isinstance(data, dict), "scenario", f"expected a mapping, got {type(data).__name__}")
    require("source" not in data, "source", "unknown key", "remove it (it is set by load_scenario)")
    tdgan = (data.get("training") or {}).get("tdgan") if isinstance(data.get("training"), dict) else None
    require(not (isinstance(tdgan, dict) and "latent_dim" in tdgan), "training.tdgan.latent_dim",
            "a scenario has one latent_dim", "set training.latent_dim instead")
    sc = from_dict(Scenario, data)
    sc.source = source
    sc.training.tdgan.seed = sc.seed
    sc.training.tdgan.latent_dim = sc.training.latent_dim
    return sc


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (``edgegan scenarios`` lists them) or a YAML file by path."""
    key = str(name_or_path)
    known = builtin_scenarios()
    path = known.get(key)
    if path is None:
        path = Path(key)
        require(path.is_file(), "scenario", f"'{key}' is neither a built-in scenario nor a file",
                "built-ins: " + ", ".join(known))
    data = read_yaml(path, "scenario")
    require(data != {}, "scenario", f"'{path}' is empty",
            "every key has a default, but give at least a name; see `edgegan scenarios --show quickstart`")
    return scenario_from_dict(data, str(path))
