"""Prometheus metrics: the dashboard only names exported, used metrics; a live /metrics scrape
parses with prometheus-client's parser; promtool (where installed) accepts config and exposition."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from edgegan.monitor.metrics import REJECT_REASONS, Metrics, metrics_server
from test_flower_strategy import task_identity  # noqa: F401  (fixture: Flower messages outside a Flower process)

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "edgegan.json"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_BUILTINS = {"up"}  # series Prometheus itself adds to every target
HELPERS = {"reject": "rejected"}  # Metrics helper methods → the collector they update
UPDATE_METHODS = {"inc", "dec", "set", "observe"}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    return exprs


def _collectors(metrics: Metrics) -> dict[str, str]:
    """Family name (as in the exposition) → attribute name on :class:`Metrics`."""
    return {c.describe()[0].name: attr for attr, c in vars(metrics).items() if isinstance(c, MetricWrapperBase)}


def _is_metrics(node: ast.expr) -> bool:
    """``metrics`` or ``<anything>.metrics``: a :class:`Metrics` instance as edgegan/ names it."""
    return (isinstance(node, ast.Name) and node.id == "metrics") or \
        (isinstance(node, ast.Attribute) and node.attr == "metrics")


def _updated_collectors(source: str) -> set[str]:
    """Metrics attributes a call updates: ``….metrics.<attr>[.labels(…)].inc|dec|set|observe(…)``
    or a helper such as ``….metrics.reject(…)``."""
    updated = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, base = node.func.attr, node.func.value
        if method in HELPERS and _is_metrics(base):
            updated.add(HELPERS[method])
        elif method in UPDATE_METHODS:
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute) and base.func.attr == "labels":
                base = base.func.value
            if isinstance(base, ast.Attribute) and _is_metrics(base.value):
                updated.add(base.attr)
    return updated


def test_update_finder_sees_only_metrics_updates():
    updated = _updated_collectors("self.metrics.loss.labels('g').set(1)\nctx.metrics.joins.inc()\n"
                                  "metrics.reject('stale')\nself.loss.set(2)\nmetrics.uploads\n"
                                  "trainer.metrics.bytes_sent.labels\nself.metrics.roundtrip.time()\n")
    assert updated == {"loss", "joins", "rejected"}


def _family(name: str, families: set[str]) -> str | None:
    if name in families:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return None


def test_every_dashboard_metric_is_exported_and_updated_by_the_code():
    exprs = _dashboard_exprs()
    assert len(exprs) >= 14
    names = {m for e in exprs for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", e)}
    collectors = _collectors(Metrics())
    updated = set().union(*(_updated_collectors(p.read_text()) for p in (REPO / "edgegan").rglob("*.py")
                            if p != REPO / "edgegan" / "monitor" / "metrics.py"))
    used = set()
    for name in sorted(names - PROMETHEUS_BUILTINS):
        family = _family(name, set(collectors))
        assert family is not None, f"dashboard queries {name}, which edgegan/monitor/metrics.py does not declare"
        attr = collectors[family]
        # some role, the simulator or the Flower strategy must update it (not only declare it)
        assert attr in updated, f"{family} (Metrics.{attr}) is declared but nothing in edgegan/ updates it"
        used.add(family)
    # the panels: nodes online, joins/leaves, losses, FID, round trip, bytes, rejected, Flower rounds
    for must in ("edgegan_nodes_online", "edgegan_joins", "edgegan_leaves", "edgegan_loss",
                 "edgegan_feature_fid", "edgegan_feedback_roundtrip_seconds", "edgegan_bytes_sent",
                 "edgegan_feedback_rejected", "edgegan_server_round", "edgegan_round_nodes",
                 "edgegan_aggregation_seconds"):
        assert must in used, f"no dashboard panel shows {must}"


def test_dashboard_provisioning_points_at_the_dashboard_and_datasource():
    import yaml

    dash = json.loads(DASHBOARD.read_text())
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/edgegan.yml").read_text())
    compose = yaml.safe_load((REPO / "deploy/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['providers'][0]['options']['path']}:ro" in mounts
    jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert {"edgegan-cloud", "edgegan-sim", "edgegan-flower"} <= jobs


@pytest.fixture
def flower_round(task_identity):
    """(Metrics, bytes of the barycenter sent) after one round driven through the real
    :class:`BarycenterStrategy`: two sources, a target and a failed node reply to ``aggregate_train``,
    ``configure_evaluate`` sends the barycenter to the target, whose FID reply goes to ``aggregate_evaluate``."""
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    from edgegan.flower.strategy import BarycenterStrategy
    from test_flower_strategy import CFG, _error_reply, _source_reply, _target_reply, _uploads

    gens, crits = _uploads(2)
    metrics = Metrics()
    strategy = BarycenterStrategy("recursive_w1", 1, CFG, seed=0, metrics=metrics)
    arrays, _ = strategy.aggregate_train(1, [_source_reply(40, 0, gens[0], crits[0], 1.0),
                                             _source_reply(41, 1, gens[1], crits[1], 1.0),
                                             _target_reply(50, 2), _error_reply(42, "out of memory")])
    assert [m.metadata.dst_node_id for m in strategy.configure_evaluate(1, arrays, ConfigRecord(), None)] == [50]
    fid = Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "fid-adapted": 31.5})}),
                  reply_to=Message(RecordDict(), dst_node_id=50, message_type=MessageType.EVALUATE))
    strategy.aggregate_evaluate(1, [fid])
    return metrics, arrays.count_bytes()


@pytest.fixture
def live_exposition(flower_round):
    """(text scraped from a live /metrics endpoint serving :func:`flower_round`'s collectors, its
    port, bytes the strategy sent) — the endpoint is closed after."""
    metrics, sent = flower_round
    with metrics_server(0, metrics.registry, "127.0.0.1") as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
    return text, port, sent


def test_live_metrics_endpoint_parses(live_exposition):
    text, port, sent = live_exposition
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["edgegan_aggregation_seconds"].type == "histogram"
    assert families["edgegan_feedback_roundtrip_seconds"].type == "histogram"
    rounds = {s.labels["outcome"]: s.value for s in families["edgegan_round_nodes"].samples}
    assert {k: rounds[k] for k in ("replied", "failed")} == {"replied": 3, "failed": 1}
    scalar = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert scalar["edgegan_uploads_total"] == 2 and scalar["edgegan_bytes_sent_total"] == sent > 0
    assert scalar["edgegan_feature_fid"] == 31.5
    assert scalar["edgegan_aggregation_seconds_count"] == 1 and scalar["edgegan_aggregation_seconds_sum"] > 0
    rejected = {s.labels["reason"] for s in families["edgegan_feedback_rejected"].samples
                if s.name == "edgegan_feedback_rejected_total"}
    assert set(REJECT_REASONS) <= rejected  # every reason exported from the start, at 0
    with pytest.raises(OSError):  # metrics_server closed the endpoint when its block ended
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_promtool_accepts_live_exposition(live_exposition):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); CI installs it")
    done = subprocess.run([promtool, "check", "metrics"], input=live_exposition[0], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr  # lint problems exit 1


def test_promtool_accepts_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); CI installs it")
    done = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_edge_role_exports_feedback_metrics(digits):
    """An edge's feedback updates its own exposition: bytes both ways, losses, step."""
    import torch
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from edgegan.runtime.roles import EdgeNode
    from edgegan.tdgan.config import TDGANConfig
    from edgegan.tdgan.messages import FeedbackRequest

    node = EdgeNode("e0", digits.subset(list(range(200))))
    cfg = TDGANConfig(batch_size=8)
    node.configure_tdgan(cfg, digits.image_shape)
    labels = node.data.y[:8].clone()
    req = FeedbackRequest("e0", 3, torch.zeros(8, 1, 8, 8), labels)
    reply = node.feedback(req)
    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(node.metrics.registry).decode())
               for s in f.samples if not s.labels or s.labels.get("kind") in ("d_loss", "g_loss")}
    assert samples["edgegan_bytes_sent_total"] == reply.nbytes() > 8 * 64 * 4
    assert samples["edgegan_bytes_received_total"] == 8 * 64 * 4 + 8 * 8
    assert samples["edgegan_generator_step"] == 3
