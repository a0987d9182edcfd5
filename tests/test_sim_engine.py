"""Simulation engine, in-process backend: schedules honoured exactly, seeded runs
repeat, nodes leaving mid-task do not stop the run, LRU spill keeps state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgegan.monitor.metrics import Metrics
from edgegan.sim.availability import build_availability
from edgegan.sim.report import read_metrics
from edgegan.sim.run import simulate
from edgegan.sim.scenario import scenario_from_dict

TIMES = ("wall_s", "exchange_s")


def tiny_tdgan(seed: int = 3, backend: str = "inproc", **schedule) -> dict:
    return {
        "name": "tiny", "seed": seed, "pipeline": "tdgan",
        "data": {"dataset": "digits", "partition": "classes", "classes": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
                 "disjoint": False, "samples_per_node": 30},
        "nodes": {"count": 10},
        "schedule": schedule or {"kind": "churn", "steps": 24, "churn": {"mean_up": 5, "mean_down": 4}},
        "training": {"steps": 24, "tdgan": {"batch_size": 8, "remind_batch_size": 8, "width": 32}},
        "evaluation": {"every": 12, "samples_per_class": 10},
        "outputs": {"plots": False, "sample_grids": False},
        "engine": {"backend": backend, "workers": 2, "resident_nodes": 2},
    }


def windows_and_crashes() -> dict:
    """5 nodes at tdgan-churn's D_k width and batch: node1 leaves and comes back, node4 joins and
    leaves, node2 crashes at step 6."""
    sched = {"kind": "windows", "steps": 16, "windows": [{"node": "node1", "join": 0, "leave": 5},
                                                         {"node": "node1", "join": 10},
                                                         {"node": "node4", "join": 3, "leave": 12}],
             "crashes": [{"node": "node2", "step": 6}]}
    data = tiny_tdgan(seed=2, **sched)
    data["nodes"] = {"count": 5}
    data["training"] = {"steps": 16, "tdgan": {"batch_size": 32, "remind_batch_size": 32, "width": 128}}
    return data


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


@pytest.mark.stochastic
def test_churn_schedule_is_honoured_and_seeded_runs_repeat(tmp_path):
    sc = scenario_from_dict(tiny_tdgan())
    s1 = simulate(sc, tmp_path / "a")
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    av = build_availability(sc.schedule, sc.nodes.ids, 24, sc.seed)
    ticks = [r for r in rows if r["kind"] in ("step", "idle")]
    assert [r["tick"] for r in ticks] == list(range(24))
    for r in ticks:  # who was online at each step, as the cloud saw it, equals the availability model
        assert r["online"] == sorted(av.online_at(r["tick"])), r["tick"]
    assert any(r["kind"] == "idle" for r in ticks) or all(av.online_at(t) for t in range(24))
    steps = [r for r in ticks if r["kind"] == "step"]
    assert all(r["accepted"] == len(r["online"]) for r in steps)
    assert s1.tdgan.generator_steps == len(steps)
    # virtual nodes were parked on disk and restored (2 resident per worker, 5 nodes each)
    hosts = s1.engine.workers_stats
    assert sum(h["spilled"] for h in hosts) > 0 and sum(h["restored"] for h in hosts) > 0
    assert sum(h["activations"] for h in hosts) == sum(len(r["online"]) for r in steps)
    assert any(r["kind"] == "eval" and r["fid_target"] > 0 for r in rows)

    sc2 = scenario_from_dict(tiny_tdgan())
    sc2.engine.resident_nodes = 100  # no spilling: state parked in memory must give the same numbers
    simulate(sc2, tmp_path / "b")
    assert strip(rows) == strip(read_metrics(tmp_path / "b" / "metrics.jsonl"))

    other = simulate(scenario_from_dict(tiny_tdgan(seed=4)), tmp_path / "c")
    rows_c = read_metrics(tmp_path / "c" / "metrics.jsonl")
    assert [r["online"] for r in rows_c if "online" in r] != [r["online"] for r in rows if "online" in r]
    assert other.final_fid != s1.final_fid


@pytest.mark.stochastic
def test_node_crashing_mid_step_does_not_stop_the_run(tmp_path):
    sched = {"kind": "windows", "steps": 12, "windows": [{"node": "node1", "join": 0, "leave": 4},
                                                         {"node": "node1", "join": 8}],
             "crashes": [{"node": "node2", "step": 5}]}
    sc = scenario_from_dict(tiny_tdgan(**sched))
    metrics = Metrics()
    s = simulate(sc, tmp_path / "run", metrics=metrics)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["tick"] for r in rows] == list(range(12)) and s.tdgan.status == "finished"
    crash = rows[5]
    assert "node2" in crash["online"] and crash["failed"] == ["node2"]
    assert crash["accepted"] == len(crash["online"]) - 1 and crash["missing"] == 1
    assert all("node2" not in r["online"] for r in rows[6:])
    assert all("node1" not in r["online"] for r in rows[4:8]) and all("node1" in r["online"] for r in rows[8:])
    assert s.tdgan.generator_steps == 12
    value = metrics.registry.get_sample_value  # what the Prometheus endpoint serves during a run
    assert value("edgegan_generator_steps_total") == 12
    assert value("edgegan_leaves_total") == 2 and value("edgegan_joins_total") == 11
    assert value("edgegan_feature_fid") == s.final_fid["tdgan"]
    # one round trip per reply received (the crashed node sent none), each its worker call's own
    assert value("edgegan_feedback_roundtrip_seconds_count") == sum(len(r["online"]) - len(r["failed"]) for r in rows)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_fid"]["tdgan"] > 0


def test_coalescence_source_leaving_mid_pretraining(tmp_path):
    sc = scenario_from_dict({
        "name": "tiny-coalescence", "seed": 0, "pipeline": "coalescence", "aggregator": "weight-average",
        "data": {"dataset": "digits", "classes": [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]},
        "nodes": {"count": 3},
        "schedule": {"kind": "windows", "windows": [{"node": "node1", "join": 0, "leave": 5}]},
        "training": {"pretrain_steps": 12, "adapt_steps": 6, "critic_steps": 1, "generator_width": 32,
                     "critic_width": 32},
        "target": {"methods": ["barycentric_fa", "edge_only"], "samples": 20},
        "evaluation": {"every": 3, "samples": 200},
        "engine": {"backend": "inproc", "workers": 2},
    })
    s = simulate(sc, tmp_path / "run")
    co = s.coalescence
    assert co.uploaded == ["node0", "node2"] and co.left == ["node1"]
    assert set(s.final_fid) == {"barycentric_fa", "edge_only"}
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    pre = {r["node"]: r for r in rows if r["kind"] == "pretrain"}
    assert pre["node1"]["status"] == "left" and pre["node1"]["steps"] == 5
    curve = [r["iteration"] for r in rows if r.get("method") == "edge_only"]
    assert curve == [0, 3, 6]
    for f in ("metrics.jsonl", "summary.json", "report.md", "fid.png", "nodes_online.png", "class_coverage.png",
              "samples_barycentric_fa.png"):
        assert (tmp_path / "run" / f).is_file(), f
    assert "barycentric_fa" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("name", ["grid-barycenter"])
def test_grid_scenario_runs(tmp_path, name):
    from edgegan.sim.scenario import load_scenario

    sc = load_scenario(name)
    from edgegan.barycenter.grid import aggregate_grid

    sc.grid.compare_to = None  # Sinkhorn on 64×64 is the slow part; the DCNN is one forward pass
    sc.grid.weights, sc.nodes.eta = "eta", [1.0, 2.0, 4.0, 4.0]  # λ ∝ 1/η = (1, 1/2, 1/4, 1/4) / 2
    s = simulate(sc, tmp_path / "run")
    g = s.grid
    assert g.nodes == ["node0", "node1", "node2", "node3"]
    assert g.weights == pytest.approx([0.5, 0.25, 0.125, 0.125], abs=1e-12)
    want = aggregate_grid(g.inputs, np.array([0.5, 0.25, 0.125, 0.125]), sc.aggregator, sc.grid.model, sc.grid.reg)
    np.testing.assert_allclose(g.barycenter, np.asarray(want), rtol=0, atol=1e-6)
    assert (tmp_path / "run" / "grid_barycenter.png").is_file()


def test_a_worker_call_carries_one_stacked_tensor_each_way(digits):
    """NodeHost.feedback gets a FeedbackBatch (one fakes + one labels tensor) and answers a ReplyBatch
    (one gradient tensor): pickled, as Ray ships them, they hold the payload once (not one tensor per
    node, which made each actor keep ~3 MB per request), and they unpack to the same replies a host
    answering the plain request list gives; a node crashing at this step is its NodeFailure in place."""
    import pickle

    import torch

    from edgegan.data import partition_by_classes
    from edgegan.runtime.roles import NodeFailure
    from edgegan.sim.batches import FeedbackBatch, ReplyBatch
    from edgegan.sim.host import NodeHost
    from edgegan.tdgan import TDGANConfig
    from edgegan.tdgan.messages import FeedbackReply, FeedbackRequest

    cfg = TDGANConfig(batch_size=4, width=16, seed=2)
    parts = partition_by_classes(digits, [[0, 1], [2, 3], [4, 5]], samples_per_node=[20, 20, 20], seed=0)
    nodes = [(f"n{i}", p) for i, p in enumerate(parts)]
    gen = torch.Generator().manual_seed(0)
    reqs = [FeedbackRequest(k, 3, torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1, p.y[:4].clone()) for k, p in nodes]
    batch = FeedbackBatch.of(reqs)
    wire = pickle.dumps(batch)
    payload = batch.fakes.numel() * 4 + batch.labels.numel() * 8
    assert len(wire) < payload + 2000 and len(pickle.dumps(reqs)) > len(wire)
    for i, r in enumerate(pickle.loads(wire)):
        assert (r.node_id, r.step) == (reqs[i].node_id, 3)
        assert torch.equal(r.fake, reqs[i].fake) and torch.equal(r.labels, reqs[i].labels)

    hosts = [NodeHost(i, resident_cap=1, spill_dir=None) for i in range(2)]
    for h in hosts:
        h.add_tdgan_nodes(cfg, nodes, crashes={"n1": 3})
    try:
        want = hosts[0].feedback(reqs)
        got = pickle.loads(pickle.dumps(hosts[1].feedback(pickle.loads(wire))))
        assert isinstance(got, ReplyBatch) and got.grads.shape == (8, 1, 8, 8) and len(got) == 3
        assert isinstance(got[1], NodeFailure) and "left during step 3" in got[1].detail
        for i in (0, 2):
            assert isinstance(got[i], FeedbackReply) and (got[i].node_id, got[i].step) == (reqs[i].node_id, 3)
            assert torch.equal(got[i].grad, want[i].grad) and got[i].stats == want[i].stats
            assert got[i].grad.shape == reqs[i].fake.shape
    finally:
        for h in hosts:
            h.close()
