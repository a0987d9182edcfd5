"""Two-stage adaptive coalescence on digits vs the seed 000 §5 baselines, in seed 000's two cases.

* ``overlapping``: sources hold {0,1,2,3}, {3,4,5,6}, {6,7,8,9}; the target node holds classes
  {2,5,8}, each also held by a source.
* ``non_overlapping``: sources hold {0,1,2}, {2,3,4}, {4,5,6}; the target's {7,8,9} are held by none.

For each case, seed and target size (10 and 100 local samples; the 10 are a subset of the 100 and
the sources never see them) three sources pre-train a WGAN-GP, Stage I coalesces them (Alg. 1;
its first recursion step is the barycenter of the first 2 sources, seed 000's "impact of the
number of pre-trained models"), and every method trains at the target for the same number of
generator iterations. Each checkpoint iteration is scored by the one evaluator
(:class:`edgegan.eval.Evaluator`): feature-FID against the whole data set (seed 000 D.1's rule)
and against the target's classes, the class-histogram TV distance to the population, and the
target classes' share. An ablation in the overlapping case (smallest target) varies Stage II's
replay weight (η₀), the Stage I steps and a one-critic replay batch share. Every number is a
mean ± sd over the seeds, all from this one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coalescence.py --quick --json benchmarks/results/coalescence_quick.json
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, parser, print_table, write_json  # noqa: E402

from edgegan.adapt.ternary import fp32_nbytes, pack_ternary  # noqa: E402
from edgegan.barycenter.recursive import BarycenterResult, recursive_barycenter  # noqa: E402
from edgegan.baselines.coalescence import (  # noqa: E402
    METHODS, CoalescenceTask, barycentric_fa, compare_methods, digits_split, pretrain_sources)
from edgegan.checkpoint import load_checkpoint, pack_model, save_checkpoint, unpack_model  # noqa: E402
from edgegan.data import label_histogram, load_digits  # noqa: E402
from edgegan.device import resolve_device  # noqa: E402
from edgegan.eval import evaluator_for  # noqa: E402
from edgegan.eval.classifier import cache_dir  # noqa: E402
from edgegan.gan import WGANConfig  # noqa: E402
from edgegan.nn import model_spec  # noqa: E402
from edgegan.sim.verdicts import population_share  # noqa: E402

CASES = {
    "overlapping": {"sources": [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]], "target": [2, 5, 8]},
    "non_overlapping": {"sources": [[0, 1, 2], [2, 3, 4], [4, 5, 6]], "target": [7, 8, 9]},
}
TARGET_SAMPLES = [10, 100]
WIDTHS = {"generator": 256, "critic": 256}  # MLP hidden sizes of every method's G and D
SEEDS = [0, 1, 2]
METRICS = ("fid_whole", "fid_target", "class_tv", "target_share")
DIRECTION = {"fid_whole": "lower is better", "fid_target": "lower is better", "class_tv": "lower is better",
             "target_share": "ideal: population share (dotted)"}
# eval_samples: generated samples per score (fixed latent); quick halves the budget and the samples
# to stay under ~8 CPU-minutes (profile: BFA-family training ~57 %, scoring ~12 %, pre-training ~8 %)
PRESETS = {
    "full": {"pretrain_steps": 1000, "stage1_steps": 500, "budget": 1000,
             "iterations": [0, 100, 250, 500, 1000], "eval_samples": 1000},
    "quick": {"pretrain_steps": 200, "stage1_steps": 100, "budget": 50, "iterations": [0, 10, 25, 50],
              "eval_samples": 500},
}
# ablation (overlapping case, smallest target): replay's share of Stage II's weight λ̃/(λ̃+λ) (0.5 =
# paper's equal η₀), a one-critic replay batch share ρ, and Stage I at half its steps
REPLAY_WEIGHTS = [0.25, 0.75]
REPLAY_BATCH_SHARES = [0.5]


def cached_sources(xs: list[torch.Tensor], steps: int, cfg: WGANConfig, seed: int, device, folder: Path):
    """Pre-trained (G_k, D_k) per source node, cached by settings, widths + data hash."""
    h = hashlib.sha256(json.dumps([steps, cfg.__dict__, seed, WIDTHS]).encode())
    for x in xs:
        h.update(x.numpy().tobytes())
    path = folder / f"coalescence-sources-{h.hexdigest()[:16]}.pt"
    if path.is_file():
        ck = load_checkpoint(path)
        return [unpack_model(m, device) for m in ck["generators"]], [unpack_model(m, device) for m in ck["critics"]]
    gens, crits = pretrain_sources([x.to(device) for x in xs], generator_width=WIDTHS["generator"],
                                   critic_width=WIDTHS["critic"], steps=steps, cfg=cfg, seed=seed)
    save_checkpoint(path, {"generators": [pack_model(g) for g in gens], "critics": [pack_model(c) for c in crits]})
    return gens, crits


def stage1(gens, crits, steps: int, cfg: WGANConfig, seed: int, device) -> tuple[BarycenterResult, BarycenterResult]:
    """Stage I over all sources, and the barycenter of the first two (its first recursion step)."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        full = recursive_barycenter(gens, crits, [1.0] * len(gens), steps, cfg, checkpoint_dir=tmp)
        ck = load_checkpoint(Path(tmp) / "stage_002.pt")
    two = BarycenterResult(*(unpack_model(ck[k], device) for k in ("generator", "critic_prev", "critic_new")),
                           full.order[:2], full.lambdas[:2], {"stages": ck["stages"]})
    return full, two


