"""Means over two seeds (all pairs within one capability/thread cell) of the tdgan_forgetting runs stored in
benchmarks/results/test_margins.json: the statistics tests/test_tdgan_forgetting.py bounds (it averages seeds 0, 1)."""
import itertools
import json
import statistics

runs = json.load(open("benchmarks/results/test_margins.json"))["tdgan_forgetting"]["runs"]
keys = {"task1": "value", "kept": "td_old_minus_task1", "left": "ft_old_minus_task1", "gap": "td_minus_ft_old"}
cells: dict = {}
for r in runs:
    cells.setdefault((r["capability"], r["threads"]), {})[r["seed"]] = r
for name, k in keys.items():
    pairs = [(c[a][k] + c[b][k]) / 2 for c in cells.values() for a, b in itertools.combinations(sorted(c), 2)]
    test = {cell: (c[0][k] + c[1][k]) / 2 for cell, c in cells.items() if 0 in c and 1 in c}
    single = [r[k] for r in runs]
    print(f"{name:6s} pair means n={len(pairs)} min {min(pairs):.3f} median {statistics.median(pairs):.3f} "
          f"max {max(pairs):.3f} | seeds (0, 1): " + " ".join(f"{c}/t{t}={v:.3f}" for (c, t), v in test.items())
          + f" | single runs n={len(single)} min {min(single):.3f} max {max(single):.3f}")
new = [r["new_acc_min"] for r in runs]
print(f"new    single runs n={len(new)} min {min(new):.3f} median {statistics.median(new):.3f} max {max(new):.3f}")
