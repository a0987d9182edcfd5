"""Run folder of a simulation: ``metrics.jsonl`` (one JSON row per event, written as it happens),
``summary.json``, PNG plots (matplotlib Agg), sample grids and ``report.md`` tying them together.

Plots: ``fid.png`` feature-FID per method over iterations (Stage II iterations for coalescence,
generator steps for TDGAN), ``nodes_online.png`` nodes online per step with a membership
timeline, ``class_coverage.png`` class share per method (coalescence) and class accuracy
(TDGAN), ``samples_<method>.png`` (≥ 256 px wide), ``grid_barycenter.png``.

The report scores every method with the coalescence benchmark's metrics
(:class:`edgegan.eval.GeneratorScore`); :mod:`edgegan.sim.verdicts` names a winner for each metric
with a better direction and reads the target share against its ideal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegan.checkpoint import save_checkpoint
from edgegan.eval import GeneratorScore
from edgegan.sim.coalescence import CoalescenceResult, MethodOutcome
from edgegan.sim.grid import GridResult
from edgegan.sim.scenario import OutputsSpec
from edgegan.sim.tdgan import TDGANResult
from edgegan.sim.verdicts import coalescence_md, fmt, share_verdict, winners

__all__ = ["EngineInfo", "RunRecorder", "RunSummary", "read_metrics", "render_report", "summary_json", "winners",
           "write_outputs"]

SAMPLE_GRID_PX = 256


@dataclass
class EngineInfo:
    """The pool the run used; ``workers_stats`` are the workers' counters at the end of the run
    (TDGAN node activations, pool jobs, spills, peak memory); ``lost_workers`` the workers lost
    mid-run (tick, error, Ray node, the nodes they hosted and how each was re-created)."""

    backend: str
    workers: int
    device: str
    resident_nodes: int
    num_gpus_per_worker: float
    workers_stats: list[dict[str, Any]] = field(default_factory=list)
    lost_workers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    """Everything ``summary.json`` and ``report.md`` say about a run, one typed result per pipeline.
    ``aggregator`` is None when no pipeline aggregates (TDGAN only)."""

    scenario: str
    description: str
    seed: int
    pipelines: list[str]
    aggregator: str | None
    source: str
    engine: EngineInfo
    scenario_config: dict[str, Any]
    wall_seconds: float = 0.0
    coalescence: CoalescenceResult | None = None
    tdgan: TDGANResult | None = None
    grid: GridResult | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def final_fid(self) -> dict[str, float]:
        """Headline feature-FID per method: against the whole data set (coalescence, seed 000's
        rule) and against the classes seen (TDGAN)."""
        return {**(self.coalescence.final_fid if self.coalescence else {}),
                **(self.tdgan.final_fid if self.tdgan else {})}


class RunRecorder:
    """Append-only ``metrics.jsonl``; rows also kept in memory for the plots."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._f = self.path.open("w")
        self.rows: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> None:
        row = {**row, "wall_s": round(time.perf_counter() - self._t0, 4)}
        self.rows.append(row)
        self._f.write(json.dumps(row, default=_jsonable) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------- summary.json
def _score_json(s: GeneratorScore | None) -> dict[str, Any]:
    return {} if s is None else dataclasses.asdict(s)


def _method_json(m: MethodOutcome) -> dict[str, Any]:
    return {**_score_json(m.final), "seconds": m.seconds, "worker": m.worker,
            "curve": [{"iteration": it, **_score_json(s)} for it, s in m.curve]}


def summary_json(s: RunSummary) -> dict[str, Any]:
    """``summary.json``: the run's typed results as plain JSON (no tensors or model weights)."""
    out: dict[str, Any] = {
        "scenario": s.scenario, "description": s.description, "seed": s.seed, "pipelines": s.pipelines,
        "aggregator": s.aggregator, "source": s.source, "engine": dataclasses.asdict(s.engine),
        "wall_seconds": s.wall_seconds, "final_fid": s.final_fid}
    co = s.coalescence
    if co is not None:
        st = co.stage1
        out["coalescence"] = {
            "uploaded": co.uploaded, "left": co.left, "target": {
                "classes": co.target_classes, "samples": co.target_samples,
                "ideal_share": co.target_population_share},
            "stage1": {"aggregator": st.aggregator, "seconds": st.seconds, "weights": st.weights,
                       **_score_json(st.score), **({"bw2_uvp": st.bw2_uvp} if st.bw2_uvp is not None else {})},
            "sources": {co.source_metric: co.sources},
            "methods": {name: {**_method_json(m), "share_verdict": share_verdict(
                m.final.target_share, co.target_population_share)} for name, m in co.methods.items()}}
    td = s.tdgan
    if td is not None:
        out["tdgan"] = {**{f.name: getattr(td, f.name) for f in dataclasses.fields(td) if f.name not in ("evals", "samples")},
                        "final": _score_json(td.final),
                        "evals": [{"iteration": it, **_score_json(sc)} for it, sc in td.evals]}
    g = s.grid
    if g is not None:
        out["grid"] = {f.name: getattr(g, f.name) for f in dataclasses.fields(g)
                       if f.name not in ("barycenter", "inputs", "reference")}
    out.update(files=s.files, scenario_config=s.scenario_config)
    return out


# ---------------------------------------------------------------------- plots
def _plt():
    from edgegan.plotting import plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Lay out, write a 100-dpi PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid_image(x: torch.Tensor, min_px: int = SAMPLE_GRID_PX) -> torch.Tensor:
    """(n, C, H, W) in [-1, 1] → one image in [0, 1] of up to 64 tiles, 8 per row, 1-pixel gaps,
    each pixel repeated so the grid is at least ``min_px`` wide: (rows·H', 8·W'[, C])."""
    x = (x[:64].float().clamp(-1, 1) + 1) / 2
    n, c, h, w = x.shape
    cols = 8
    scale = max(1, math.ceil(min_px / (cols * (w + 1))))
    x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    x = torch.nn.functional.pad(x, (0, 1, 0, 1), value=1.0)  # white gaps between tiles
    rows = math.ceil(n / cols)
    h, w = x.shape[2:]
    pad = torch.ones(rows * cols - n, c, h, w)
    x = torch.cat([x, pad]).view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return x[..., 0] if c == 1 else x


def plot_fid(s: RunSummary, path: Path) -> bool:
    """Headline feature-FID over iterations: Stage II methods against the whole data set, TDGAN
    against the classes seen."""
    curves: dict[str, list[tuple[int, float]]] = {}
    if s.coalescence is not None:
        for name, m in s.coalescence.methods.items():
            curves[f"coalescence: {name} (vs whole data set)"] = [(it, sc.fid_whole) for it, sc in m.curve]
    if s.tdgan is not None and s.tdgan.evals:
        curves["tdgan (vs classes seen)"] = [(it, sc.fid_target) for it, sc in s.tdgan.evals]
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        ax.plot(*zip(*sorted(pts)), marker="o", ms=3, label=name)
    units = ([] if s.coalescence is None or not s.coalescence.methods else ["Stage II iteration"]) + \
        ([] if s.tdgan is None or not s.tdgan.evals else ["generator step (TDGAN)"])
    ax.set_xlabel(" / ".join(units))
    ax.set_ylabel("feature-FID (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def _membership(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, list[str]]]]:
    """Per pipeline: (tick, nodes online) from the ``online`` / ``step`` / ``idle`` event rows."""
    series: dict[str, list[tuple[int, list[str]]]] = {}
    for r in rows:
        if r.get("kind") in ("step", "idle", "online"):
            series.setdefault(r["pipeline"], []).append((r["tick"], r["online"]))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in series.items()}


def plot_online(rows: list[dict[str, Any]], nodes: list[str], path: Path) -> bool:
    """Per pipeline: the number of nodes online per step on an axis from 0 to the node count, and
    a membership timeline (one row per node, dark = online)."""
    series = _membership(rows)
    if not series:
        return False
    plt = _plt()
    fig, axes = plt.subplots(2 * len(series), 1, figsize=(7, 2.2 + 3.3 * len(series)), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.6] * len(series)})
    index = {k: i for i, k in enumerate(nodes)}
    for j, (name, pts) in enumerate(series.items()):
        unit = "pre-training iteration" if name == "coalescence" else "step"
        count, timeline = axes[2 * j, 0], axes[2 * j + 1, 0]
        ticks = [t for t, _ in pts]
        count.step(ticks, [len(o) for _, o in pts], where="post")
        count.set_ylim(0, len(nodes) + 0.5)
        count.set_ylabel("nodes online")
        count.set_title(f"{name} ({unit}s)", fontsize=9)
        count.grid(alpha=.3)
        grid = np.zeros((len(nodes), max(ticks) + 1))
        for t, online in pts:
            grid[[index[k] for k in online], t] = 1
        timeline.imshow(grid, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1,
                        extent=(-0.5, grid.shape[1] - 0.5, len(nodes) - 0.5, -0.5))
        timeline.set_ylabel("node (dark: online)")
        if len(nodes) <= 16:
            timeline.set_yticks(range(len(nodes)), nodes, fontsize=7)
        timeline.set_xlabel(f"schedule {unit}")
    _save(plt, fig, path)
    return True