class Curves:
    """Scores of one run at the checkpoint iterations: ``callback(stats, G)`` for the harness."""

    def __init__(self, evaluator, classes: list[int], iterations: list[int], n: int) -> None:
        self.evaluator, self.classes, self.iterations, self.n = evaluator, classes, iterations, n
        self.points: dict[int, dict[str, float]] = {}

    def __call__(self, stats: dict[str, float], G) -> None:
        if stats["step"] in self.iterations:
            s = self.evaluator.score(G, self.classes, n=self.n)
            self.points[int(stats["step"])] = {m: float(getattr(s, m)) for m in METRICS}

    def lists(self) -> dict[str, list[float | None]]:
        return {m: [self.points[i][m] if i in self.points else None for i in self.iterations] for m in METRICS}


def diagnostics(evaluator, case: dict, gens, bary2: BarycenterResult, bary: BarycenterResult,
                n: int) -> dict[str, dict[str, Any]]:
    """Where quality goes before Stage II: each source against its own classes, Stage I after its
    first and second recursion steps against the union of the classes coalesced so far; FID whole
    and the class shares of each (does Stage I keep every input's classes?)."""
    union = [sorted(set().union(*case["sources"][:k])) for k in (1, 2, 3)]
    models = {**{f"source{k}": (g, case["sources"][k]) for k, g in enumerate(gens)},
              "stage1_after_2": (bary2.generator, union[1]), "stage1_after_3": (bary.generator, union[2])}
    out = {}
    for name, (G, own) in models.items():
        s = evaluator.score(G, own, n=n)
        out[name] = {"fid_own": s.fid_target, "fid_whole": s.fid_whole, "own_share": s.target_share,
                     "class_share": s.class_share}
    return out


def run_unit(case: dict, seed: int, st: dict, cfg: WGANConfig, data, evaluator, device,
             folder: Path) -> tuple[dict, tuple]:
    """One (case, seed): pre-training, Stage I, every method at every target size; returns the
    scores and (generators, critics, Stage I result) for the ablation."""
    its, budget = st["iterations"], st["budget"]
    sources, target = digits_split(data, case["sources"], case["target"], max(TARGET_SAMPLES), seed)
    t0 = time.perf_counter()
    gens, crits = cached_sources([s.x for s in sources], st["pretrain_steps"], cfg, seed, device, folder)
    t_pre = time.perf_counter() - t0
    bary, bary2 = stage1(gens, crits, st["stage1_steps"], cfg, seed, device)
    t_stage1 = time.perf_counter() - t0 - t_pre
    whole = torch.cat([s.x for s in sources] + [target.x]).to(device)
    out: dict[str, Any] = {"seconds": {"pretrain": t_pre, "stage1": t_stage1}, "sizes": {},
                           "diagnostics": diagnostics(evaluator, case, gens, bary2, bary, st["eval_samples"])}
    whole_curves: dict[str, list] = {}
    for n in st["target_samples"]:
        task = CoalescenceTask(list(gens), list(crits), [1.0] * len(gens), target.x[:n].to(device), whole)
        # Whole Data never reads the target's local samples: same run (same seed, same data) at every size
        run = [m for m in METHODS if not (m == "whole_data" and whole_curves)]
        curves = {m: Curves(evaluator, case["target"], its, st["eval_samples"]) for m in run}
        res = compare_methods(task, budget, run, cfg, bary, lambda m: curves[m], every=1, seed=seed)
        methods = {m: curves[m].lists() if m in curves else whole_curves for m in METHODS}
        whole_curves = methods["whole_data"]
        methods["stage1"] = {k: [v[0]] + [None] * (len(its) - 1) for k, v in methods["barycentric_fa"].items()}
        two = Curves(evaluator, case["target"], its, st["eval_samples"])
        torch.manual_seed(seed)
        barycentric_fa(task, budget, bary2, cfg, two, 1)
        out["sizes"][n] = {"methods": methods, "two_sources": two.lists()}
        if n == min(st["target_samples"]):
            out["ternary"] = {"bytes": len(pack_ternary(res["ternary_fa"].generator)),
                              "fp32_bytes": fp32_nbytes(res["ternary_fa"].generator)}
    return out, (gens, crits, bary)


