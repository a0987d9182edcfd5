"""BW2-UVP of continuous W2 barycenter solvers against the exact Gaussian barycenter (issue 5).

Inputs (seeds 001/004): N = 3 measures, weights (1/4, 1/2, 1/4), zero means, covariances
R·diag(exp(linspace(log .5, log 2)))·Rᵀ with Haar-random R; plus a non-Gaussian
location-scatter family (uniform cube pushed by Σ_k^{1/2}, true barycenter known by
construction, see edgegan/barycenter/gaussian.py); and a hard family: N = 5 inputs,
weights (.05, .1, .15, .3, .4), means of scale 3, each input's own eigenvalues log-uniform in
[0.05, 5] (condition number 100), HARD_SEEDS problems per dimension. Methods, all run here:

* WIN (seed 004 Alg. 1) with ``WINConfig()`` exactly as a user gets it (``config: default``,
  stops by its own rule) and NWB (seed 001 Alg. 1) from samplers, 100k generated samples
  scored; on location-scatter also WIN with ``init="gaussian"``, both starts also scored by
  exact-OT W2 between 2k generated and 2k true-barycenter samples (mean of 3 draws);
* hard family, time to quality: UVP after every round against solver seconds (scoring
  excluded) for WIN default, ``WINConfig.legacy()`` (the schedule before the stopping rule:
  K_v every iteration, batch 1024 per input, 50 iterations) and NWB, the last two cut at
  the target's time budget (``max_seconds``); HARD_TARGETS gives (UVP %, seconds) per d;
* POT ``ot.gaussian.bures_wasserstein_barycenter`` on Gaussians fitted to samples;
* POT ``ot.lp.free_support_barycenter`` on samples (support points scored);
* weight averaging of the inputs written as exact linear generators z ↦ Σ_k^{1/2} z + m_k;
* ``identity start``: N(0, I), where WIN/NWB's generator starts (context, not a method).

    python benchmarks/gaussian_barycenter.py [--quick] --json OUT [--png PNG]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgegan.barycenter.gaussian import (bw2_uvp, exact_gaussian_barycenter, fit_gaussian,  # noqa: E402
                                         gaussian_benchmark, gaussian_samplers, hard_gaussian_benchmark,
                                         location_scatter_samplers, sqrtm_spd,
                                         uniform_cube_sampler)
from edgegan.barycenter.nwb import NWBConfig, nwb_barycenter  # noqa: E402
from edgegan.barycenter.weight_average import average_models  # noqa: E402
from edgegan.barycenter.win import WINConfig, win_barycenter  # noqa: E402
from edgegan.config import to_dict  # noqa: E402

WEIGHTS = [0.25, 0.5, 0.25]
HARD_WEIGHTS = [0.05, 0.1, 0.15, 0.3, 0.4]
W2_POINTS, W2_DRAWS = 2000, 3
HARD_SEEDS = 3  # problems per hard dimension: problem seed 1000 + d + 100 s, samplers 2000 + d + 100 s
HARD_TARGETS = {16: (0.3, 60.0), 64: (1.0, 300.0), 128: (2.0, 600.0)}  # d: (BW2-UVP %, seconds)
LEGACY_BUDGET = {16: 60.0, 64: 300.0, 128: 300.0}  # seconds the legacy curve runs (300 at d = 128: CPU time)
NWB_BUDGET = {True: {16: 120.0}, False: {16: 600.0, 64: 300.0}}  # [quick] d: NWB seconds on the hard family
SCORE_SAMPLES = 100_000
POT_FIT_SAMPLES = 20_000
FREE_SUPPORT_POINTS = 500


def nwb_config(dim: int, quick: bool, family: str) -> NWBConfig:
    """Reference-code K_1/K_2, lr, batch; width max(32, 2d); the shared stopping rule. Easy
    families: K_3 cut to the CPU budget (150 quick, 200 full, 100 at d ≥ 32; the reference
    trains for 80 epochs); hard family: K_3 = 2000 (reference default), rounds of 50 steps (the
    default: with 10-step rounds the rule stopped NWB at 40 steps while its UVP still fell),
    cut at NWB_BUDGET[quick][d] seconds."""
    if family == "hard":
        return NWBConfig(hidden=max(32, 2 * dim), seed=dim, max_seconds=NWB_BUDGET[quick][dim])
    k3 = 150 if quick else (200 if dim <= 16 else 100)
    return NWBConfig(k3=k3, hidden=max(32, 2 * dim), log_every=50, seed=dim)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def problem(family: str, dim: int, seed: int = 0):
    """(samplers, weights, bar_mean, bar_cov, barycenter sampler or None) of one benchmark problem."""
    if family == "hard":
        means, covs = hard_gaussian_benchmark(dim, len(HARD_WEIGHTS), seed=1000 + dim + 100 * seed)
        bar_mean, bar_cov = exact_gaussian_barycenter(means, covs, HARD_WEIGHTS)
        return (gaussian_samplers(means, covs, seed=2000 + dim + 100 * seed), HARD_WEIGHTS, bar_mean, bar_cov,
                None, (means, covs))
    means, covs = gaussian_benchmark(dim, 3, seed=dim)
    if family == "gaussian":
        bar_mean, bar_cov = exact_gaussian_barycenter(means, covs, WEIGHTS)
        return gaussian_samplers(means, covs, seed=100 * dim), WEIGHTS, bar_mean, bar_cov, None, (means, covs)
    samplers, bar, bar_mean, bar_cov = location_scatter_samplers(
        uniform_cube_sampler(dim, torch.Generator().manual_seed(100 * dim)), means, covs, WEIGHTS)
    return samplers, WEIGHTS, bar_mean, bar_cov, bar, (means, covs)


def sample_w2(x_sampler, bar_sampler) -> float:
    """Mean over W2_DRAWS of exact-OT W2 between W2_POINTS samples of each (POT ``ot.emd2``)."""
    vals = []
    for _ in range(W2_DRAWS):
        x, y = x_sampler(W2_POINTS).double().numpy(), bar_sampler(W2_POINTS).double().numpy()
        w = np.full(W2_POINTS, 1.0 / W2_POINTS)
        vals.append(float(ot.emd2(w, w, ot.dist(x, y), numItermax=1_000_000)) ** 0.5)
    return float(np.mean(vals))


def run_w2(solve, samplers, weights, cfg, bar_mean, bar_cov, label: str) -> tuple[object, dict]:
    """Run one W2 solver with per-round scoring; returns (result, row fields). ``curve`` is
    [wall seconds, process CPU seconds, UVP %] after every round, scoring excluded from both
    clocks: on a shared machine the CPU seconds of a 1-thread run are what an idle core would
    take. Loads are os.getloadavg() at start and end."""
    curve, scoring, t0, c0 = [], [0.0, 0.0], time.perf_counter(), time.process_time()

    def score(it, res):
        t1, c1 = time.perf_counter(), time.process_time()
        uvp = round(bw2_uvp(res.generator.sample(SCORE_SAMPLES), bar_mean, bar_cov), 5)
        curve.append([round(t1 - t0 - scoring[0], 2), round(c1 - c0 - scoring[1], 2), uvp])
        print(f"  {label} round {it}: {curve[-1][0]:7.1f} s ({curve[-1][1]:.1f} CPU s)  UVP {uvp:.4f} %  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        scoring[0] += time.perf_counter() - t1
        scoring[1] += time.process_time() - c1

    load_start = os.getloadavg()
    res = solve(samplers, weights, cfg=cfg, log=True, callback=score)
    sec, cpu = time.perf_counter() - t0 - scoring[0], time.process_time() - c0 - scoring[1]
    hist = res.log["history"]
    extra = {"cpu_seconds": round(cpu, 2), "iterations": res.log["iterations"], "converged": res.log["converged"],
             "stopped_at": res.log["stopped_at"], "stop_reason": res.log["stop_reason"], "curve": curve,
             "uvp_per_round": [c[2] for c in curve], "residual_per_round": [round(r, 6) for r in hist["residual"]],
             "residual_se_pct_per_round": [round(r, 5) for r in hist["residual_se_pct"]],
             "moment_change_per_round": [round(r, 5) for r in hist["moment_change_pct"]],
             "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    for part in ("maps", "potentials", "generator"):
        if f"seconds_{part}" in hist:
            extra[f"seconds_{part}"] = round(sum(hist[f"seconds_{part}"]), 2)
    if "batch" in hist:
        extra["batch_per_round"] = hist["batch"]
    return res, {"uvp": curve[-1][2], "seconds": sec, "settings": to_dict(cfg), **extra}


def run_problem(family: str, dim: int, quick: bool, rows: list[dict], saved,
                hard_seeds: tuple[int, ...] = tuple(range(HARD_SEEDS))) -> None:
    """Append this problem's rows to ``rows``, calling ``saved()`` after each (partial results survive).
    On the hard family WIN default runs on ``hard_seeds``; the other methods only when seed 0 is among them."""
    samplers, weights, bar_mean, bar_cov, bar_sampler, (means, covs) = problem(family, dim)

    def add(method: str, uvp: float, seconds: float, settings: dict | None = None, **extra) -> None:
        rows.append({"method": method, "family": family, "dim": dim, "n_inputs": len(samplers),
                     "bw2_uvp_pct": round(uvp, 5), "seconds": round(seconds, 2), "settings": settings or {}, **extra})
        saved()
        more = "".join(f"  {k}={v}" for k, v in extra.items() if not isinstance(v, list))
        print(f"{family:16s} d={dim:3d} {method:32s} UVP {uvp:9.4f} %  {seconds:8.1f} s{more}", flush=True)

    torch.manual_seed(dim)
    add("identity start N(0,I)", bw2_uvp(torch.randn(SCORE_SAMPLES, dim), bar_mean, bar_cov), 0.0)

    def w2_solver(method: str, solve, cfg, config: str, seed: int = 0) -> None:
        prob = (samplers, bar_mean, bar_cov) if seed == 0 else [problem(family, dim, seed)[i] for i in (0, 2, 3)]
        res, out = run_w2(solve, prob[0], weights, cfg, prob[1], prob[2], f"{method} {config} seed {seed}")
        if bar_sampler is not None:
            out["w2_samples"] = round(sample_w2(res.generator.sample, bar_sampler), 5)
        uvp, sec, settings = out.pop("uvp"), out.pop("seconds"), out.pop("settings")
        add(method, uvp, sec, settings, config=config, seed=seed, **out)

    if family == "hard":
        for seed in hard_seeds:
            w2_solver("WIN", win_barycenter, WINConfig(seed=10 * dim + seed), "default", seed)
        if 0 not in hard_seeds:
            return
        cut = LEGACY_BUDGET.get(dim, 300.0)
        w2_solver("WIN", win_barycenter, WINConfig.legacy(seed=10 * dim, max_seconds=cut), f"legacy, cut at {cut:g} s")
    else:
        cfg = WINConfig(seed=dim)
        w2_solver("WIN", win_barycenter, cfg, "default")
        if family == "location-scatter":
            w2_solver("WIN init=gaussian", win_barycenter, dataclasses.replace(cfg, init="gaussian"), "init=gaussian")
            add("true barycenter (sampling floor)", bw2_uvp(bar_sampler(SCORE_SAMPLES), bar_mean, bar_cov), 0.0,
                w2_samples=round(sample_w2(bar_sampler, bar_sampler), 5))
    if family != "hard" or dim in NWB_BUDGET[quick]:
        w2_solver("NWB", nwb_barycenter, nwb_config(dim, quick, family), "default" if family != "hard" else
                  f"default, cut at {NWB_BUDGET[quick][dim]:g} s")

    def pot_gaussian():
        fits = [fit_gaussian(s(POT_FIT_SAMPLES)) for s in samplers]
        m = np.stack([f[0].numpy() for f in fits])
        c = np.stack([f[1].numpy() for f in fits])
        return ot.gaussian.bures_wasserstein_barycenter(m, c, np.array(weights))

    (pm, pc), sec = timed(pot_gaussian)
    add("POT bures_wasserstein_barycenter", bw2_uvp((torch.as_tensor(pm), torch.as_tensor(pc)), bar_mean, bar_cov),
        sec, {"samples_per_input": POT_FIT_SAMPLES})

    def pot_free_support():
        locs = [s(FREE_SUPPORT_POINTS).double().numpy() for s in samplers]
        ws = [np.full(FREE_SUPPORT_POINTS, 1.0 / FREE_SUPPORT_POINTS)] * len(locs)
        x0 = np.random.default_rng(dim).normal(size=(FREE_SUPPORT_POINTS, dim))
        return ot.lp.free_support_barycenter(locs, ws, x0, weights=np.array(weights), numItermax=50)

    xs, sec = timed(pot_free_support)
    add("POT free_support_barycenter", bw2_uvp(torch.as_tensor(xs), bar_mean, bar_cov), sec,
        {"samples_per_input": FREE_SUPPORT_POINTS, "support": FREE_SUPPORT_POINTS, "scored_on": "support points"})

    def weight_average():
        gens = []
        for m, c in zip(means, covs):  # input k as the exact linear generator z ↦ Σ_k^{1/2} z + m_k
            g = nn.Linear(dim, dim)
            with torch.no_grad():
                g.weight.copy_(sqrtm_spd(c))
                g.bias.copy_(m)
            gens.append(g)
        avg = average_models(gens, weights)
        with torch.no_grad():
            return avg(torch.randn(SCORE_SAMPLES, dim))

    x, sec = timed(weight_average)
    add("weight average (linear G_k)", bw2_uvp(x, bar_mean, bar_cov), sec,
        {"note": "base law N(0,I); for the location-scatter family the averaged generator's moments are what is scored"})


def time_to_quality(rows: list[dict]) -> list[dict]:
    """Per hard-family solver run: its curve, the target (UVP %, seconds), the first time the
    curve is at or below the target UVP, and whether the final UVP met it within the time."""
    out = []
    for r in rows:
        if r["family"] != "hard" or "curve" not in r:
            continue
        target, limit = HARD_TARGETS.get(r["dim"], (None, None))
        first = next((t for t, _, u in r["curve"] if target is not None and u <= target), None)
        first_cpu = next((c for _, c, u in r["curve"] if target is not None and u <= target), None)
        out.append({"method": r["method"], "config": r["config"], "dim": r["dim"], "seed": r["seed"],
                    "target_pct": target, "target_seconds": limit, "first_at_target_s": first,
                    "first_at_target_cpu_s": first_cpu, "final_pct": r["bw2_uvp_pct"], "seconds": r["seconds"],
                    "cpu_seconds": r["cpu_seconds"], "stopped_at": r["stopped_at"], "stop_reason": r["stop_reason"],
                    "met": None if target is None else bool(r["bw2_uvp_pct"] <= target and r["seconds"] <= limit),
                    "met_cpu": None if target is None else bool(r["bw2_uvp_pct"] <= target and r["cpu_seconds"] <= limit),
                    "loadavg_end": r["loadavg_end"], "curve": r["curve"]})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        labelled = False
        for family, style in (("gaussian", "-o"), ("location-scatter", "--s"), ("hard", ":^")):
            pts = sorted((r["dim"], max(r["bw2_uvp_pct"], 1e-4)) for r in rows
                         if r["method"] == method and r["family"] == family and r.get("seed", 0) == 0
                         and not str(r.get("config", "")).startswith("legacy"))
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", label=None if labelled else method,
                        alpha=1.0 if family == "gaussian" else 0.6)
                labelled = True
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("BW2-UVP, % (log)")
    ax.set_title("W2 barycenter, BW2-UVP (seed 0). solid: Gaussian, dashed: location-scatter,\n"
                 "both N=3, α=(¼,½,¼); dotted: hard (N=5, condition 100, off-centre)", fontsize=8)
    ax.legend(fontsize=7)
    configs = list(dict.fromkeys((t["method"], t["config"].split(",")[0]) for t in time_to_quality(rows)))
    dims = sorted({t["dim"] for t in time_to_quality(rows)})
    labelled, starred = set(), set()
    for t in time_to_quality(rows):
        c = configs.index((t["method"], t["config"].split(",")[0]))
        ax2.plot([p[1] for p in t["curve"]], [p[2] for p in t["curve"]], ("-", "--", ":", "-.")[dims.index(t["dim"]) % 4],
                 marker="o", ms=3,
                 color=f"C{c}", alpha=0.8, label=None if c in labelled else f"{t['method']} {t['config'].split(',')[0]}")
        labelled.add(c)
        if t["target_pct"] is not None and t["dim"] not in starred:
            ax2.plot([t["target_seconds"]], [t["target_pct"]], "k*", ms=9)
            starred.add(t["dim"])
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("solver CPU seconds (1 thread, scoring excluded; wall seconds and load average are in the JSON)")
    ax2.set_ylabel("BW2-UVP, % (log)")
    ax2.set_title("hard family, time to quality (one line per run); line style by d (" + ", ".join(
        f"{('solid', 'dashed', 'dotted', 'dashdot')[i % 4]}: {d}" for i, d in enumerate(dims)) + "); ★ target", fontsize=8)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def write(args: argparse.Namespace, rows: list[dict], commands: list[str], total: float,
          complete: bool) -> None:
    out = {
        "benchmark": "gaussian_barycenter", "quick": args.quick, "weights": WEIGHTS,
        "hard_weights": HARD_WEIGHTS, "w2_samples": f"exact-OT W2, {W2_POINTS} vs {W2_POINTS} points, mean of {W2_DRAWS} draws",
        "score_samples": SCORE_SAMPLES, "total_seconds": round(total, 1), "complete": complete,
        "metric": "BW2-UVP % = 100 * W2^2(N(mean, cov) fitted to samples, true) / tr(true cov) (seed 001 eq. 11)",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} CPU, "
                   f"{torch.get_num_threads()} thread(s), timed while other jobs shared the machine",
        "loadavg_at_write": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/gaussian_barycenter.py " + " ".join(sys.argv[1:]),
        "parts": commands,
        "hard_targets": {str(d): {"bw2_uvp_pct": u, "seconds": t} for d, (u, t) in HARD_TARGETS.items()},
        "time_to_quality": time_to_quality(rows),
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d in {2, 8}, non-Gaussian at d=2, hard at d=16")
    ap.add_argument("--json", required=True, help="output JSON path")
    ap.add_argument("--png", default=None, help="plot path (default: JSON path with .png)")
    ap.add_argument("--dims", default=None, help="comma-separated Gaussian dimensions (overrides the preset)")
    ap.add_argument("--family-dims", default=None, help="comma-separated location-scatter dimensions ('' for none)")
    ap.add_argument("--hard-dims", default=None, help="comma-separated hard-family dimensions ('' for none)")
    ap.add_argument("--hard-seeds", default=",".join(map(str, range(HARD_SEEDS))),
                    help="comma-separated hard-family problem seeds for WIN default (other methods run with seed 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the machine is shared)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART.json",
                    help="do not run: merge the rows of partial runs (e.g. split by --dims) into --json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dims = [2, 8] if args.quick else [2, 4, 8, 16, 32, 64]
    family_dims = [2] if args.quick else [2, 16]
    hard_dims = [16] if args.quick else [16, 64, 128]
    if args.dims is not None:
        dims = [int(d) for d in args.dims.split(",") if d]
    if args.family_dims is not None:
        family_dims = [int(d) for d in args.family_dims.split(",") if d]
    if args.hard_dims is not None:
        hard_dims = [int(d) for d in args.hard_dims.split(",") if d]
    t0 = time.perf_counter()
    rows, commands = [], []
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        commands = [part["command"] for part in parts]
    else:  # the JSON is rewritten after every row, so a cut-off run keeps what finished
        seeds = tuple(int(s) for s in args.hard_seeds.split(",") if s)
        for family, ds in (("hard", hard_dims), ("gaussian", dims), ("location-scatter", family_dims)):
            for d in ds:
                run_problem(family, d, args.quick, rows,
                            lambda: write(args, rows, commands, time.perf_counter() - t0, complete=False), seeds)
    total = sum(p["total_seconds"] for p in parts) if args.merge else time.perf_counter() - t0
    dims = sorted({r["dim"] for r in rows})
    print(f"\n{'family':16s} {'method':32s} " + " ".join(f"d={d:<6d}" for d in dims))
    for family in dict.fromkeys(r["family"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            vals = {r["dim"]: r["bw2_uvp_pct"] for r in rows if r["family"] == family and r["method"] == method}
            if vals:
                print(f"{family:16s} {method:32s} " + " ".join(f"{vals[d]:<8.3f}" if d in vals else " " * 8 for d in dims))
    print(f"total {total:.0f} s")
    write(args, rows, commands, total, complete=True)
    plot(rows, Path(args.png) if args.png else Path(args.json).with_suffix(".png"))


if __name__ == "__main__":
    main()
