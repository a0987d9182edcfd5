"""Stage I critic warm-up ablation (issue 26): overlapping case, 3 seeds, the benchmark's sources
(cached, full preset), Stage I with ``critic_warmup`` 0 and N; Stage I scored against the whole
set with its class shares.

    OMP_NUM_THREADS=1 .venv/bin/python notes/issue-26-warmup.py OUT.json SEEDS WARMUPS  (e.g. 0,1,2 0,500)
"""
import dataclasses
import json
import sys

import torch

sys.path.insert(0, "benchmarks")
from coalescence import CASES, PRESETS, cached_sources  # noqa: E402

from edgegan.baselines.coalescence import digits_split  # noqa: E402
from edgegan.barycenter.recursive import recursive_barycenter  # noqa: E402
from edgegan.data import load_digits  # noqa: E402
from edgegan.eval import evaluator_for  # noqa: E402
from edgegan.eval.classifier import cache_dir  # noqa: E402
from edgegan.gan import WGANConfig  # noqa: E402

torch.set_num_threads(1)
out, seeds, warmups = sys.argv[1], [int(a) for a in sys.argv[2].split(",")], [int(a) for a in sys.argv[3].split(",")]
st, case = PRESETS["full"], CASES["overlapping"]
data, ev, cfg = load_digits(), evaluator_for("digits"), WGANConfig()
res = {}
for seed in seeds:
    sources, _ = digits_split(data, case["sources"], case["target"], 100, seed)
    gens, crits = cached_sources([s.x for s in sources], st["pretrain_steps"], cfg, seed, "cpu",
                                 cache_dir() / "benchmarks")
    for w in warmups:
        torch.manual_seed(seed)
        bary = recursive_barycenter(gens, crits, [1.0] * 3, st["stage1_steps"], dataclasses.replace(cfg, critic_warmup=w))
        s = ev.score(bary.generator, case["target"], st["eval_samples"])
        res.setdefault(w, {})[seed] = {"fid_whole": s.fid_whole, "class_share": [round(v, 3) for v in s.class_share]}
        print(seed, w, round(s.fid_whole, 1), res[w][seed]["class_share"], flush=True)
        json.dump(res, open(out, "w"), indent=1)