def run_ablation(case: dict, seed: int, st: dict, cfg: WGANConfig, data, evaluator, device, models) -> dict:
    """Overlapping case, smallest target: Stage II variants of barycentric FA from the same sources."""
    gens, crits, bary = models
    sources, target = digits_split(data, case["sources"], case["target"], max(TARGET_SAMPLES), seed)
    whole = torch.cat([s.x for s in sources] + [target.x]).to(device)
    task = CoalescenceTask(list(gens), list(crits), [1.0] * len(gens), target.x[:min(st["target_samples"])].to(device),
                           whole)
    its, budget = st["iterations"], st["budget"]
    variants: dict[str, tuple[BarycenterResult, dict]] = {}
    for w in REPLAY_WEIGHTS:
        variants[f"replay_weight_{w}"] = (bary, {"eta0": (1.0 / w, 1.0 / (1.0 - w))})
    for rho in REPLAY_BATCH_SHARES:
        variants[f"replay_batch_share_{rho}"] = (bary, {"replay_share": rho})
    torch.manual_seed(seed)
    half = recursive_barycenter(gens, crits, [1.0] * len(gens), max(1, st["stage1_steps"] // 2), cfg)
    variants["stage1_steps_half"] = (half, {})
    out = {}
    for name, (b, kw) in variants.items():
        c = Curves(evaluator, case["target"], its, st["eval_samples"])
        torch.manual_seed(seed)
        barycentric_fa(task, budget, b, cfg, c, 1, **kw)
        out[name] = c.lists()
    return out


def run_case_seed(job: tuple[int, str], st: dict, cfg: WGANConfig, data, device, folder: Path) -> dict[str, Any]:
    """One (seed, case name): :func:`run_unit`, plus :func:`run_ablation` in the overlapping case.

    Every step seeds itself and the evaluator is rebuilt from its disk cache, so the numbers do
    not depend on the process or on which (seed, case) ran before (``--jobs``)."""
    seed, case_name = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    evaluator = evaluator_for("digits", device=device)
    unit, models = run_unit(CASES[case_name], seed, st, cfg, data, evaluator, device, folder)
    abl = run_ablation(CASES[case_name], seed, st, cfg, data, evaluator, device, models) \
        if case_name == "overlapping" and st["ablation"] else None
    return {"unit": unit, "ablation": abl, "timing": {**unit["seconds"], "total": time.perf_counter() - t0},
            "generator": model_spec(models[0][0]), "critic": model_spec(models[1][0])}


def in_order(work, jobs_list: list, jobs: int) -> Iterator[Any]:
    """``work(j)`` for each j of ``jobs_list``, yielded in order: in this process (``jobs`` 1) or in
    a pool of ``jobs`` fresh (spawned) processes, one torch thread each."""
    if jobs == 1:
        yield from map(work, jobs_list)
        return
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(jobs_list))) as pool:
        yield from pool.imap(work, jobs_list)
        pool.close()
        pool.join()


def mean_sd(values: list[list[float | None]]) -> tuple[list[float | None], list[float | None]]:
    """Element-wise mean and sample sd over seeds (None where any seed lacks the point)."""
    means, sds = [], []
    for col in zip(*values):
        if any(v is None for v in col):
            means.append(None)
            sds.append(None)
        else:
            means.append(statistics.fmean(col))
            sds.append(statistics.stdev(col) if len(col) > 1 else 0.0)
    return means, sds


