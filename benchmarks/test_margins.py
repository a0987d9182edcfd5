"""Statistic distributions behind the stochastic tests' thresholds (issue 16).

Each *statistic* reproduces the body of one training test with a seed parameter and returns the
number the test compares to its threshold. Every (statistic, capability, threads) cell runs in a
fresh subprocess with ``ATEN_CPU_CAPABILITY`` set, so the CPU kernels differ as on other machines.

    benchmarks/test_margins.py [--quick] [--stats ring,...] [--seeds 5] [--threads 1,2] --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CAPABILITIES = ["default", "avx2", "avx512"]


def ring(seed: int) -> dict:
    """tests/test_gan.py::test_ring_wgan_gp_cuts_exact_w1_to_a_third: ratio W1_end / W1_start."""
    import torch

    from edgegan.data import ring8_sampler
    from edgegan.eval import exact_w1
    from edgegan.gan import MultiCriticWGAN, WGANConfig
    from edgegan.nn import build_gan

    torch.manual_seed(seed)
    sampler = ring8_sampler(generator=torch.Generator().manual_seed(seed + 1))
    G, D = build_gan("mlp", (2,), latent_dim=2, width=128)
    ref = sampler(512)
    w_start = exact_w1(G.sample(512), ref)
    trainer = MultiCriticWGAN(G, [D], [sampler], None,
                              WGANConfig(lr=1e-4, beta1=0.0, beta2=0.9, batch_size=256))
    trainer.train(1000)
    w_end = exact_w1(G.sample(512), ref)
    return {"value": w_end / w_start, "w_start": w_start, "w_end": w_end}


def digits_fid(seed: int) -> dict:
    """tests/test_gan.py::test_digits_feature_fid_falls_toward_real_split: final / noise FID."""
    import torch

    from edgegan.data import load_digits
    from edgegan.eval import FeatureFID, get_classifier
    from edgegan.gan import MultiCriticWGAN, WGANConfig
    from edgegan.nn import build_gan

    digits = load_digits()
    clf = get_classifier(digits)
    torch.manual_seed(seed)
    perm = torch.randperm(len(digits))
    fid = FeatureFID(clf, digits.x[perm[:900]])
    noise = fid(torch.rand(900, 1, 8, 8) * 2 - 1)
    G, D = build_gan("mlp", (1, 8, 8), 32, width=256)
    trainer = MultiCriticWGAN(G, [D], [digits.sampler(64)], None, WGANConfig(lr=2e-4, beta2=0.9))
    trainer.train(150)
    early = fid(G.sample(900))
    trainer.train(350)
    final = fid(G.sample(900))
    return {"value": final / noise, "final_over_early": final / early, "noise": noise,
            "early": early, "final": final}


STATS = {"ring": ring, "digits_fid": digits_fid}


def _cell(stat: str, seeds: list[int], threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    return [{"seed": s, **STATS[stat](s)} for s in seeds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stats", default=",".join(STATS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", default="1")
    p.add_argument("--caps", default=",".join(CAPABILITIES))
    p.add_argument("--quick", action="store_true", help="3 seeds, 1 thread")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/test_margins.json"))
    p.add_argument("--cell", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.cell:  # child: stat:threads, seeds on stdin-free argv
        stat, threads = a.cell.split(":")
        print(json.dumps(_cell(stat, list(range(a.seeds)), int(threads))))
        return 0
    seeds = 3 if a.quick else a.seeds
    threads = [1] if a.quick else [int(t) for t in a.threads.split(",")]
    old = json.loads(a.json.read_text()) if a.json.exists() else {}
    for stat in a.stats.split(","):
        runs = []
        for cap in a.caps.split(","):
            for t in threads:
                env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(t)}
                out = subprocess.run([sys.executable, __file__, "--cell", f"{stat}:{t}", "--seeds", str(seeds)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                runs += [{"capability": cap, "threads": t, **r} for r in json.loads(out.splitlines()[-1])]
        vals = [r["value"] for r in runs]
        old[stat] = {"doc": STATS[stat].__doc__, "n": len(vals), "min": min(vals),
                     "median": statistics.median(vals), "max": max(vals), "runs": runs}
        print(f"{stat:12s} n={len(vals):3d} min={min(vals):.4g} median={statistics.median(vals):.4g} "
              f"max={max(vals):.4g}", flush=True)
        for r in runs:
            print(f"  {r['capability']:8s} t={r['threads']} seed={r['seed']} value={r['value']:.4g}")
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(old, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
