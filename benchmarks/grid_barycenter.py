"""Amortized grid barycenters (seed 002) against POT's convolutional Sinkhorn and the
Euclidean mean, for n ∈ {2, 3, 4} inputs on held-out CSG shapes and on upsampled digits.

    benchmarks/grid_barycenter.py [--quick] --json OUT [--png PNG] [--model CKPT] [--device auto]

The reference is ``ot.bregman.convolutional_barycenter2d`` (reg 0.004, POT's default stopThr),
run one barycenter at a time; the DCNN is timed both batched (all problems of one (data set, n)
in one forward pass) and one at a time. All CPU timings use one thread.
Rows: {"method", "n_inputs", "dataset", "kl", "l1", "ms_per_barycenter", ...}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgegan.barycenter.grid import (  # noqa: E402
    DEFAULT_REG,
    euclidean_grid_barycenter,
    gibbs_blur,
    grid_kl,
    grid_l1,
    load_grid_model,
    predict_grid_barycenters,
    sinkhorn_grid_barycenter,
)
from edgegan.barycenter.grid_data import digit_histograms, random_shapes  # noqa: E402
from edgegan.device import resolve_device  # noqa: E402

HELD_OUT_SEED = 10_000  # the shipped model's shapes come from seed 0


def problems(pool: np.ndarray, n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` barycenter problems: (count, n, H, W) distinct inputs, (count, n) Dirichlet(1) weights."""
    idx = np.stack([rng.choice(len(pool), n, replace=False) for _ in range(count)])
    return pool[idx], rng.dirichlet(np.ones(n), size=count)