def aggregate(per_seed: list[dict[str, dict[str, list]]]) -> tuple[dict, dict]:
    """{name: {metric: [per seed lists]}} → (means, sds) of the same shape."""
    mean: dict[str, dict] = {}
    sd: dict[str, dict] = {}
    for name in per_seed[0]:
        mean[name], sd[name] = {}, {}
        for m in METRICS:
            mean[name][m], sd[name][m] = mean_sd([r[name][m] for r in per_seed])
    return mean, sd


def paired(per_seed: list[dict], a: str, b: str, metric: str, ia: int, ib: int) -> dict[str, Any]:
    """d = a − b per seed (a at iteration index ia, b at ib); verdict on mean(d) vs sd(d).

    "lower" when mean(d) < −sd(d) (a below b on every reading of the seeds' noise), "higher" when
    mean(d) > sd(d), otherwise "inconclusive"."""
    d = [r[a][metric][ia] - r[b][metric][ib] for r in per_seed]
    m, s = statistics.fmean(d), (statistics.stdev(d) if len(d) > 1 else 0.0)
    verdict = "lower" if m < -s else "higher" if m > s else "inconclusive"
    return {"mean_diff": m, "sd_diff": s, "a": statistics.fmean(r[a][metric][ia] for r in per_seed),
            "b": statistics.fmean(r[b][metric][ib] for r in per_seed), "verdict": verdict}


def claims_for(per_seed: list[dict], its: list[int]) -> dict[str, dict]:
    """Seed 000's claims, judged on paired per-seed differences at the end of the budget."""
    e = len(its) - 1

    def claim(text: str, a: str, b: str, want: str, metric: str = "fid_whole", ia: int = e, ib: int = e) -> dict:
        """``want``: the verdict that confirms the claim; "not higher" accepts "inconclusive" too."""
        r = paired(per_seed, a, b, metric, ia, ib)
        ok = r["verdict"] != "higher" if want == "not higher" else r["verdict"] == want
        holds = "holds" if ok else "inconclusive" if r["verdict"] == "inconclusive" else "fails"
        return {"claim": text, "result": holds, "metric": metric, **r}

    return {
        "bfa_beats_edge_only": claim("BFA < Edge-Only (FID whole)", "barycentric_fa", "edge_only", "lower"),
        "bfa_beats_transfer": claim("BFA < Transferring GANs (FID whole)", "barycentric_fa", "transfer", "lower"),
        "bfa_beats_ensemble": claim("BFA < Ensemble (FID whole)", "barycentric_fa", "ensemble", "lower"),
        "bfa_beats_weight_average": claim("BFA < Weight-Average (FID whole)", "barycentric_fa", "weight_average",
                                          "lower"),
        "whole_data_is_lower_bound": claim("Whole Data < BFA (FID whole)", "whole_data", "barycentric_fa", "lower"),
        "stage2_improves_stage1_whole": claim("BFA@end < Stage I (FID whole)", "barycentric_fa", "barycentric_fa",
                                              "lower", ib=0),
        "stage2_improves_stage1_target": claim("BFA@end < Stage I (FID target)", "barycentric_fa",
                                               "barycentric_fa", "lower", "fid_target", ib=0),
        "bfa_beats_transfer_target": claim("BFA < Transferring GANs (FID target)", "barycentric_fa", "transfer",
                                           "lower", "fid_target"),
        "bfa_beats_ensemble_target_share": claim("BFA > Ensemble (target share)", "barycentric_fa", "ensemble",
                                                 "higher", "target_share"),
        "ternary_not_worse_than_fp": claim("ternary FA not above full precision (FID whole; paper: negligible loss)",
                                           "ternary_fa", "barycentric_fa", "not higher"),
        "three_sources_beat_two": claim("BFA from 3 sources < from 2 (FID whole)", "barycentric_fa", "two_sources",
                                        "lower"),
    }


