"""Cloud/edge roles over the in-process transport: membership, π renormalisation, checkpoint
resume and the Prometheus collectors (issue 7; no sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from edgegan.config import from_dict
from edgegan.data import partition_by_classes
from edgegan.monitor.metrics import REJECT_REASONS, Metrics
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.inproc import InprocLink
from edgegan.errors import FailureReason
from edgegan.runtime.roles import EdgeNode, NodeFailure, TDGANServer


def _cfg(tmp: Path, **kw) -> CloudConfig:
    base = {"allow_anonymous": True, "device": "cpu", "checkpoint_dir": str(tmp / "ckpt"), "steps": 12,
            "checkpoint_every": 4, "tdgan": {"width": 32, "batch_size": 16, "remind_batch_size": 16}}
    base.update(kw)
    return from_dict(CloudConfig, base)


@pytest.fixture(scope="module")
def nodes(digits):
    return partition_by_classes(digits, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]], [100, 200, 300], seed=0)


class DroppingLink(InprocLink):
    """Drops ``victim`` (as a transport does when its stream dies) before step ``at``."""

    def __init__(self, server, edges, victim: str, at: int) -> None:
        super().__init__(server, edges)
        self.victim, self.at, self.pis = victim, at, []

    async def exchange(self, requests, timeout_s):
        self.pis.append(dict(self.server.tdgan.pi))
        if self.server.tdgan.step == self.at - 1:
            self.drop(self.victim, NodeFailure(FailureReason.DISCONNECTED, "stream closed"))
        return await super().exchange(requests, timeout_s)


def test_a_dropped_node_leaves_pi_is_renormalised_and_the_run_goes_on(tmp_path, nodes) -> None:
    server = TDGANServer(_cfg(tmp_path, start_nodes=3))
    edges = [EdgeNode(f"e{k}", d) for k, d in enumerate(nodes)]
    link = DroppingLink(server, edges, "e2", at=6)
    assert asyncio.run(server.run(link, asyncio.Event())) == "finished"
    assert server.tdgan.step == 12 and link.done == (12, "finished")
    assert link.pis[0] == pytest.approx({"e0": 1 / 6, "e1": 2 / 6, "e2": 3 / 6})
    assert link.pis[-1] == pytest.approx({"e0": 1 / 3, "e1": 2 / 3})
    assert [h["accepted"] for h in server.history] == [3] * 5 + [2] + [2] * 6
    m = server.metrics
    assert m.joins._value.get() == 3 and m.leaves._value.get() == 1 and m.nodes_online._value.get() == 2
    assert m.generator_steps._value.get() == 12
    server.close()


def test_resume_from_checkpoint_continues_exactly(tmp_path, nodes) -> None:
    edges = [EdgeNode("e0", nodes[0])]
    full = TDGANServer(_cfg(tmp_path / "full", steps=8))
    asyncio.run(full.run(InprocLink(full, edges), asyncio.Event()))
    full.close()

    # the same run stopped after step 4's checkpoint, then a fresh process on the same folder
    first = TDGANServer(_cfg(tmp_path / "split", steps=4))
    edges2 = [EdgeNode("e0", nodes[0])]
    asyncio.run(first.run(InprocLink(first, edges2), asyncio.Event()))
    first.close()
    second = TDGANServer(_cfg(tmp_path / "split", steps=8, rejoin_grace_s=5.0))
    assert second.resumed_step == 4 and second.tdgan.online == ["e0"]
    link = InprocLink(second, edges2)  # the same edge object: its D_k carried on, as a live edge's would
    asyncio.run(second.run(link, asyncio.Event()))
    second.close()
    assert second.tdgan.totals["membership_changes"] == 1  # the node came back in the grace period
    a, b = full.tdgan.G.state_dict(), second.tdgan.G.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_feedback_never_touches_the_generator(tmp_path, nodes) -> None:
    class NaNLink(InprocLink):
        async def exchange(self, requests, timeout_s):
            out = await super().exchange(requests, timeout_s)
            for r in out.values():
                r.grad[0, 0, 0, 0] = float("nan")
            return out

    server = TDGANServer(_cfg(tmp_path, steps=1))
    before = {k: v.clone() for k, v in server.tdgan.G.state_dict().items()}
    link = NaNLink(server, [EdgeNode("e0", nodes[0])])
    stop = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(server.run(link, stop))
        await asyncio.sleep(0.5)
        stop.set()
        await task

    asyncio.run(run())
    assert all(torch.equal(before[k], v) for k, v in server.tdgan.G.state_dict().items())
    assert "e0" not in link.edges  # the node was dropped
    assert server.metrics.rejected.labels("nonfinite")._value.get() == 1
    server.close()


def test_refusal_reason_is_typed_not_read_from_the_text(tmp_path, digits) -> None:
    """A node whose id contains "norm" sending float64 is refused as ``dtype`` (issue 13)."""
    class Float64Link(InprocLink):
        async def exchange(self, requests, timeout_s):
            out = await super().exchange(requests, timeout_s)
            return {k: dataclasses.replace(r, grad=r.grad.double()) for k, r in out.items()}

    server = TDGANServer(_cfg(tmp_path, steps=1, eval_dataset=None))
    part = partition_by_classes(digits, [[0, 1]], [50], seed=0)[0]
    link = Float64Link(server, [EdgeNode("normal-3", part)])
    stop = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(server.run(link, stop))
        while "normal-3" in link.edges:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(run())
    server.close()
    counts = {r: server.metrics.rejected.labels(r)._value.get() for r in REJECT_REASONS}
    assert counts == {r: float(r == "dtype") for r in REJECT_REASONS}


def test_metrics_live_in_their_own_registry_with_units_in_names() -> None:
    a, b = Metrics(), Metrics()
    a.bytes_sent.inc(10)
    a.reject("not-a-reason")
    assert b.bytes_sent._value.get() == 0
    text = generate_latest(a.registry).decode()
    for name in ("edgegan_nodes_online", "edgegan_feedback_roundtrip_seconds_bucket", "edgegan_bytes_sent_total 10.0",
                 "edgegan_bytes_received_total", 'edgegan_feedback_rejected_total{reason="malformed"} 1.0',
                 "edgegan_generator_steps_total", "edgegan_joins_total", "edgegan_leaves_total",
                 "edgegan_feature_fid", "edgegan_loss"):
        assert name in text, name
    labels = {k for fam in a.registry.collect() for smp in fam.samples for k in smp.labels}
    assert not labels & {"node", "node_id", "peer", "client"}  # no per-node label values
    assert "reason" in labels


@pytest.mark.stochastic
def test_cloud_evaluation_sets_feature_fid(tmp_path, nodes, digits_classifier) -> None:
    server = TDGANServer(_cfg(tmp_path, steps=6, eval_dataset="digits", eval_every=3, eval_samples_per_class=20))
    asyncio.run(server.run(InprocLink(server, [EdgeNode("e0", nodes[0])]), asyncio.Event()))
    server.close()
    assert [e["step"] for e in server.evals] == [3, 6]
    fid = server.evals[-1]["feature_fid"]
    assert fid > 0 and server.metrics.feature_fid._value.get() == fid
    assert server.report()["evals"] == server.evals
