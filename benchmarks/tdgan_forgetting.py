"""TDGAN vs fine-tuning / joint / local GAN on digits split over 4 nodes by class group
(seed 003 §4, single-entity setting; table 3's forgetting pattern).

Each node is online for one task, in order. After every task: classifier accuracy on
class-conditional samples of every class seen so far (per task's classes), and feature-FID
against the real images of the seen classes.

    .venv/bin/python benchmarks/tdgan_forgetting.py [--quick] [--loss logloss|wgan-gp] --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from edgegan.data import load_digits, partition_by_classes
from edgegan.eval import Evaluator, get_classifier
from edgegan.tdgan import Schedule, TDGANConfig
from edgegan.tdgan.harness import METHODS, run_method

CLASS_GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps per task")
    ap.add_argument("--steps", type=int, default=None, help="generator steps per task (default 1500, quick 400)")
    ap.add_argument("--loss", default="logloss", choices=["logloss", "wgan-gp"])
    ap.add_argument("--reminding-weight", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--json", required=True, help="output JSON path")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (400 if args.quick else 1500)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])

    data = load_digits()
    clf = get_classifier(data)
    parts = partition_by_classes(data, CLASS_GROUPS, seed=0)
    nodes = {f"node{i + 1}": p for i, p in enumerate(parts)}
    schedule = Schedule.single_entity(list(nodes), steps)
    evaluator = Evaluator(data, clf)

    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in seeds:
        cfg = TDGANConfig(loss=args.loss, reminding_weight=args.reminding_weight, seed=seed)
        for m in args.methods:
            res = run_method(m, nodes, schedule, cfg, evaluator)
            runs[m].append(res.summary())
            s = res.summary()
            print(f"seed {seed} {m:9s} task1-acc per task {[round(a[0], 3) for a in s['task_acc']]} "
                  f"fid {[round(f, 1) for f in s['fid']]} ({res.seconds:.0f}s)", flush=True)

    def mean(xs: list) -> list:
        return [None if xs[0][i] is None else sum(x[i] for x in xs) / len(xs) for i in range(len(xs[0]))]

    methods = {}
    for m, rs in runs.items():
        methods[m] = {
            "old_class_acc": mean([r["old_class_acc"] for r in rs]),
            "new_class_acc": mean([r["new_class_acc"] for r in rs]),
            "seen_class_acc": mean([r["seen_class_acc"] for r in rs]),
            "fid": mean([r["fid"] for r in rs]),
            # first_task_acc[t]: accuracy on task 1's classes after task t+1
            "first_task_acc": mean([[ta[0] for ta in r["task_acc"]] for r in rs]),
            "task_acc": [[mean([[r["task_acc"][t][j]] for r in rs])[0] for j in range(t + 1)]
                         for t in range(len(schedule.tasks))],
            "rejected": sum(r["rejected"] for r in rs), "bytes_in": sum(r["bytes_in"] for r in rs),
            "bytes_out": sum(r["bytes_out"] for r in rs), "seconds": sum(r["seconds"] for r in rs),
            "per_seed": rs,
        }
    out = {
        "benchmark": "tdgan_forgetting",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick, "steps_per_task": steps, "seeds": seeds, "loss": args.loss,
        "config": {k: v for k, v in vars(TDGANConfig(loss=args.loss, reminding_weight=args.reminding_weight)).items()},
        "tasks": [{"name": t.name, "nodes": list(t.nodes), "classes": g, "steps": t.steps,
                   "n_samples": len(nodes[t.nodes[0]])} for t, g in zip(schedule.tasks, CLASS_GROUPS)],
        "methods": methods,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d")},
        "notes": "accuracies are means over seeds; first_task_acc = accuracy on classes 0,1,2 after each task; "
                 "old_class_acc = classes of earlier tasks, new_class_acc = the current task's classes; "
                 "fid = feature-FID vs real images of all classes seen so far (lower is better).",
    }
    print()
    print(f"{'method':9s} | {'task1-classes acc after task 1..4':38s} | {'old acc (last)':>14s} | "
          f"{'new acc (last)':>14s} | {'FID (last)':>10s}")
    for m, r in methods.items():
        ft = " ".join(f"{a:.3f}" for a in r["first_task_acc"])
        print(f"{m:9s} | {ft:38s} | {r['old_class_acc'][-1]:14.3f} | {r['new_class_acc'][-1]:14.3f} | "
              f"{r['fid'][-1]:10.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
