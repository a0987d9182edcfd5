"""Where quality is lost in two-stage coalescence (issue 26), overlapping and non-overlapping cases.

For one seed and one setting: each source after pre-training against its own classes and the whole
set; Stage I after each recursive stage against the union of the classes coalesced so far and the
whole set, with its class shares (does the equal-λ two-critic objective collapse toward one
input?); Stage II (BFA, 10 target samples) along its curve against the whole set and the target.

    OMP_NUM_THREADS=1 .venv/bin/python notes/issue-26-stage1.py OUT.json SEED GW DW LR RATIO WARMUP EMA
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from coalescence import CASES  # noqa: E402

from edgegan.baselines.coalescence import CoalescenceTask, barycentric_fa, digits_split, pretrain_sources  # noqa: E402
from edgegan.barycenter.recursive import recursive_barycenter  # noqa: E402
from edgegan.checkpoint import load_checkpoint, unpack_model  # noqa: E402
from edgegan.data import load_digits  # noqa: E402
from edgegan.eval import evaluator_for  # noqa: E402
from edgegan.gan import WGANConfig  # noqa: E402

torch.set_num_threads(1)
out, seed, gw, dw, lr, ratio, warm, ema = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
steps = {"pretrain": 1000, "stage1": 500, "budget": 1000}
cfg = WGANConfig(lr=lr, beta2=0.9, critic_lr_ratio=ratio, critic_warmup=warm, ema_decay=ema)
data = load_digits()
ev = evaluator_for("digits")


def score(G, classes, own=None):
    s = ev.score(G.eval(), classes, 1000)
    r = {"fid_whole": s.fid_whole, "fid_target": s.fid_target, "target_share": s.target_share,
         "class_share": [round(v, 3) for v in s.class_share]}
    if own is not None:
        r["fid_own"] = ev.fid(G.sample(1000, generator=torch.Generator().manual_seed(1234)), own)
    return r


res = {"settings": {"seed": seed, "gw": gw, "dw": dw, "cfg": cfg.__dict__, "steps": steps}}
for case_name, case in CASES.items():
    t0 = time.perf_counter()
    sources, target = digits_split(data, case["sources"], case["target"], 100, seed)
    gens, crits = pretrain_sources([s.x for s in sources], generator_width=gw, critic_width=dw,
                                   steps=steps["pretrain"], cfg=cfg, seed=seed)
    r = {"sources": [score(g, case["target"], c) for g, c in zip(gens, case["sources"])]}
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        bary = recursive_barycenter(gens, crits, [1.0] * 3, steps["stage1"], cfg, checkpoint_dir=tmp)
        g2 = unpack_model(load_checkpoint(Path(tmp) / "stage_002.pt")["generator"])
    union2 = sorted(set(case["sources"][0]) | set(case["sources"][1]))
    union3 = sorted(set().union(*case["sources"]))
    r["stage1_after_2"] = score(g2, case["target"], union2)
    r["stage1_after_3"] = score(bary.generator, case["target"], union3)
    task = CoalescenceTask(gens, crits, [1.0] * 3, target.x[:10], data.x)
    curve = {}
    torch.manual_seed(seed)
    barycentric_fa(task, steps["budget"], bary, cfg,
                   lambda st, G: curve.__setitem__(int(st["step"]), score(G, case["target"]))
                   if int(st["step"]) in (0, 100, 250, 500, 1000) else None, 1)
    r["bfa_curve"] = curve
    r["seconds"] = time.perf_counter() - t0
    res[case_name] = r
    print(case_name, json.dumps({k: v for k, v in r.items()}, default=str)[:3000], flush=True)
    json.dump(res, open(out, "w"), indent=1)
