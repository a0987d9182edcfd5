"""Whole Data ablation (issue 26): WGAN-GP on all digits, 1000 generator iterations, 3 seeds.

Widths, step sizes (two-timescale ratio) and critic warm-up vary by run; the raw G and two weight
averages (EMA 0.99, 0.999) of the same run are scored at 250/500/1000 iterations by the
benchmark's evaluator (feature-FID vs the whole data set, 1000 samples).

    OMP_NUM_THREADS=1 .venv/bin/python notes/issue-26-whole.py OUT.json name=gw,dw,lr,ratio,warmup ...
"""
import json
import sys
import time

import torch

from edgegan.adapt.fast_adapt import tensor_sampler
from edgegan.data import load_digits
from edgegan.eval import evaluator_for
from edgegan.gan import MultiCriticWGAN, WGANConfig
from edgegan.gan.train import WeightAverage
from edgegan.nn import build_gan

torch.set_num_threads(1)
out, specs = sys.argv[1], sys.argv[2:]
x = load_digits().x
ev = evaluator_for("digits")
res = {}
for spec in specs:
    name, vals = spec.split("=")
    gw, dw, lr, ratio, warm = vals.split(",")
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        G = build_gan("mlp", (1, 8, 8), 32, width=int(gw))[0]
        D = build_gan("mlp", (1, 8, 8), 32, width=int(dw))[1]
        cfg = WGANConfig(lr=float(lr), beta2=0.9, critic_lr_ratio=float(ratio), critic_warmup=int(warm))
        tr = MultiCriticWGAN(G, [D], [tensor_sampler(x)], None, cfg)
        avgs = {"ema0.99": WeightAverage(G, 0.99), "ema0.999": WeightAverage(G, 0.999)}
        pts = {}
        t0 = time.perf_counter()
        for it in range(1, 1001):
            tr.step()
            for a in avgs.values():
                a.update(G)
            if it in (250, 500, 1000):
                pts[it] = {"raw": ev.score(G.eval(), [2, 5, 8], 1000).fid_whole,
                           **{k: ev.score(a.model.eval(), [2, 5, 8], 1000).fid_whole for k, a in avgs.items()}}
                G.train()
        res.setdefault(name, {})[seed] = {"points": pts, "seconds": time.perf_counter() - t0}
        print(name, seed, {k: {m: round(v, 1) for m, v in p.items()} for k, p in pts.items()},
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        json.dump(res, open(out, "w"), indent=1)
