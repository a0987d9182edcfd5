"""Statistic distributions behind the stochastic tests' thresholds (issue 16).

Each *statistic* reproduces the body of one training test with a seed parameter and returns the
number the test compares to its threshold. Every (statistic, capability, threads) cell runs in a
fresh subprocess with ``ATEN_CPU_CAPABILITY`` set, so the CPU kernels differ as on other machines.

    benchmarks/test_margins.py [--quick] [--stats ring,...] [--seeds 5] [--first-seed 0] [--threads 1,2]
                               [--caps default,avx2,avx512] [--keep] --json OUT
    benchmarks/test_margins.py --report [--stats ...]  # stored runs per thread count: n, min/median/max
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CAPABILITIES = ["default", "avx2", "avx512"]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' own training bodies


def ring(seed: int) -> dict:
    """tests/test_gan.py::test_ring_wgan_gp_cuts_exact_w1: the smallest W1 / W1_start over the checkpoints
    (600, 700, …, 1000 steps; value), the ratio at each checkpoint, the final one, the median of the last 3
    and the CPU seconds of training."""
    import torch
    from test_gan import RING_CHECKPOINTS, train_ring

    w_start, w, cpu_seconds = train_ring(seed, torch.device("cpu"))
    ratios = [x / w_start for x in w]
    return {"value": min(ratios), "final": ratios[-1], "median_last3": statistics.median(ratios[-3:]),
            "checkpoints": list(RING_CHECKPOINTS), "ratios": ratios, "w_start": w_start,
            "cpu_seconds": cpu_seconds}


def digits_fid(seed: int) -> dict:
    """tests/test_gan.py::test_digits_feature_fid_falls_toward_real_split: final / noise FID (value; bound
    1/10), final / early FID (< 1), the real half-split FID (< 10) and noise FID / 20 (> 10)."""
    from test_gan import digits_fid_run

    from edgegan.data import load_digits
    from edgegan.eval import get_classifier

    digits = load_digits()
    r = digits_fid_run(seed, digits, get_classifier(digits))
    real_split, noise, early, final = r["real_split"], r["noise"], r["early"], r["final"]
    return {"value": final / noise, "final_over_early": final / early, "noise": noise,
            "early": early, "final": final, "real_split": real_split, "noise_over_20": noise / 20}


def ternary_joint(seed: int) -> dict:
    """tests/test_ternary.py::test_joint_weight_and_threshold_training_recovers_ternary_target:
    final / first MSE after 200 Adam steps (and whether the codes are recovered)."""
    import torch
    from test_ternary import fit_ternary_target

    layer, w_true, start, final = fit_ternary_target(seed)
    return {"value": final / start, "codes_recovered": bool(torch.equal(layer.codes().float(), torch.sign(w_true)))}


def membership_drift(seed: int) -> dict:
    """tests/test_tdgan_membership.py::test_reminding_pulls_G_back_toward_G_prev with TDGANConfig seed 5 + seed:
    drift(λ=1) / drift(λ=0) (bound < 1/2)."""
    import dataclasses

    from edgegan.data import load_digits
    from test_tdgan_membership import CFG, membership_parts, reminding_drift

    drift = reminding_drift(membership_parts(load_digits()), dataclasses.replace(CFG, seed=CFG.seed + seed))
    return {"value": drift[1.0] / drift[0.0], "drift0": drift[0.0], "drift1": drift[1.0]}


def membership_remind(seed: int) -> dict:
    """tests/test_tdgan_membership.py::test_reminding_loss_is_zero_after_freeze_and_grows_as_G_moves:
    mean reminding loss of steps 51-60 / mean of steps 2-6 after the join, TDGANConfig seed 5 + seed."""
    import dataclasses

    from edgegan.data import load_digits
    from test_tdgan_membership import CFG, make, membership_parts, step

    cloud, edges = make(membership_parts(load_digits()), dataclasses.replace(CFG, seed=CFG.seed + seed))
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
    """tests/test_eval.py (3 tests): the feature classifier trained from scratch (a fresh cache) with ``seed``:
    validation accuracy (value) and every trained quantity the three tests bound."""
    import os
    import tempfile

    from edgegan.data import load_digits
    from edgegan.eval import get_classifier
    from test_eval import conditional_scores, real_image_scores

    os.environ["EDGEGAN_CACHE"] = tempfile.mkdtemp(prefix="margins-")
    digits = load_digits()
    clf = get_classifier(digits, seed=seed)
    threes_cov, real, threes, _ = real_image_scores(digits, clf)
    _, good, bad = conditional_scores(digits, clf)
    p3 = float((digits.y == 3).float().mean())
    return {"value": clf.val_accuracy, "threes_share": threes_cov["share"][3],
            "threes_confidence": threes_cov["confidence"][3], "fid_real_half": real.fid_whole,
            "class_tv_real": real.class_tv, "classes_covered_real": real.classes_covered,
            "target_share_real": real.target_share, "threes_fid_ratio": threes.fid_target / threes.fid_whole,
            "threes_target_share": threes.target_share, "threes_tv_error": abs(threes.class_tv - (1 - p3)),
            "good_acc_min": min(good.per_class_acc[1], good.per_class_acc[2], good.class_acc),
            "bad_acc_class2": bad.per_class_acc[2], "bad_minus_good_fid": bad.fid_target - good.fid_target}


def tdgan_forgetting(seed: int) -> dict:
    """tests/test_tdgan_forgetting.py: TDGAN's task-1 accuracy (value) and, after task 2, the old-class
    accuracies of TDGAN and fine-tuning and both new-class accuracies, trained with TDGANConfig(seed)."""
    from edgegan.data import load_digits
    from edgegan.eval import get_classifier
    from test_tdgan_forgetting import tdgan_and_finetune, two_tasks

    digits = load_digits()
    td, ft = tdgan_and_finetune(seed, two_tasks(digits, get_classifier(digits)))
    task1 = td["task_acc"][0][0]
    return {"value": task1, "task1_equal": td["task_acc"][0] == ft["task_acc"][0],
            "td_old_minus_task1": td["old_class_acc"][1] - task1, "ft_old_minus_task1": ft["old_class_acc"][1] - task1,
            "td_minus_ft_old": td["old_class_acc"][1] - ft["old_class_acc"][1],
            "new_acc_min": min(td["new_class_acc"][1], ft["new_class_acc"][1]),
            "rejected": td["rejected"] + ft["rejected"]}


def coalescence(seed: int) -> dict:
    """The four tests on tests/coalescence_setup.py's sources, all trained from ``seed`` (one statistic, so
    the sources and the barycenter are trained once per seed): FID(fast adaptation) / FID(Edge-Only)
    (value, test_fast_adapt), ternary / full-precision FA FID and ternary FID at step STEPS / step 0
    (test_fast_adapt), node-0 class share under η = (1, 4) and (4, 1) (test_recursive), and the
    source-only class share of Transfer and barycentric FA at steps 0 and 300 (test_baselines)."""
    from edgegan.data import load_digits
    from edgegan.eval import get_classifier
    from test_baselines import source_only_shares
    from test_fast_adapt import STEPS, fast_adapt_vs_edge_only, ternary_fast_adapt
    from test_recursive import unequal_eta_shares

    digits = load_digits()
    clf = get_classifier(digits)
    f_fa, f_eo, _, _ = fast_adapt_vs_edge_only(seed, digits, clf)
    _, seen, f_full = ternary_fast_adapt(seed, digits, clf)
    share0 = unequal_eta_shares(seed, clf)
    tr, bf = source_only_shares(seed, digits, clf)
    return {"value": f_fa / f_eo, "fid_fa": f_fa, "fid_edge_only": f_eo, "ternary_over_full": seen[STEPS] / f_full,
            "ternary_end_over_start": seen[STEPS] / seen[0], "share0_favour0": share0["favour0"],
            "share0_favour1": share0["favour1"], "transfer_start": tr[0], "transfer_end": tr[300],
            "transfer_drop": tr[0] - tr[300], "bfa_end": bf[300], "bfa_minus_transfer": bf[300] - tr[300]}


def tdgan_batched_remind(seed: int) -> dict:
    """tests/test_tdgan_batched.py::test_batched_step_equals_the_per_node_loop_including_the_reminding_term:
    the reminding loss of the fourth cloud step (value: the smaller of mlp and dcgan), TDGANConfig seed 5 + seed."""
    import dataclasses

    from edgegan.data import load_digits, partition_by_classes
    from test_tdgan_batched import ARCHS, CFG, cloud_in_progress

    parts = partition_by_classes(load_digits(), [[0, 1, 2], [3, 4], [5], [6, 7, 8, 9]],
                                 samples_per_node=[100, 300, 60, 80], seed=0)
    loss = {}
    for arch in ARCHS:
        cloud, _, edges = cloud_in_progress(parts, dataclasses.replace(CFG, arch=arch, seed=CFG.seed + seed))
        stats = cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])
        loss[arch] = stats["reminding_loss"]
    return {"value": min(loss.values()), **loss}


def grid_shipped(seed: int) -> dict:
    """tests/test_grid_barycenter.py (n = 1 inputs, weights (1, 0), DCNN vs linear blend): the shipped model on
    held-out shapes random_shapes(rng(123 + seed)) (seed 0: the tests' shapes). value: the largest L1 to the
    Sinkhorn reference of the input (bound < 0.4); also the smallest L1 to a wrong reference (shifted or the
    other input; must stay above it), the largest centroid error (bound < 1.5 cells), L1 DCNN / L1 blend (< 1)."""
    import numpy as np
    import torch

    from edgegan.barycenter.grid import grid_barycenter, grid_l1, sinkhorn_grid_barycenter
    from edgegan.barycenter.grid_data import random_shapes
    from test_grid_barycenter import centroid

    shapes = random_shapes(np.random.default_rng(123 + seed), 6, 64)
    def alone(h):  # the entropic n = 1 barycenter: a blurred input
        return sinkhorn_grid_barycenter(h[None], [1.0])

    cases = [(grid_barycenter(h[None], [1.0]), h, np.roll(alone(h), 6)) for h in shapes[:3]]
    cases.append((grid_barycenter(shapes[:2], [1.0, 0.0]), shapes[0], alone(shapes[1])))
    right = [float(np.abs(pred - alone(h)).sum()) for pred, h, _ in cases]
    wrong = [float(np.abs(pred - other).sum()) for pred, _, other in cases]
    h, w = shapes[:3], [0.2, 0.3, 0.5]
    ref = torch.tensor(sinkhorn_grid_barycenter(h, w))
    ratio = grid_l1(ref, torch.tensor(grid_barycenter(h, w))) / grid_l1(ref, torch.tensor(np.tensordot(w, h, 1)))
    return {"value": max(right), "wrong_min": min(wrong),
            "centroid_max": max(float(np.linalg.norm(centroid(pred) - centroid(h))) for pred, h, _ in cases),
            "dcnn_over_blend": float(ratio)}


def w2_win(seed: int) -> dict:
    """tests/test_w2_barycenter.py::test_win_on_standardised_inputs_reaches_exact_barycenter with WIN seed
    ``seed``: BW2-UVP % of standardised WIN (value; bound WIN_LIMIT) and paper-setting / standardised UVP
    (bound > PAPER_FACTOR)."""
    from test_w2_barycenter import win_uvp

    uvp, _ = win_uvp(seed)
    raw, _ = win_uvp(seed, centre=False, rescale=False)
    return {"value": uvp, "raw": raw, "raw_over_default": raw / uvp}


def w2_nwb(seed: int) -> dict:
    """tests/test_w2_barycenter.py::test_nwb_on_standardised_inputs_moves_to_exact_barycenter with NWB seed
    ``seed``: BW2-UVP % (bound NWB_LIMIT)."""
    from test_w2_barycenter import nwb_uvp

    return {"value": nwb_uvp(seed)[0]}


def w2_tolerance(seed: int) -> dict:
    """tests/test_w2_barycenter.py::test_tolerance_stops_when_moments_stop_moving with WIN seed ``seed``,
    4 rounds: the largest one-round moment change % (value; must stay < 50, the stopping tolerance) and
    the smallest (must stay > 1e-6, the tolerance that never fires)."""
    from test_w2_barycenter import HARD_W, TOL_RUN, _hard

    from edgegan.barycenter.win import win_barycenter

    change = win_barycenter(_hard(d=2)[0], HARD_W, tol=1e-6, seed=seed, **TOL_RUN).log["history"]["moment_change_pct"]
    return {"value": max(change), "min": min(change), "first": change[0]}


STATS = {"classifier": classifier, "tdgan_forgetting": tdgan_forgetting, "coalescence": coalescence,
         "ring": ring, "digits_fid": digits_fid, "ternary_joint": ternary_joint,
         "membership_drift": membership_drift, "membership_remind": membership_remind, "grid_train": grid_train,
         "tdgan_batched_remind": tdgan_batched_remind, "grid_shipped": grid_shipped,
         "w2_win": w2_win, "w2_nwb": w2_nwb, "w2_tolerance": w2_tolerance}


RUN = "run: "  # the child's prefix of one finished seed's JSON row on stdout


def _cell(stat: str, seeds: list[int], threads: int) -> None:
    """Print each seed's row (with its wall and process CPU seconds) as soon as it is done."""
    import torch

    torch.set_num_threads(threads)
    for s in seeds:
        wall, cpu = time.perf_counter(), time.process_time()
        row = STATS[stat](s)
        row = {"seed": s, "wall_s": time.perf_counter() - wall, "process_cpu_s": time.process_time() - cpu, **row}
        print(RUN + json.dumps(row), flush=True)


def summarise(stat: str, runs: list[dict]) -> dict:
    """min / median / max of the statistic over ``runs`` (rows of capability, threads, seed, value, …)."""
    vals = [r["value"] for r in runs]
    return {"doc": STATS[stat].__doc__, "n": len(vals), "min": min(vals), "median": statistics.median(vals),
            "max": max(vals), "runs": runs}


def report(table: dict, stats: list[str]) -> None:
    """Print n and min / median / max of every numeric field per statistic and thread count, and how many
    runs repeat exactly (every field but the timings) at 1 vs 2 threads and under avx2 vs avx512."""
    for stat in stats:
        runs = table.get(stat, {}).get("runs", [])
        for t in sorted({r["threads"] for r in runs}):
            rows = [r for r in runs if r["threads"] == t]
            caps = sorted({r["capability"] for r in rows})
            print(f"{stat} threads={t} n={len(rows)} caps={','.join(caps)} seeds={sorted({r['seed'] for r in rows})}")
            for k, v in rows[0].items():
                vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
                if k not in ("seed", "threads") and len(vals) == len(rows):
                    print(f"  {k:22s} min={min(vals):.4g} median={statistics.median(vals):.4g} max={max(vals):.4g}")
        cell = ("capability", "threads", "wall_s", "process_cpu_s", "cpu_seconds")  # how, not what, was measured
        value = {(r["capability"], r["threads"], r["seed"]): {k: v for k, v in r.items() if k not in cell}
                 for r in runs}
        same = {"1 vs 2 threads": [((c, 1, s), (c, 2, s)) for c, t, s in value if t == 1]}
        same.update({f"avx2 vs avx512 at {n} threads": [(("avx2", n, s), ("avx512", n, s)) for c, t, s in value
                                                        if (c, t) == ("avx2", n)] for n in (1, 2)})
        for what, keys in same.items():  # the same run measured both ways
            pairs = [(value[a], value[b]) for a, b in keys if a in value and b in value]
            if pairs:
                same_value = sum(x["value"] == y["value"] for x, y in pairs)
                rel = max(abs(y["value"] - x["value"]) / max(abs(x["value"]), 1e-300) for x, y in pairs)
                print(f"{stat}, {what}: {sum(x == y for x, y in pairs)} of {len(pairs)} runs identical in every "
                      f"field, {same_value} in value; largest relative difference of value {rel:.3g}")


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
    p.add_argument("--seeds", type=int, default=5, help="how many seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds − 1")
    p.add_argument("--report", action="store_true", help="print the stored distributions per thread count; run nothing")
    p.add_argument("--threads", default="1")
    p.add_argument("--caps", default=",".join(CAPABILITIES))
    p.add_argument("--quick", action="store_true", help="3 seeds, 1 thread")
    p.add_argument("--keep", action="store_true", help="keep the stored runs of the other (capability, threads, seed)s")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/test_margins.json"))
    p.add_argument("--cell", help=argparse.SUPPRESS)  # child: "stat:threads", prints one RUN line per seed
    a = p.parse_args(argv)
    seeds = list(range(a.first_seed, a.first_seed + (3 if a.quick else a.seeds)))
    if a.cell:
        stat, threads = a.cell.split(":")
        _cell(stat, seeds, int(threads))
        return 0
    if a.report:
        report(json.loads(a.json.read_text()), a.stats.split(","))
        return 0
    threads = [1] if a.quick else [int(t) for t in a.threads.split(",")]
    for stat in a.stats.split(","):
        runs = []
        if a.keep and a.json.exists():  # the stored runs this invocation does not rerun
            rerun = {(cap, t, s) for cap in a.caps.split(",") for t in threads for s in seeds}
            stored = json.loads(a.json.read_text()).get(stat, {}).get("runs", [])
            runs = [r for r in stored if (r["capability"], r["threads"], r["seed"]) not in rerun]
        for cap in a.caps.split(","):
            for t in threads:
                env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(t)}
                cmd = [sys.executable, __file__, "--cell", f"{stat}:{t}", "--seeds", str(len(seeds)),
                       "--first-seed", str(seeds[0])]
                with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as child:
                    for line in child.stdout:
                        if line.startswith(RUN):  # written after every seed: a long run keeps what ran
                            runs.append({"capability": cap, "threads": t, **json.loads(line[len(RUN):])})
                            row = summarise(stat, runs)
                            store(a.json, stat, row)
                if child.returncode:
                    raise subprocess.CalledProcessError(child.returncode, cmd)
        print(f"{stat:18s} n={row['n']:3d} min={row['min']:.4g} median={row['median']:.4g} max={row['max']:.4g}",
              flush=True)
        for r in runs:
            print(f"  {r['capability']:8s} t={r['threads']} seed={r['seed']} value={r['value']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
