"""BarycenterStrategy with mock replies (Prepare / Execute / Assert), no Flower runtime."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgegan.barycenter import aggregate
from edgegan.barycenter.win import WINConfig
from edgegan.errors import EdgeganError
from edgegan.flower.records import models_from_records, models_to_records
from edgegan.flower.strategy import BARYCENTER_MODELS, BarycenterStrategy
from edgegan.gan import WGANConfig
from edgegan.monitor.metrics import Metrics
from edgegan.nn import build_gan, same_architecture

CFG = WGANConfig(lr=2e-4, beta2=0.9, batch_size=16, critic_steps=2)
WIN = WINConfig(k_g=2, k_t=1, k_v=2, outer_iters=2, batch_size=32, hidden=16, depth=1, seed=0)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages outside a Flower process need a task identity."""
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _uploads(k: int = 3):
    gens, crits = [], []
    for i in range(k):
        torch.manual_seed(100 + i)
        G, D = build_gan("mlp", (1, 8, 8), 8, width=16)
        gens.append(G)
        crits.append(D)
    return gens, crits


def _reply(node_id: int, content: RecordDict) -> Message:
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN))


def _source_reply(node_id: int, pid: int, G, D, eta: float) -> Message:
    arrays, specs = models_to_records({"generator": G, "critic": D})
    return _reply(node_id, RecordDict({
        "arrays": arrays, "specs": specs, "node": ConfigRecord({"role": "source", "partition-id": pid, "eta": eta}),
        "metrics": MetricRecord({"num-examples": 10, "d-loss": 1.0 + pid, "g-loss": -float(pid)})}))


@pytest.mark.parametrize("aggregator", ["recursive_w1", "win"])
def test_aggregate_train_is_stage_one_barycenter(aggregator):
    # Prepare: three sources replying out of partition order, a target, a failed node
    gens, crits = _uploads()
    eta = [2.0, 1.0, 0.5]
    replies = [_source_reply(30 + p, p, gens[p], crits[p], eta[p]) for p in (2, 0, 1)]
    replies.append(_reply(99, RecordDict({"node": ConfigRecord({"role": "target", "partition-id": 3}),
                                          "metrics": MetricRecord({"num-examples": 5})})))
    replies.append(_error_reply(77, "out of memory"))
    metrics = Metrics()
    strategy = BarycenterStrategy(aggregator, 2, CFG, WIN, seed=5, metrics=metrics)

    # Execute
    arrays, train_metrics = strategy.aggregate_train(1, replies)

    # Assert: same weights as calling edgegan directly with the same seed and input order
    torch.manual_seed(5)
    direct = aggregate(aggregator, gens, crits, eta, 2, CFG, win=WIN)
    got = models_from_records(arrays, strategy.barycenter_specs, BARYCENTER_MODELS)
    for name in BARYCENTER_MODELS:
        want = getattr(direct, name).state_dict()
        for key, value in got[name].state_dict().items():
            torch.testing.assert_close(value, want[key], rtol=0, atol=0)
    G = got["generator"]
    assert not any(same_architecture(G, g) and all(torch.equal(a, b) for a, b in zip(G.parameters(), g.parameters()))
                   for g in gens)  # trained, not one upload passed through
    assert strategy.target_nodes == [99]
    assert train_metrics["sources"] == 3 and train_metrics["d-loss"] == pytest.approx(2.0)
    value = metrics.registry.get_sample_value
    assert value("edgegan_round_nodes", {"outcome": "replied"}) == 4
    assert value("edgegan_round_nodes", {"outcome": "failed"}) == 1
    assert value("edgegan_aggregation_seconds_count") == 1
    assert value("edgegan_uploads_total") == 3
    assert value("edgegan_loss", {"kind": "d_loss"}) == pytest.approx(2.0)


def test_undecodable_upload_counts_as_failed_and_evaluate_goes_to_targets_only():
    gens, crits = _uploads(2)
    bad = _source_reply(41, 1, gens[1], crits[1], 1.0)
    wider = build_gan("mlp", (1, 8, 8), 8, width=32)[0]  # arrays that do not fit the sent spec
    bad.content.array_records["arrays"] = models_to_records({"generator": wider, "critic": crits[1]})[0]
    replies = [_source_reply(40, 0, gens[0], crits[0], 1.0), bad,
               _reply(50, RecordDict({"node": ConfigRecord({"role": "target", "partition-id": 2}),
                                      "metrics": MetricRecord({"num-examples": 5})}))]
    metrics = Metrics()
    strategy = BarycenterStrategy("recursive_w1", 1, CFG, seed=0, metrics=metrics)

    arrays, _ = strategy.aggregate_train(1, replies)

    assert metrics.registry.get_sample_value("edgegan_round_nodes", {"outcome": "failed"}) == 1
    assert metrics.registry.get_sample_value("edgegan_uploads_total") == 1

    class OneGrid:  # configure_evaluate never asks the grid: targets come from the train replies
        pass

    messages = list(strategy.configure_evaluate(1, arrays, ConfigRecord({"adapt-steps": 3}), OneGrid()))
    assert [m.metadata.dst_node_id for m in messages] == [50]
    config = messages[0].content.config_records["config"]
    assert config["adapt-steps"] == 3 and "generator.spec" in config
    models = models_from_records(messages[0].content.array_records["arrays"], config, BARYCENTER_MODELS)
    assert set(models) == set(BARYCENTER_MODELS)


def _target_reply(node_id: int, pid: int) -> Message:
    return _reply(node_id, RecordDict({"node": ConfigRecord({"role": "target", "partition-id": pid}),
                                       "metrics": MetricRecord({"num-examples": 5})}))