def summarize(units: dict[str, dict[int, dict]], ablation: dict[int, dict], st: dict, ideal: dict[str, float]) -> dict:
    its = st["iterations"]
    cases = {}
    for case, by_seed in units.items():
        seeds = sorted(by_seed)
        sizes = {}
        for n in st["target_samples"]:
            per_seed = [{**by_seed[s]["sizes"][n]["methods"], "two_sources": by_seed[s]["sizes"][n]["two_sources"]}
                        for s in seeds]
            mean, sd = aggregate(per_seed)
            two_m, two_sd = mean.pop("two_sources"), sd.pop("two_sources")
            sizes[str(n)] = {"methods": mean, "sd": sd, "two_sources": {"mean": two_m, "sd": two_sd},
                             "claims": claims_for(per_seed, its)}
        first = sizes[str(min(st["target_samples"]))]
        diag = [by_seed[s]["diagnostics"] for s in seeds]
        diag_summary = {name: {m: mean_sd([[d[name][m]] for d in diag]) for m in ("fid_own", "fid_whole", "own_share")}
                        | {"class_share": [statistics.fmean(c) for c in zip(*(d[name]["class_share"] for d in diag))]}
                        for name in diag[0]}
        cases[case] = {"iterations": its, "target_samples": min(st["target_samples"]), "seeds": seeds,
                       "ideal_target_share": ideal[case],
                       "source_classes": CASES[case]["sources"], "target_classes": CASES[case]["target"],
                       "methods": first["methods"], "sd": first["sd"], "by_target_samples": sizes,
                       "diagnostics": diag_summary}
    out: dict[str, Any] = {"cases": cases, "sd": {c: v["sd"] for c, v in cases.items()}}
    if ablation:
        seeds = sorted(ablation)
        base = [{"paper (replay weight 0.5)": units["overlapping"][s]["sizes"][min(st["target_samples"])]["methods"][
            "barycentric_fa"], **ablation[s]} for s in seeds]
        mean, sd = aggregate(base)
        out["ablation"] = {"case": "overlapping", "target_samples": min(st["target_samples"]), "seeds": seeds,
                           "iterations": its, "methods": mean, "sd": sd}
    return out


def fmt(m: float | None, s: float | None, digits: int = 1) -> str:
    return "—" if m is None else f"{m:.{digits}f}±{s:.{digits}f}"


def _cells(m: dict, sd: dict, i: int, ideal: float) -> dict[str, str]:
    """One table row's metric cells at iteration index ``i``; headers say which way is better."""
    return {"FID whole ↓": fmt(m["fid_whole"][i], sd["fid_whole"][i]),
            "FID target ↓": fmt(m["fid_target"][i], sd["fid_target"][i]),
            "class TV ↓": fmt(m["class_tv"][i], sd["class_tv"][i], 2),
            f"target share (ideal {ideal:.2f})": fmt(m["target_share"][i], sd["target_share"][i], 2)}


def print_tables(summary: dict) -> None:
    for case, c in summary["cases"].items():
        e = len(c["iterations"]) - 1
        for n, block in c["by_target_samples"].items():
            rows = []
            for name, m in block["methods"].items():
                i = 0 if name == "stage1" else e
                sd = block["sd"][name]
                rows.append({"method": name, "iter": c["iterations"][i], **_cells(m, sd, i, c["ideal_target_share"])})
            t = block["two_sources"]
            rows.append({"method": "bfa_2_sources", "iter": c["iterations"][e],
                         **_cells(t["mean"], t["sd"], e, c["ideal_target_share"])})
            print_table(rows, f"\n{case}, target {n} samples of {c['target_classes']} (mean±sd over seeds {c['seeds']})")
            print_table([{"claim": v["claim"], "result": v["result"], "a": round(v["a"], 3), "b": round(v["b"], 3),
                          "diff": fmt(v["mean_diff"], v["sd_diff"], 2)} for v in block["claims"].values()])
    for case, c in summary["cases"].items():
        print_table([{"model": name, **{f"{m} (mean±sd)": fmt(v[m][0][0], v[m][1][0], 2 if m == "own_share" else 1)
                                        for m in ("fid_own", "fid_whole", "own_share")},
                      "class shares 0..9": " ".join(f"{x:.2f}" for x in v["class_share"])}
                     for name, v in c["diagnostics"].items()],
                    f"\n{case}: sources vs their own classes, Stage I vs the classes coalesced so far")
    if "ablation" in summary:
        a = summary["ablation"]
        e = len(a["iterations"]) - 1
        print_table([{"variant": k, **{f"{m}@{a['iterations'][e]}": fmt(v[m][e], a["sd"][k][m][e], 2)
                                       for m in METRICS}} for k, v in a["methods"].items()],
                    f"\nablation: overlapping, target {a['target_samples']} samples, barycentric FA")


