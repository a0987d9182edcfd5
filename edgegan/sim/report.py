"""Run folder of a simulation: ``metrics.jsonl`` (one JSON row per event, written as it happens),
``summary.json``, PNG plots (matplotlib Agg), sample grids and ``report.md`` tying them together.

Plots: ``fid.png`` feature-FID per method over iterations (Stage II iterations for coalescence,
generator steps for TDGAN), ``nodes_online.png`` nodes online per step, ``class_coverage.png``
share of samples per class (coalescence) / class accuracy (TDGAN), ``samples_<method>.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch


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
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Lay out, write a 100-dpi PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid_image(x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) in [-1, 1] → one (rows·H, 8·W[, C]) image in [0, 1]."""
    x = (x[:64].float().clamp(-1, 1) + 1) / 2
    n, c, h, w = x.shape
    cols = 8
    rows = math.ceil(n / cols)
    pad = torch.zeros(rows * cols - n, c, h, w)
    x = torch.cat([x, pad]).view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return x[..., 0] if c == 1 else x


def plot_fid(rows: list[dict[str, Any]], path: Path) -> bool:
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("kind") == "eval" and r.get("fid") is not None and not str(r.get("method", "")).startswith("stage1"):
            curves.setdefault(f"{r['pipeline']}: {r['method']}", []).append((r["iteration"], r["fid"]))
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        pts.sort()
        ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set_xlabel("iteration (Stage II) / generator step (TDGAN)")
    ax.set_ylabel("feature-FID (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def plot_online(rows: list[dict[str, Any]], path: Path) -> bool:
    series: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        if r.get("kind") in ("step", "idle", "online"):
            series.setdefault(r["pipeline"], []).append((r["tick"], len(r["online"])))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, pts in series.items():
        pts.sort()
        ax.step(*zip(*pts), where="post", label=f"{name} ({'pre-training iteration' if name == 'coalescence' else 'step'})")
    ax.set_xlabel("schedule step")
    ax.set_ylabel("nodes online")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def plot_coverage(summary: dict[str, Any], path: Path) -> bool:
    bars: dict[str, list[float]] = {}
    co = summary.get("coalescence", {})
    for name, m in co.get("methods", {}).items():
        bars[name] = m["share"]
    td = summary.get("tdgan", {})
    if td.get("per_class_acc"):
        acc = td["per_class_acc"]
        k = max(int(c) for c in acc) + 1
        bars["tdgan (class accuracy)"] = [acc.get(str(c), 0.0) for c in range(k)]
    if not bars:
        return False
    plt = _plt()
    k = max(len(v) for v in bars.values())
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(bars)
    for i, (name, v) in enumerate(bars.items()):
        ax.bar([c + i * width for c in range(len(v))], v, width, label=name)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(k)], [str(c) for c in range(k)])
    ax.set_xlabel("class")
    ax.set_ylabel("share of samples (coalescence) / accuracy (TDGAN)")
    ax.legend(fontsize=7)
    ax.grid(alpha=.3, axis="y")
    _save(plt, fig, path)
    return True


def save_samples(name: str, x: torch.Tensor, path: Path) -> None:
    plt = _plt()
    img = _grid_image(x.cpu())
    plt.imsave(path, img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)