def plot_coverage(s: RunSummary, path: Path) -> bool:
    """Class share of each Stage II method's samples (coalescence; the population's share, the
    ideal, as a dashed step) and TDGAN's class accuracy (higher is better), one panel each."""
    panels: list[tuple[str, str, dict[str, list[float]]]] = []
    ideal = s.coalescence.population if s.coalescence is not None else None
    if s.coalescence is not None and s.coalescence.methods:
        panels.append(("coalescence: class share of samples (closer to the population's, dashed, is better)",
                       "share of samples", {n: m.final.class_share for n, m in s.coalescence.methods.items()}))
    final = s.tdgan.final if s.tdgan is not None else None
    if final is not None and final.per_class_acc:
        k = len(final.class_share)
        panels.append(("tdgan: class accuracy of G(u, y) (higher is better)", "accuracy",
                       {"tdgan": [final.per_class_acc.get(c, 0.0) for c in range(k)]}))
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.6 * len(panels)), squeeze=False)
    for ax, (title, ylabel, bars) in zip(axes[:, 0], panels):
        k = max(len(v) for v in bars.values())
        width = 0.8 / len(bars)
        for i, (name, v) in enumerate(bars.items()):
            ax.bar([c + i * width for c in range(len(v))], v, width, label=name)
        if ideal is not None and title.startswith("coalescence"):
            ax.step([c - width / 2 for c in range(len(ideal) + 1)], ideal + ideal[-1:], where="post", color="k",
                    linestyle="--", label="population (ideal)")
        ax.set_xticks([c + 0.4 - width / 2 for c in range(k)], [str(c) for c in range(k)])
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=.3, axis="y")
    _save(plt, fig, path)
    return True