def plot(out: Path, summary: dict) -> str:
    """``<json stem>_curves.png``: FID whole / FID target / class TV / target share per case (smallest target)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = summary["cases"]
    fig, axes = plt.subplots(len(cases), len(METRICS), figsize=(4.2 * len(METRICS), 3.6 * len(cases)), squeeze=False)
    for row, (case, c) in enumerate(cases.items()):
        its = c["iterations"]
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for name, m in c["methods"].items():
                pts = [(i, v, s) for i, v, s in zip(its, m[metric], c["sd"][name][metric]) if v is not None]
                if pts:
                    x, y, s = zip(*pts)
                    ax.errorbar(x, y, yerr=s, marker="o" if name != "stage1" else "*", capsize=2, label=name,
                                linestyle="--" if name == "ternary_fa" else "-")
            if metric.startswith("fid"):
                ax.set_yscale("log")
            if metric == "target_share":
                ax.axhline(c["ideal_target_share"], color="k", linestyle=":", label="population share (ideal)")
            ax.set_title(f"{case}: {metric}, {DIRECTION[metric]} ({c['target_samples']} target samples)", fontsize=9)
            ax.set_xlabel("generator iterations at the target")
            ax.grid(alpha=.3)
    axes[0][0].legend(fontsize=7)
    path = out.with_name(out.stem + "_curves.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def main() -> int:
    p = parser("two-stage adaptive coalescence vs baselines on digits (seed 000's two cases)",
                       "benchmarks/results/coalescence.json")
    p.add_argument("--cache-dir", default=None, help="where pre-trained sources are cached")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="seeds (>= 3 for mean ± sd)")
    p.add_argument("--target-samples", type=int, nargs="+", default=TARGET_SAMPLES, choices=TARGET_SAMPLES,
                   help="target sizes to run (default: all)")
    p.add_argument("--no-ablation", action="store_true", help="skip the Stage II ablation")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes over (seed, case), same numbers as 1 (default: quick min(2, cores), full 1)")
    args = p.parse_args()
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if args.quick else 1)
    if jobs < 1:
        p.error(f"--jobs must be >= 1, got {jobs}")
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    mode = "quick" if args.quick else "full"
    st = {**PRESETS[mode], "target_samples": sorted(args.target_samples), "ablation": not args.no_ablation}
    cfg = WGANConfig()  # the same for every method: the project's defaults
    out_json = Path(args.json)
    folder = Path(args.cache_dir) if args.cache_dir else cache_dir() / "benchmarks"
    data = load_digits()
    ideal = {c: population_share(label_histogram(data.y, data.num_classes), CASES[c]["target"]) for c in CASES}
    evaluator = evaluator_for("digits", device=device)
    settings = {**st, "cases": CASES, "wgan": cfg.__dict__, "widths": WIDTHS,
                "fid_reference": f"whole: all {len(data)} digits; target: the real digits of the target's classes",
                "equal_budget": f"{st['budget']} generator iterations per method",
                "ablation": {"replay_weights": REPLAY_WEIGHTS, "replay_batch_shares": REPLAY_BATCH_SHARES,
                             "stage1_steps_half": st["stage1_steps"] // 2},
                "verdict_rule": "paired per-seed difference d: holds if mean(d) beyond sd(d) in the claimed "
                                "direction, fails if beyond it in the other, else inconclusive"}
    units: dict[str, dict[int, dict]] = {c: {} for c in CASES}
    ablation: dict[int, dict] = {}
    timing: dict[str, Any] = {}
    res: dict[str, Any] = {}
    # seed-major: a cut run still has every case at the seeds it finished
    order = [(seed, case_name) for seed in args.seeds for case_name in CASES]
    work = functools.partial(run_case_seed, st=st, cfg=cfg, data=data, device=device, folder=folder)
    for (seed, case_name), r in zip(order, in_order(work, order, jobs)):
        units[case_name][seed] = r["unit"]
        if r["ablation"] is not None:
            ablation[seed] = r["ablation"]
        timing[f"{case_name}/seed{seed}"] = r["timing"]
        print(f"[{mode}] {case_name} seed {seed}: {r['timing']['total']:.0f} s", flush=True)
        done = {c: u for c, u in units.items() if u}
        res = {"benchmark": "coalescence", "mode": mode, "machine": machine(), "device": str(device),
               "complete": False, "seeds": args.seeds, "settings": settings,
               "generator": r["generator"], "critic": r["critic"],
               **summarize(done, ablation, st, ideal), "ternary": r["unit"]["ternary"], "timing": timing,
               "wall_seconds": time.perf_counter() - t_start}
        write_json(out_json, res)  # written after every (case, seed): a cut run leaves what finished
    res["complete"] = True
    res["png"] = plot(out_json, res)
    res["wall_seconds"] = time.perf_counter() - t_start
    print_tables(res)
    print(f"wall {res['wall_seconds']:.0f} s")
    write_json(out_json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
