"""The simulation report: typed results in, the coalescence benchmark's metrics, winners only where
a direction is better and the target share judged against its ideal out; readable sample grids;
no aggregator for TDGAN-only runs."""

from __future__ import annotations

import json

import torch

from edgegan.eval import GeneratorScore
from edgegan.sim.coalescence import CoalescenceResult, MethodOutcome, Stage1Outcome
from edgegan.sim.report import EngineInfo, RunSummary, _grid_image, render_report, summary_json, winners, \
    write_outputs
from edgegan.sim.scenario import OutputsSpec
from edgegan.sim.tdgan import TDGANResult
from edgegan.sim.verdicts import FORGOT, LEARNED, MISSED, population_share, share_sentence, share_verdict


def score(fid_whole, fid_target, tv, share):
    return GeneratorScore(fid_whole, fid_target, tv, share, 0.9, [0.1] * 10)


def summary(pipelines, coalescence=None, tdgan=None):
    return RunSummary("t", "d", 0, pipelines, "recursive-w1" if coalescence else None, "",
                      EngineInfo("inproc", 1, "cpu", 512, 0.0, [{"activations": 3}]),
                      {"nodes": {"id_prefix": "node", "count": 3}}, 1.0, coalescence, tdgan)


def test_winner_sentence_names_the_best_method_per_metric():
    s = winners({"barycentric_fa": score(30.0, 50.0, 0.2, 0.5), "edge_only": score(90.0, 40.0, 0.6, 0.9),
                 "transfer": score(60.0, 45.0, 0.1, 0.7)})
    assert s == ("Of the Stage II methods, barycentric_fa won on feature-FID vs whole data set (30, lower is "
                 "better); edge_only won on feature-FID vs target classes (40, lower is better); transfer won on "
                 "class-histogram TV vs population (0.1, lower is better).")


def test_target_share_is_judged_against_its_ideal_not_won():
    assert population_share([10, 10, 20, 60], [0, 2]) == 0.3
    assert [share_verdict(x, 0.3) for x in (0.1, 0.3, 0.5, 0.6, 0.7, None)] == [
        MISSED, LEARNED, LEARNED, LEARNED, FORGOT, None]
    methods = {"barycentric_fa": score(30.0, 50.0, 0.2, 0.4), "edge_only": score(90.0, 40.0, 0.6, 1.0),
               "ensemble": score(20.0, 80.0, 0.1, 0.1)}
    assert "target-class share" not in winners(methods)
    assert share_sentence(methods, 0.3).endswith(
        "learned the target, kept the rest: barycentric_fa (0.40); forgot the rest: edge_only (1.00); "
        "missed the target: ensemble (0.10).")


def test_report_uses_the_benchmark_metrics_and_tdgan_only_names_no_aggregator(tmp_path):
    methods = {m: MethodOutcome(m, [(0, score(80.0, 70.0, 0.5, 0.2)), (10, score(f, 20.0, 0.3, 0.6))], 1.5, 0,
                                torch.zeros(4, 1, 8, 8))
               for m, f in (("barycentric_fa", 25.0), ("edge_only", 95.0))}
    co = CoalescenceResult(["node0", "node1"], ["node2"], Stage1Outcome("recursive_w1", 2.0, [.5, .5],
                                                                          score(40.0, 60.0, 0.4, 0.3)),
                           {"node0": 50.0, "node1": 55.0}, "fid_whole", [2, 5, 8], 20, methods, [0.1] * 10)
    s = summary(["coalescence"], coalescence=co)
    write_outputs(tmp_path, s, [{"kind": "online", "pipeline": "coalescence", "tick": t, "online": ["node0", "node1"]}
                                for t in range(5)], OutputsSpec())
    md = (tmp_path / "report.md").read_text()
    assert "| method | feature-FID whole ↓ | feature-FID target ↓ | class TV ↓ | target share (ideal 0.30) |" in md
    assert "| barycentric_fa | 25.0 | 20.0 | 0.300 | 0.600 | learned the target, kept the rest |" in md
    assert "barycentric_fa won on feature-FID vs whole data set (25, lower is better)" in md
    assert "aggregator: recursive-w1" in md and "target-class share (" not in md
    js = json.loads((tmp_path / "summary.json").read_text())
    assert js["final_fid"] == {"barycentric_fa": 25.0, "edge_only": 95.0}
    assert js["coalescence"]["methods"]["edge_only"]["curve"][1]["fid_target"] == 20.0
    for f in ("nodes_online.png", "class_coverage.png", "fid.png", "samples_barycentric_fa.png"):
        assert (tmp_path / f).is_file(), f

    td = TDGANResult("finished", 10, 9, 1.0, {"accepted": 18, "rejected": 0, "membership_changes": 2}, 2, 18, 0.5,
                     1.8, [(9, GeneratorScore(50.0, 30.0, 0.2, 1.0, 0.5, [0.5, 0.5], 0.9, {0: 0.9, 1: 0.9}))])
    md = render_report(summary(["tdgan"], tdgan=td))
    assert "aggregator" not in md and "Final feature-FID 30.0 against the classes seen (50.0" in md
    assert summary_json(summary(["tdgan"], tdgan=td))["aggregator"] is None


def test_sample_grid_is_at_least_256_pixels_wide():
    img = _grid_image(torch.rand(64, 1, 8, 8) * 2 - 1)
    assert img.shape[1] >= 256 and img.shape[0] >= 256
    img = _grid_image(torch.rand(16, 3, 32, 32) * 2 - 1)
    assert img.shape[1] >= 256 and img.shape[-1] == 3