def save_samples(x: torch.Tensor, path: Path) -> None:
    """A sample grid at least :data:`SAMPLE_GRID_PX` pixels wide (nearest-neighbour upscaling)."""
    plt = _plt()
    img = _grid_image(x.cpu())
    plt.imsave(path, img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)


def save_grid(res: GridResult, path: Path) -> None:
    plt = _plt()
    panels = [(f"node input {i}", h) for i, h in enumerate(res.inputs)]
    panels.append((res.aggregator, res.barycenter))
    if res.reference is not None:
        panels.append(("reference", res.reference))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
    for ax, (title, h) in zip(axes, panels):
        ax.imshow(h, cmap="magma")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    _save(plt, fig, path)


def _samples(s: RunSummary) -> dict[str, torch.Tensor]:
    out = {}
    if s.coalescence is not None:
        out.update({n: m.samples for n, m in s.coalescence.methods.items() if m.samples is not None})
    if s.tdgan is not None and s.tdgan.samples is not None:
        out["tdgan"] = s.tdgan.samples
    return {k: v for k, v in out.items() if v.dim() == 4}


def write_outputs(out_dir: str | Path, s: RunSummary, rows: list[dict[str, Any]], outputs: OutputsSpec) -> None:
    """Write the PNGs, the final generators (``outputs.models``), ``summary.json`` and ``report.md``;
    ``s.files`` lists them."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    if outputs.plots:
        nodes = s.scenario_config["nodes"]
        ids = [f"{nodes['id_prefix']}{i}" for i in range(nodes["count"])]
        for name, fn in (("fid", lambda p: plot_fid(s, p)), ("nodes_online", lambda p: plot_online(rows, ids, p)),
                         ("class_coverage", lambda p: plot_coverage(s, p))):
            if fn(out / f"{name}.png"):
                files[name] = f"{name}.png"
        if s.grid is not None:
            save_grid(s.grid, out / "grid_barycenter.png")
            files["grid_barycenter"] = "grid_barycenter.png"
    if outputs.sample_grids:
        for name, x in _samples(s).items():
            save_samples(x, out / f"samples_{name}.png")
            files[f"samples_{name}"] = f"samples_{name}.png"
    if outputs.models and s.coalescence is not None:
        for name, m in s.coalescence.methods.items():
            if m.generator is not None:
                save_checkpoint(out / "models" / f"{name}.pt", m.generator)
                files[f"model_{name}"] = f"models/{name}.pt"
    s.files = {"metrics": "metrics.jsonl", "summary": "summary.json", "report": "report.md", **files}
    (out / "summary.json").write_text(json.dumps(summary_json(s), indent=2, default=_jsonable))
    (out / "report.md").write_text(render_report(s))


# ---------------------------------------------------------------------- report.md
def _tdgan_md(td: TDGANResult) -> list[str]:
    t = td.totals
    lines = ["## TDGAN (seed 003)", "",
             f"{td.generator_steps} generator steps over {td.ticks} schedule steps "
             f"(mean {td.mean_online:.1f} nodes online, {td.seen} nodes seen), "
             f"{td.activations} node activations, {td.wall_seconds:.1f} s.",
             f"Feedback accepted {t['accepted']}, rejected {t['rejected']}, membership changes "
             f"{t['membership_changes']}."]
    f = td.final
    if f is not None:
        lines.append(f"Final feature-FID {f.fid_target:.1f} against the classes seen ({f.fid_whole:.1f} against "
                     f"the whole data set), class-histogram TV {f.class_tv:.3f}, class accuracy "
                     f"{fmt(f.class_acc, '.3f')}.")
    return lines + [""]


def _grid_md(g: GridResult) -> list[str]:
    ref = (f"; KL {g.kl_to_reference:.4f}, L1 {g.l1_to_reference:.3f} against {g.compare_to} "
           f"({g.reference_ms:.0f} ms)" if g.kl_to_reference is not None else "")
    return ["## Grid barycenter (seed 002)", "",
            f"{g.aggregator} over {len(g.nodes)} node densities in {g.ms:.1f} ms{ref}.", ""]


def _lost_worker_md(w: dict[str, Any]) -> str:
    """One line per worker lost mid-run."""
    where = f" (Ray node {w['ray_node'][:12]})" if w.get("ray_node") else ""
    if "tick" not in w:  # noticed only by the final stats call
        return f"- lost worker {w['index']}{where} after its last step: {w['error']}"
    states = [r["state"] for r in w["recreated"].values()]
    return (f"- lost worker {w['index']}{where} at tick {w['tick']}: {w['error']}; its {w['nodes']} node(s) "
            f"left ({len(w['online'])} online), {states.count('spilled')} re-created from spilled state, "
            f"{states.count('fresh')} fresh, {w['nodes'] - len(states)} did not rejoin")


def render_report(s: RunSummary) -> str:
    """``report.md``: what ran, the numbers, and the plots."""
    e = s.engine
    lines = [f"# Simulation report: {s.scenario}", "", *([s.description, ""] if s.description else []),
             f"- pipelines: {', '.join(s.pipelines)}"
             + (f"; aggregator: {s.aggregator}" if s.aggregator else "") + f"; seed {s.seed}",
             f"- engine: {e.backend} with {e.workers} worker(s), device {e.device}",
             *map(_lost_worker_md, e.lost_workers),
             f"- wall time: {s.wall_seconds:.1f} s", ""]
    if s.coalescence is not None:
        lines += coalescence_md(s.coalescence)
    if s.tdgan is not None:
        lines += _tdgan_md(s.tdgan)
    if s.grid is not None:
        lines += _grid_md(s.grid)
    f = s.files
    lines += ["## Plots", ""]
    for key, title in (("fid", "Feature-FID over iterations"), ("nodes_online", "Nodes online"),
                       ("class_coverage", "Class share and class accuracy"), ("grid_barycenter", "Grid barycenter")):
        if key in f:
            lines += [f"### {title}", "", f"![{title}]({f[key]})", ""]
    sample_keys = [k for k in f if k.startswith("samples_")]
    if sample_keys:
        lines += ["### Samples", ""] + [f"{k[8:]}:\n\n![{k}]({f[k]})\n" for k in sample_keys]
    lines += ["Rows of every event are in `metrics.jsonl`; numbers above are from `summary.json`.", ""]
    return "\n".join(lines)