def save_grid(res: dict[str, Any], path: Path) -> None:
    plt = _plt()
    panels = [(f"node input {i}", h) for i, h in enumerate(res["inputs"])]
    panels.append((res["aggregator"], res["barycenter"]))
    if "reference" in res:
        panels.append(("reference", res["reference"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
    for ax, (title, h) in zip(axes, panels):
        ax.imshow(h, cmap="magma")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    _save(plt, fig, path)


def write_outputs(out_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]],
                  samples: dict[str, torch.Tensor], grid: dict[str, Any] | None, plots: bool = True,
                  sample_grids: bool = True) -> dict[str, Any]:
    """Write PNGs, ``summary.json`` and ``report.md``; returns ``summary`` with the file list."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    if plots:
        for name, fn in (("fid", lambda p: plot_fid(rows, p)), ("nodes_online", lambda p: plot_online(rows, p)),
                         ("class_coverage", lambda p: plot_coverage(summary, p))):
            if fn(out / f"{name}.png"):
                files[name] = f"{name}.png"
        if grid is not None:
            save_grid(grid, out / "grid_barycenter.png")
            files["grid_barycenter"] = "grid_barycenter.png"
    if sample_grids:
        for name, x in samples.items():
            if x.dim() == 4:
                save_samples(name, x, out / f"samples_{name}.png")
                files[f"samples_{name}"] = f"samples_{name}.png"
    summary["files"] = {"metrics": "metrics.jsonl", "summary": "summary.json", "report": "report.md", **files}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    (out / "report.md").write_text(render_report(summary))
    return summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render_report(s: dict[str, Any]) -> str:
    """``report.md``: what ran, the numbers, and the plots."""
    f = s.get("files", {})
    lines = [f"# Simulation report: {s['scenario']}", "",
             f"{s.get('description', '')}", "",
             f"- pipelines: {', '.join(s['pipelines'])}; aggregator: {s['aggregator']}; seed {s['seed']}",
             f"- engine: {s['engine']['backend']} with {s['engine']['workers']} worker(s), device {s['engine']['device']}",
             f"- wall time: {s['wall_seconds']:.1f} s", ""]
    co = s.get("coalescence")
    if co:
        lines += ["## Coalescence (seed 000)", "",
                  f"Sources uploaded: {', '.join(co['uploaded'])}"
                  + (f"; left before uploading: {', '.join(co['left'])}" if co.get("left") else ""), ""]
        st = co["stage1"]
        if "fid" in st:
            lines += [f"Stage I ({st['aggregator']}, {st['seconds']:.1f} s): barycenter feature-FID {st['fid']:.1f}, "
                      f"class coverage {st['coverage']:.2f}. Sources alone: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in co.get("sources_fid", {}).items()), ""]
        else:
            lines += [f"Stage I ({st['aggregator']}, {st['seconds']:.1f} s): BW2-UVP {st['bw2_uvp']:.2f} % against "
                      "the exact Gaussian barycenter; sources alone: "
                      + ", ".join(f"{k} {v:.1f} %" for k, v in co.get("sources_bw2_uvp", {}).items()), ""]
        if co.get("methods"):
            lines += ["| method | final feature-FID | class coverage | source-only share | seconds |",
                      "| --- | --- | --- | --- | --- |"]
            for name, m in co["methods"].items():
                lines.append(f"| {name} | {m['final_fid']:.1f} | {m['coverage']:.2f} | {m['source_only_share']:.2f} "
                             f"| {m['seconds']:.1f} |")
            lines.append("")
    td = s.get("tdgan")
    if td:
        lines += ["## TDGAN (seed 003)", "",
                  f"{td['generator_steps']} generator steps over {td['ticks']} schedule steps "
                  f"(mean {td['mean_online']:.1f} nodes online, {td['seen']} nodes seen), "
                  f"{td['activations']} node activations, {td['wall_seconds']:.1f} s.",
                  f"Feedback accepted {td['totals']['accepted']}, rejected {td['totals']['rejected']}, "
                  f"membership changes {td['totals']['membership_changes']}."]
        if td.get("final_fid"):
            lines.append(f"Final feature-FID {td['final_fid']['tdgan']:.1f}, class accuracy "
                         f"{_fmt(td.get('class_acc'))}.")
        lines.append("")
    gr = s.get("grid")
    if gr:
        lines += ["## Grid barycenter (seed 002)", "",
                  f"{gr['aggregator']} over {len(gr['nodes'])} node densities in {gr['ms']:.1f} ms"
                  + (f"; KL {gr['kl_to_reference']:.4f}, L1 {gr['l1_to_reference']:.3f} against "
                     f"{s.get('grid_reference', 'the reference')} ({gr['reference_ms']:.0f} ms)"
                     if "kl_to_reference" in gr else "") + ".", ""]
    if s.get("final_fid"):
        lines += ["## Final feature-FID per method", "", "| method | feature-FID |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in s["final_fid"].items()] + [""]
    lines += ["## Plots", ""]
    for key, title in (("fid", "Feature-FID over iterations"), ("nodes_online", "Nodes online"),
                       ("class_coverage", "Class coverage"), ("grid_barycenter", "Grid barycenter")):
        if key in f:
            lines += [f"### {title}", "", f"![{title}]({f[key]})", ""]
    sample_keys = [k for k in f if k.startswith("samples_")]
    if sample_keys:
        lines += ["### Samples", ""] + [f"{k[8:]}: ![{k}]({f[k]})" for k in sample_keys] + [""]
    lines += ["Rows of every event are in `metrics.jsonl`; numbers above are from `summary.json`.", ""]
    return "\n".join(lines)