def timed(fn, reps: int = 1) -> tuple[object, float]:
    """Result of ``fn()`` and its best wall time over ``reps`` runs, in seconds."""
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    torch.set_num_threads(1)
    model = load_grid_model(args.model)
    size = 64
    count = args.count or (12 if args.quick else 40)
    rng = np.random.default_rng(args.seed)
    pools = {"shapes": random_shapes(np.random.default_rng(HELD_OUT_SEED), 300, size),
             "digits": digit_histograms(size).numpy()}
    devices = [torch.device("cpu")]
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        devices.append(dev)
    rows, examples = [], {}
    for dataset, pool in pools.items():
        for n in (2, 3, 4):
            mu, lam = problems(pool, n, count, rng)
            ref, t_ref = [], 0.0
            for i in range(count):
                b, dt = timed(lambda: sinkhorn_grid_barycenter(mu[i], lam[i], reg=DEFAULT_REG))
                ref.append(b)
                t_ref += dt
            ref_t = torch.tensor(np.stack(ref))
            euc, t_euc = timed(lambda: np.stack([euclidean_grid_barycenter(mu[i], lam[i]) for i in range(count)]))
            # the Euclidean mean with the reference's entropic blur: tells blurring from moving mass
            blur, t_blur = timed(lambda: gibbs_blur(torch.tensor(euc), DEFAULT_REG))
            results = {"grid-sinkhorn": (ref_t, t_ref, "cpu", 1),
                       "euclidean-mean": (torch.tensor(euc), t_euc, "cpu", 1),
                       "euclidean-mean-blurred": (blur, t_euc + t_blur, "cpu", count)}
            mu_t, lam_t = torch.tensor(mu, dtype=torch.float32), torch.tensor(lam, dtype=torch.float32)
            for d in devices:
                net = model.to(d)
                x, w = mu_t.to(d), lam_t.to(d)

                def batched():
                    out = predict_grid_barycenters(net, x, w)
                    if d.type == "cuda":
                        torch.cuda.synchronize()
                    return out.cpu()

                def single():
                    out = torch.cat([predict_grid_barycenters(net, x[i:i + 1], w[i:i + 1]) for i in range(count)])
                    if d.type == "cuda":
                        torch.cuda.synchronize()
                    return out.cpu()

                batched()  # warm-up (allocator, kernels)
                pred, t_b = timed(batched, reps=3)
                _, t_s = timed(single, reps=1)
                results[f"grid-dcnn-batched@{d.type}"] = (pred, t_b, d.type, count)
                results[f"grid-dcnn@{d.type}"] = (pred, t_s, d.type, 1)
            model.to("cpu")
            for name, (pred, secs, dev_name, batch) in results.items():
                ms = 1000 * secs / count
                rows.append({"method": name.split("@")[0], "n_inputs": n, "dataset": dataset,
                             "kl": float(grid_kl(ref_t, pred).mean()), "l1": float(grid_l1(ref_t, pred).mean()),
                             "ms_per_barycenter": ms, "speedup_vs_sinkhorn": 1000 * t_ref / count / ms,
                             "device": dev_name, "batch": batch, "num_barycenters": count})
            examples[(dataset, n)] = (mu[0], lam[0], ref[0], results["grid-dcnn-batched@cpu"][0][0].numpy(), euc[0])
    meta = {"count_per_cell": count, "reg": DEFAULT_REG, "grid": f"{size}x{size}", "torch_threads": 1,
            "model": str(args.model or "shipped grid_dcnn_64.pt"), "quick": bool(args.quick),
            "timing_note": "one CPU thread, other jobs running on the 2-core machine; POT one barycenter "
                           "at a time, DCNN batched = all problems of one (data set, n) in one forward pass"}
    return rows, {"meta": meta, "examples": examples}


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets: batched DCNN >= 20× POT at 64×64 on CPU; KL below the Euclidean mean's."""
    verdicts = []
    get = {(r["method"], r["n_inputs"], r["dataset"], r["device"]): r for r in rows}
    for (method, n, ds, dev), r in sorted(get.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if method != "grid-dcnn-batched" or dev != "cpu":
            continue
        euc = get[("euclidean-mean", n, ds, "cpu")]
        verdicts.append(f"{ds:6s} n={n}: speed-up {r['speedup_vs_sinkhorn']:6.1f}× "
                        f"({'ok' if r['speedup_vs_sinkhorn'] >= 20 else 'MISSED'} >= 20×), "
                        f"KL {r['kl']:.4f} vs Euclidean {euc['kl']:.4f} "
                        f"({'ok' if r['kl'] < euc['kl'] else 'MISSED'})")
    return verdicts


def save_png(path: Path, examples: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4 + 3  # up to 4 inputs, reference, DCNN, Euclidean
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.6 * cols, 1.7 * len(examples)))
    for r, ((ds, n), (mu, lam, ref, pred, euc)) in enumerate(examples.items()):
        panels = [(m, f"λ={w:.2f}") for m, w in zip(mu, lam)] + [(None, "")] * (4 - n) + [
            (ref, "POT Sinkhorn"), (pred, "DCNN"), (euc, "Euclidean")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if img is not None:
                ax.imshow(img, cmap="magma")
                ax.set_title(title, fontsize=7)
        axes[r, 0].text(-8, 32, f"{ds}\nn={n}", fontsize=7, ha="right", va="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 barycenters per (data set, n) instead of 40")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--png", default="benchmarks/results/grid_barycenter.png", help="side-by-side figure")
    p.add_argument("--model", default=None, help="checkpoint [default: the shipped 64×64 model]")
    p.add_argument("--count", type=int, default=0, help="override barycenters per (data set, n)")
    p.add_argument("--device", default="auto", help="also time the DCNN on this GPU when it is CUDA")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    rows, extra = run(args)
    print(f"{'dataset':8s} {'n':>2s} {'method':22s} {'dev':4s} {'KL':>8s} {'L1':>7s} {'ms/bary':>9s} {'speed-up':>9s}")
    for r in rows:
        print(f"{r['dataset']:8s} {r['n_inputs']:2d} {r['method']:22s} {r['device']:4s} {r['kl']:8.4f} "
              f"{r['l1']:7.4f} {r['ms_per_barycenter']:9.2f} {r['speedup_vs_sinkhorn']:8.1f}×")
    verdicts = check_targets(rows)
    print("\n".join(["targets:"] + verdicts))
    print(f"total {time.time() - t0:.0f} s")
    if args.png:
        save_png(Path(args.png), extra["examples"])
        print(f"wrote {args.png}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "targets": verdicts, **extra["meta"]}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
