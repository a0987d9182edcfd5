"""BW2-UVP of continuous W2 barycenter solvers against the exact Gaussian barycenter (issue 5).

Inputs (seeds 001/004): N = 3 measures, weights (1/4, 1/2, 1/4), zero means, covariances
R·diag(exp(linspace(log .5, log 2)))·Rᵀ with Haar-random R; plus a non-Gaussian
location-scatter family (uniform cube pushed by Σ_k^{1/2}, true barycenter known by
construction, see edgegan/barycenter/gaussian.py); and a hard family (issue 17): N = 5 inputs,
weights (.05, .1, .15, .3, .4), means of scale 3, each input's own eigenvalues log-uniform in
[0.05, 5] (condition number 100). Methods, all run here:

* WIN (seed 004 Alg. 1) and NWB (seed 001 Alg. 1) from samplers, 100k generated samples scored,
  on standardised inputs (the default); on the hard family also WIN on raw inputs (the paper's
  setting) and on location-scatter WIN with ``init="gaussian"``, both starts also scored by
  exact-OT W2 between 2k generated and 2k true-barycenter samples (mean of 3 draws);
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
HARD_ITERS = {True: lambda d: 12, False: lambda d: 16 if d <= 32 else 20}  # caps; ``tol`` may stop earlier
HARD_TOL = 0.05  # % BW2-UVP units: stop once G's moments move less than this in one outer iteration
PAPER_SETTING_DIMS = {True: (16,), False: ()}  # the paper-setting contrast runs in the quick preset only
SCORE_SAMPLES = 100_000
POT_FIT_SAMPLES = 20_000
FREE_SUPPORT_POINTS = 500


def win_config(dim: int, quick: bool, family: str) -> WINConfig:
    """Paper K_G/K_T/K_v and learning rates; batch 256 (paper 1024) and few outer iterations
    to fit a shared 2-core CPU: 6 quick, 8 full, 5 at d ≥ 32 (the reference runs ~50); on the
    hard family up to HARD_ITERS with the moment-change stop ``tol``."""
    if family == "hard":
        return WINConfig(outer_iters=HARD_ITERS[quick](dim), tol=HARD_TOL, batch_size=256, seed=dim)
    iters = 6 if quick else (8 if dim <= 16 else 5)
    return WINConfig(outer_iters=iters, batch_size=256, seed=dim)


def nwb_config(dim: int, quick: bool) -> NWBConfig:
    """Reference-code K_1/K_2, lr, batch; width max(32, 2d); K_3 cut to the CPU budget
    (150 quick, 200 full, 100 at d ≥ 32; the reference trains for 80 epochs)."""
    k3 = 150 if quick else (200 if dim <= 16 else 100)
    return NWBConfig(k3=k3, hidden=max(32, 2 * dim), log_every=50, seed=dim)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def problem(family: str, dim: int):
    """(samplers, weights, bar_mean, bar_cov, barycenter sampler or None) of one benchmark problem."""
    if family == "hard":
        means, covs = hard_gaussian_benchmark(dim, len(HARD_WEIGHTS), seed=1000 + dim)
        bar_mean, bar_cov = exact_gaussian_barycenter(means, covs, HARD_WEIGHTS)
        return gaussian_samplers(means, covs, seed=2000 + dim), HARD_WEIGHTS, bar_mean, bar_cov, None, (means, covs)
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


def run_problem(family: str, dim: int, quick: bool, rows: list[dict], saved) -> None:
    """Append this problem's rows to ``rows``, calling ``saved()`` after each (partial results survive)."""
    samplers, weights, bar_mean, bar_cov, bar_sampler, (means, covs) = problem(family, dim)

    def add(method: str, uvp: float, seconds: float, settings: dict | None = None, **extra) -> None:
        rows.append({"method": method, "family": family, "dim": dim, "n_inputs": len(samplers),
                     "bw2_uvp_pct": round(uvp, 5), "seconds": round(seconds, 2), "settings": settings or {}, **extra})
        saved()
        more = "".join(f"  {k}={v}" for k, v in extra.items() if not isinstance(v, list))
        print(f"{family:16s} d={dim:3d} {method:32s} UVP {uvp:9.4f} %  {seconds:8.1f} s{more}", flush=True)

    torch.manual_seed(dim)
    add("identity start N(0,I)", bw2_uvp(torch.randn(SCORE_SAMPLES, dim), bar_mean, bar_cov), 0.0)

    def w2_solver(method: str, solve, cfg) -> None:
        trace, scoring = [], [0.0]

        def score(it, res):  # per-round UVP for the diagnosis; its time is not the solver's
            t0 = time.perf_counter()
            trace.append(round(bw2_uvp(res.generator.sample(SCORE_SAMPLES), bar_mean, bar_cov), 5))
            print(f"  {method} round {it}: UVP {trace[-1]:.4f} %", flush=True)
            scoring[0] += time.perf_counter() - t0

        res, sec = timed(lambda: solve(samplers, weights, cfg=cfg, log=True, callback=score))
        hist = res.log["history"]
        extra = {"iterations": res.log["iterations"], "converged": res.log["converged"],
                 "uvp_per_round": trace, "residual_per_round": [round(r, 6) for r in hist["residual"]],
                 "moment_change_per_round": [round(r, 5) for r in hist["moment_change_pct"]]}
        if bar_sampler is not None:
            extra["w2_samples"] = round(sample_w2(res.generator.sample, bar_sampler), 5)
        add(method, trace[-1], sec - scoring[0], to_dict(cfg), **extra)

    cfg = win_config(dim, quick, family)
    w2_solver("WIN", win_barycenter, cfg)
    if family == "location-scatter":
        w2_solver("WIN init=gaussian", win_barycenter, dataclasses.replace(cfg, init="gaussian"))
        add("true barycenter (sampling floor)", bw2_uvp(bar_sampler(SCORE_SAMPLES), bar_mean, bar_cov), 0.0,
            w2_samples=round(sample_w2(bar_sampler, bar_sampler), 5))
    if family == "hard" and dim in PAPER_SETTING_DIMS[quick]:
        paper = dataclasses.replace(cfg, centre=False, rescale=False, lr_g=1e-4, lr_g_decay=1.0, tol=0.0,
                                    outer_iters=8)
        w2_solver("WIN paper setting (raw inputs)", win_barycenter, paper)
    w2_solver("NWB", nwb_barycenter, nwb_config(dim, quick))

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


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        labelled = False
        for family, style in (("gaussian", "-o"), ("location-scatter", "--s"), ("hard", ":^")):
            pts = sorted((r["dim"], max(r["bw2_uvp_pct"], 1e-4)) for r in rows
                         if r["method"] == method and r["family"] == family)
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", label=None if labelled else method,
                        alpha=1.0 if family == "gaussian" else 0.6)
                labelled = True
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("BW2-UVP, % (log)")
    ax.set_title("W2 barycenter, BW2-UVP. solid: Gaussian, dashed: location-scatter (uniform cube),\n"
                 "both N=3, α=(¼,½,¼); dotted: hard (N=5, condition 100, off-centre)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def write(args: argparse.Namespace, rows: list[dict], commands: list[str], total: float,
          complete: bool) -> None:
    out = {
        "benchmark": "gaussian_barycenter", "quick": args.quick, "weights": WEIGHTS,
        "hard_weights": HARD_WEIGHTS, "w2_samples": f"exact-OT W2, {W2_POINTS} vs {W2_POINTS} points, mean of {W2_DRAWS} draws",
        "score_samples": SCORE_SAMPLES, "total_seconds": round(total, 1), "complete": complete,
        "metric": "BW2-UVP % = 100 * W2^2(N(mean, cov) fitted to samples, true) / tr(true cov) (seed 001 eq. 11)",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} CPU, 1 thread, "
                   "timed while other jobs shared the machine",
        "command": "python benchmarks/gaussian_barycenter.py " + " ".join(sys.argv[1:]),
        "parts": commands,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d in {2, 8}, non-Gaussian at d=2, hard at d=16, shorter training")
    ap.add_argument("--json", required=True, help="output JSON path")
    ap.add_argument("--png", default=None, help="plot path (default: JSON path with .png)")
    ap.add_argument("--dims", default=None, help="comma-separated Gaussian dimensions (overrides the preset)")
    ap.add_argument("--family-dims", default=None, help="comma-separated location-scatter dimensions ('' for none)")
    ap.add_argument("--hard-dims", default=None, help="comma-separated hard-family dimensions ('' for none)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART.json",
                    help="do not run: merge the rows of partial runs (e.g. split by --dims) into --json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dims = [2, 8] if args.quick else [2, 4, 8, 16, 32, 64]
    family_dims = [2] if args.quick else [2, 16]
    hard_dims = [16] if args.quick else [4, 8, 16, 32, 64]
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
        for family, ds in (("gaussian", dims), ("location-scatter", family_dims), ("hard", hard_dims)):
            for d in ds:
                run_problem(family, d, args.quick, rows,
                            lambda: write(args, rows, commands, time.perf_counter() - t0, complete=False))
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
