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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' own training bodies


def ring(seed: int) -> dict:
    """tests/test_gan.py::test_ring_wgan_gp_halves_exact_w1: ratio W1_end / W1_start."""
    import torch
    from test_gan import train_ring

    w_start, w_end, _ = train_ring(seed, torch.device("cpu"))
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


def ternary_joint(seed: int) -> dict:
    """tests/test_ternary.py::test_joint_weight_and_threshold_training_recovers_ternary_target:
    final / first MSE after 200 Adam steps (and whether the codes are recovered)."""
    import torch
    from test_ternary import fit_ternary_target

    layer, w_true, start, final = fit_ternary_target(seed)
    return {"value": final / start, "codes_recovered": bool(torch.equal(layer.codes().float(), torch.sign(w_true)))}


def _membership(seed: int):
    import dataclasses

    from edgegan.data import load_digits, partition_by_classes
    from edgegan.tdgan import TDGANCloud, TDGANConfig, TDGANEdge
    from edgegan.tdgan.harness import build_generator

    cfg = TDGANConfig(batch_size=16, remind_batch_size=32, seed=5 + seed)
    parts = partition_by_classes(load_digits(), [[0, 1], [2, 3], [4]], samples_per_node=[80, 120, 50], seed=1)

    def make(c):
        cloud = TDGANCloud(build_generator(c, (1, 8, 8), 10), c)
        return cloud, {f"n{i}": TDGANEdge(f"n{i}", q, cfg=c) for i, q in enumerate(parts)}

    def step(cloud, edges):
        return cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])

    return cfg, make, step, dataclasses.replace


def membership_drift(seed: int) -> dict:
    """tests/test_tdgan_membership.py::test_reminding_pulls_G_back_toward_G_prev: drift(λ=1) / drift(λ=0)."""
    import torch

    cfg, make, step, replace = _membership(seed)
    drift = {}
    for lam in (0.0, 1.0):
        cloud, edges = make(replace(cfg, reminding_weight=lam))
        cloud.join(edges["n0"].info())
        for _ in range(30):
            step(cloud, edges)
        cloud.leave("n0")
        cloud.join(edges["n1"].info())
        for _ in range(150):
            step(cloud, edges)
        u = torch.randn(200, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            drift[lam] = float((cloud.G(u, y) - cloud.G_prev(u, y)).pow(2).sum(1).mean())
    return {"value": drift[1.0] / drift[0.0], "drift0": drift[0.0], "drift1": drift[1.0]}


def membership_remind(seed: int) -> dict:
    """tests/test_tdgan_membership.py::test_reminding_loss_is_zero_after_freeze_and_grows_as_G_moves:
    mean reminding loss of steps 51-60 / mean of steps 2-6 after the join."""
    cfg, make, step, _ = _membership(seed)
    cloud, edges = make(cfg)
    cloud.join(edges["n0"].info())
    for _ in range(20):
        step(cloud, edges)
    cloud.leave("n0")
    cloud.join(edges["n1"].info())
    losses = [step(cloud, edges)["reminding_loss"] for _ in range(60)]
    return {"value": (sum(losses[-10:]) / 10) / max(sum(losses[1:6]) / 5, 1e-6)}


def grid_train(seed: int) -> dict:
    """tests/test_grid_barycenter.py::test_training_loss_falls_and_data_set_is_cached: last / first epoch loss."""
    import os
    import tempfile

    from edgegan.barycenter.grid import GridTrainConfig, train_grid_net
    from edgegan.barycenter.grid_data import GridDataConfig, make_pair_dataset

    os.environ["EDGEGAN_CACHE"] = tempfile.mkdtemp(prefix="margins-")
    data = make_pair_dataset(GridDataConfig(size=32, num_shapes=12, num_pairs=48, max_ops=6, seed=3 + seed))
    _, rows = train_grid_net(data, GridTrainConfig(epochs=7, batch_size=8, channels=(4, 8, 16), pool=1,
                                                   prior_reg=0.0, seed=seed))
    return {"value": rows[-1]["loss"] / rows[0]["loss"]}


def classifier(seed: int) -> dict:
    """tests/test_eval.py: the feature classifier trained from scratch (a fresh cache) with ``seed``:
    validation accuracy (value), the real half-split feature-FID and the class-3 FID ratio the
    evaluator tests bound."""
    import os
    import tempfile

    import torch

    from edgegan.data import load_digits
    from edgegan.eval import Evaluator, get_classifier

    os.environ["EDGEGAN_CACHE"] = tempfile.mkdtemp(prefix="margins-")
    digits = load_digits()
    clf = get_classifier(digits, seed=seed)
    ev = Evaluator(digits, clf)
    half = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:900]
    real = ev.score_samples(digits.x[half], classes=[3])
    threes = ev.score_samples(digits.x[digits.y == 3], classes=[3])
    return {"value": clf.val_accuracy, "fid_real_half": real.fid_whole, "class_tv_real": real.class_tv,
            "threes_fid_ratio": threes.fid_target / threes.fid_whole}


STATS = {"classifier": classifier, "ring": ring, "digits_fid": digits_fid, "ternary_joint": ternary_joint,
         "membership_drift": membership_drift, "membership_remind": membership_remind, "grid_train": grid_train}


def _cell(stat: str, seeds: list[int], threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    return [{"seed": s, **STATS[stat](s)} for s in seeds]


def summarise(stat: str, runs: list[dict]) -> dict:
    """min / median / max of the statistic over ``runs`` (rows of capability, threads, seed, value, …)."""
    vals = [r["value"] for r in runs]
    return {"doc": STATS[stat].__doc__, "n": len(vals), "min": min(vals), "median": statistics.median(vals),
            "max": max(vals), "runs": runs}


def store(path: Path, stat: str, row: dict) -> None:
    """Set ``path[stat] = row`` and keep every other key: the file is re-read under an exclusive lock
    just before the write (other runs update other statistics concurrently) and replaced atomically."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock: the folder, since the file itself is replaced
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        table = json.loads(path.read_text()) if path.exists() else {}
        table[stat] = row
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    finally:
        os.close(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stats", default=",".join(STATS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", default="1")
    p.add_argument("--caps", default=",".join(CAPABILITIES))
    p.add_argument("--quick", action="store_true", help="3 seeds, 1 thread")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/test_margins.json"))
    p.add_argument("--cell", help=argparse.SUPPRESS)  # child: "stat:threads", prints one JSON line
    a = p.parse_args(argv)
    if a.cell:
        stat, threads = a.cell.split(":")
        print(json.dumps(_cell(stat, list(range(a.seeds)), int(threads))))
        return 0
    seeds = 3 if a.quick else a.seeds
    threads = [1] if a.quick else [int(t) for t in a.threads.split(",")]
    for stat in a.stats.split(","):
        runs = []
        for cap in a.caps.split(","):
            for t in threads:
                env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(t)}
                out = subprocess.run([sys.executable, __file__, "--cell", f"{stat}:{t}", "--seeds", str(seeds)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                runs += [{"capability": cap, "threads": t, **r} for r in json.loads(out.splitlines()[-1])]
                row = summarise(stat, runs)
                store(a.json, stat, row)  # written after every cell: a long run keeps what ran
        print(f"{stat:18s} n={row['n']:3d} min={row['min']:.4g} median={row['median']:.4g} max={row['max']:.4g}",
              flush=True)
        for r in runs:
            print(f"  {r['capability']:8s} t={r['threads']} seed={r['seed']} value={r['value']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
