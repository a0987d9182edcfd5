"""Scenario schema and availability models (issue 8): one-line errors, built-ins, schedules."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from edgegan.cli import main
from edgegan.errors import EdgeganError
from edgegan.sim.availability import Availability, build_availability, churn, from_trace
from edgegan.sim.scenario import ScheduleSpec, builtin_dir, builtin_scenarios, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data, field", [
    ({"nodes": {"cont": 3}}, "nodes.cont: unknown key"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"schedule": {"kind": "sometimes"}}, "schedule.kind: unknown value"),
    ({"nodes": {"count": 0}}, "nodes.count: must be >= 1"),
    ({"nodes": {"count": "three"}}, "nodes.count: expected an integer"),
    ({"aggregator": "median"}, "aggregator: unknown aggregator"),
    ({"pipeline": ["tdgan", "gossip"]}, "pipeline[1]: unknown pipeline"),
    ({"schedule": {"kind": "churn", "churn": {"mean_up": -1}}}, "schedule.churn.mean_up: must be > 0"),
    ({"schedule": {"kind": "windows", "windows": [{"node": "node7", "join": 0}]}},
     "schedule.windows[0].node: unknown node"),
    ({"training": {"tdgan": {"loss": "hinge"}}}, "training.tdgan.loss"),
    ({"target": {"methods": ["magic"]}}, "target.methods[0]: unknown method"),
])
def test_bad_scenarios_are_one_line_errors_naming_the_field(data, field):
    base = {"data": {"classes": [[0, 1]]}}
    with pytest.raises(EdgeganError) as e:
        scenario_from_dict({**base, **data})
    msg = str(e.value)
    assert msg.startswith(field), msg
    assert "\n" not in msg


def test_cli_reports_bad_scenario_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  count: 2\n  resources: {num_gpu: 1}\n")
    assert main(["simulate", "--scenario", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("edgegan: error: nodes.resources.num_gpu: unknown key")
    assert main(["simulate", "--scenario", "no-such-scenario"]) == 2
    assert "scenario: 'no-such-scenario' is neither" in capsys.readouterr().err


def test_builtins_load_and_config_copies_are_identical(capsys):
    names = set(builtin_scenarios())
    assert {"quickstart", "tdgan-churn", "win-gaussian", "paper-mnist", "paper-cifar10",
            "grid-barycenter"} <= names
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name
    shipped = sorted(p.name for p in builtin_dir().glob("*.yaml"))
    copies = sorted(p.name for p in (ROOT / "configs" / "scenarios").glob("*.yaml"))
    assert shipped == copies
    match, mismatch, errors = filecmp.cmpfiles(builtin_dir(), ROOT / "configs" / "scenarios", shipped, shallow=False)
    assert mismatch == [] and errors == [], "configs/scenarios must equal edgegan/sim/scenarios"
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names)


def test_churn_is_seeded_and_per_node():
    nodes = [f"n{i}" for i in range(20)]
    a = churn(nodes, 300, 30, 10, seed=5)
    assert a == churn(nodes, 300, 30, 10, seed=5)
    assert a != churn(nodes, 300, 30, 10, seed=6)
    # a node's trace does not depend on how many nodes there are
    assert churn(nodes[:3], 300, 30, 10, seed=5) == {k: a[k] for k in nodes[:3]}
    up = sum(b - s for ws in a.values() for s, b in ws) / (20 * 300)
    assert 0.6 < up < 0.9  # stationary share mean_up / (mean_up + mean_down) = 0.75


def test_schedule_conversion_matches_availability():
    nodes = [f"n{i}" for i in range(12)]
    spec = ScheduleSpec(kind="churn")
    spec.churn.mean_up, spec.churn.mean_down = 6, 4
    av = build_availability(spec, nodes, 80, seed=1)
    sched = av.to_schedule()
    for t in range(80):
        assert sorted(sched.online_at(t)) == sorted(av.online_at(t))


def test_trace_and_windows(tmp_path):
    nodes = ["a", "b", "c"]
    csv = tmp_path / "trace.csv"
    csv.write_text("node,join,leave\na,0,5\na,8,\n1,3,4\n")
    w = from_trace(csv, nodes, 10)
    assert w == {"a": [(0, 5), (8, 10)], "b": [(3, 4)], "c": []}
    csv.write_text("node,join,leave\na,4,2\n")
    with pytest.raises(EdgeganError, match="^schedule.trace line 2"):
        from_trace(csv, nodes, 10)
    csv.write_text("id,start,stop\n")
    with pytest.raises(EdgeganError, match="^schedule.trace: .*header"):
        from_trace(csv, nodes, 10)
    sc = scenario_from_dict({"pipeline": "tdgan", "data": {"classes": [[0]]}, "nodes": {"count": 2},
                             "schedule": {"kind": "windows", "steps": 10, "unlisted": "offline",
                                          "windows": [{"node": "node0", "join": 2, "leave": 6}],
                                          "crashes": [{"node": "node0", "step": 4}]}})
    av = build_availability(sc.schedule, sc.nodes.ids, 10, sc.seed)
    assert isinstance(av, Availability)
    assert [len(av.online_at(t)) for t in range(10)] == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    bad = scenario_from_dict({"pipeline": "tdgan", "data": {"classes": [[0]]}, "nodes": {"count": 2},
                              "schedule": {"kind": "windows", "steps": 10,
                                           "windows": [{"node": "node0", "join": 0, "leave": 6},
                                                       {"node": "node0", "join": 4, "leave": 8}]}})
    with pytest.raises(EdgeganError, match="^schedule.windows: windows of node 'node0' overlap"):
        build_availability(bad.schedule, bad.nodes.ids, 10, 0)


def test_empty_scenario_file_says_so_and_every_key_is_optional(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert main(["simulate", "--scenario", str(empty), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (f"edgegan: error: scenario: '{empty}' is empty; every key has a "
                                               "default, but give at least a name; see `edgegan scenarios --show "
                                               "quickstart`")
    named = tmp_path / "named.yaml"
    named.write_text("name: mine\n")
    sc = load_scenario(str(named))  # every other key takes its default and the result validates
    assert sc.name == "mine" and sc.pipelines == ["coalescence"] and sc.data.classes
    for pipeline in ("tdgan", "grid"):
        named.write_text(f"name: mine\npipeline: {pipeline}\n" + ("aggregator: grid-dcnn\n" if pipeline == "grid" else ""))
        assert load_scenario(str(named)).pipelines == [pipeline]


def test_schema_lists_come_from_the_registries():
    from edgegan.barycenter.grid import AGGREGATORS
    from edgegan.data.registry import DATASETS
    from edgegan.nn.factory import ARCHS

    with pytest.raises(EdgeganError) as e:
        scenario_from_dict({"data": {"dataset": "svhn"}})
    assert all(d in str(e.value) for d in DATASETS)
    with pytest.raises(EdgeganError) as e:
        scenario_from_dict({"training": {"arch": "resnet"}})
    assert str(e.value).startswith("training.arch") and all(a in str(e.value) for a in ARCHS)
    with pytest.raises(EdgeganError, match="^grid.compare_to") as e:
        scenario_from_dict({"grid": {"compare_to": "grid-magic"}})
    assert all(a in str(e.value) for a in AGGREGATORS)