def _error_reply(node_id: int, reason: str, kind: str = MessageType.TRAIN) -> Message:
    return Message(Error(code=1, reason=reason), reply_to=Message(RecordDict(), dst_node_id=node_id, message_type=kind))


def test_round_fails_when_fewer_sources_upload_than_min_sources():
    # Prepare: 2 of 3 sources; the third ClientApp raised (Flower's reason text, with a newline)
    gens, crits = _uploads(2)
    replies = [_source_reply(40, 0, gens[0], crits[0], 1.0), _source_reply(41, 1, gens[1], crits[1], 1.0),
               _error_reply(42, "<class 'ClientAppException'>:<'\nException occurred. Message: device: "
                                "'cuda:64' asked for but no CUDA GPU is visible'>"),
               _target_reply(50, 3)]
    metrics = Metrics()
    strategy = BarycenterStrategy("recursive_w1", 1, CFG, seed=0, metrics=metrics, min_sources=3)

    # Execute / Assert: one line naming the rule, the counts and the failed node's reason
    with pytest.raises(EdgeganError) as err:
        strategy.aggregate_train(1, replies)
    msg = str(err.value)
    assert msg.startswith("min-sources: round 1: 2 source(s) uploaded a model, 3 required (node 42: ")
    assert "'cuda:64' asked for but no CUDA GPU is visible" in msg and "\n" not in msg
    assert metrics.registry.get_sample_value("edgegan_round_nodes", {"outcome": "failed"}) == 1
    assert metrics.registry.get_sample_value("edgegan_aggregation_seconds_count") == 0  # nothing aggregated

    # the same replies pass when the run asks for 2 sources only
    lenient = BarycenterStrategy("recursive_w1", 1, CFG, seed=0, metrics=Metrics(), min_sources=2)
    arrays, train_metrics = lenient.aggregate_train(1, replies)
    assert arrays is not None and train_metrics["sources"] == 2 and lenient.target_nodes == [50]


def test_failed_stage_two_fails_the_round():
    gens, crits = _uploads(2)
    strategy = BarycenterStrategy("recursive_w1", 1, CFG, seed=0, metrics=Metrics(), min_sources=2)
    arrays, _ = strategy.aggregate_train(1, [_source_reply(40, 0, gens[0], crits[0], 1.0),
                                             _source_reply(41, 1, gens[1], crits[1], 1.0),
                                             _target_reply(50, 2), _target_reply(51, 3)])
    sent = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), None))
    assert sorted(m.metadata.dst_node_id for m in sent) == [50, 51]

    def fid_reply(node_id: int, fid: float) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "fid-adapted": fid})}),
                       reply_to=Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.EVALUATE))

    with pytest.raises(EdgeganError, match=r"^target: round 1: Stage II failed \(node 51: out of memory\)"):
        strategy.aggregate_evaluate(1, [fid_reply(50, 30.0), _error_reply(51, "out of memory", MessageType.EVALUATE)])
    with pytest.raises(EdgeganError, match=r"node 51: no reply before the round timeout"):
        strategy.aggregate_evaluate(1, [fid_reply(50, 30.0)])
    metrics = strategy.aggregate_evaluate(1, [fid_reply(50, 30.0), fid_reply(51, 10.0)])
    assert metrics["fid-adapted"] == pytest.approx(20.0)
    assert strategy.metrics.registry.get_sample_value("edgegan_feature_fid") == pytest.approx(20.0)


def test_strategy_uses_no_private_flower_attribute():
    """Issue 13: only public Strategy/FedAvg/Message APIs, so a Flower upgrade cannot break it."""
    import ast
    import inspect

    import edgegan.flower.strategy as module

    private = [node.attr for node in ast.walk(ast.parse(inspect.getsource(module)))
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")]
    assert private == []


def test_records_refuse_mismatched_arrays():
    gens, crits = _uploads(2)
    arrays, specs = models_to_records({"generator": gens[0]})
    other, _ = models_to_records({"generator": build_gan("mlp", (1, 8, 8), 8, width=32)[0]})
    with pytest.raises(EdgeganError, match=r"^generator\.arrays: do not fit the model spec"):
        models_from_records(other, specs, ["generator"])
    with pytest.raises(EdgeganError, match=r"^critic\.spec: missing"):
        models_from_records(arrays, specs, ["critic"])


def test_pyproject_flower_config_is_the_task_config():
    import dataclasses
    import tomllib
    from pathlib import Path

    from edgegan.flower.task import FlowerTaskConfig, settings

    app = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "edgegan.flower.server_app:app",
                                 "clientapp": "edgegan.flower.client_app:app"}
    defaults = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(FlowerTaskConfig) if f.name != "win_solver"}
    flat = {k: v for k, v in app["config"].items() if not k.startswith("win-")}
    assert flat == defaults  # every key overridable with `flwr run --run-config`
    win_knobs = {f.name.replace("_", "-") for f in dataclasses.fields(WINConfig)}
    assert {k[len("win-"):] for k in app["config"] if k.startswith("win-")} <= win_knobs  # win-<WINConfig field>
    cfg = settings(app["config"])
    assert cfg.win().outer_iters == app["config"].get("win-outer-iters", WINConfig().outer_iters)
    assert cfg.num_nodes == 3 and cfg.sources() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize("key, value, message", [
    ("aggregator", "nwb", r"^run_config\.aggregator: 'nwb' is not a Stage I barycenter"),
    ("eta", "1.0", r"^run_config\.eta: 1 radii for 2 sources"),
    ("no-such-key", 1, r"^run_config\.no-such-key: unknown key"),
])
def test_bad_run_config_is_one_line_error(key, value, message):
    from edgegan.flower.task import settings

    with pytest.raises(EdgeganError, match=message):
        settings({}, {key: value})
