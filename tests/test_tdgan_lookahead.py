"""``tdgan.lookahead``: the cloud sends each node's next labels with its request, so the edge draws
its next real batch and computes D_k's real half while the cloud steps. The update begun ahead
gives the bytes of the update computed when the request arrives, whatever nodes share its pass;
the split step is the exact step's maths in another summation order."""

from __future__ import annotations

import asyncio

import pytest
import torch

from edgegan.data import partition_by_classes
from edgegan.nn import build_gan
from edgegan.runtime.edge_host import EdgeHost
from edgegan.tdgan import FeedbackRequest, TDGANCloud, TDGANConfig, TDGANEdge
from edgegan.tdgan.edge import PackedEdges, class_pools
from edgegan.tdgan.messages import NodeInfo

IDS = ["e0", "e1", "e2"]


def _parts(digits):
    return dict(zip(IDS, partition_by_classes(digits, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]], seed=0)))


def _labels(data, n: int, g: torch.Generator) -> torch.Tensor:
    return data.y[torch.randint(len(data), (n,), generator=g)]


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_an_update_begun_ahead_is_the_update_computed_on_arrival(digits, arch: str) -> None:
    """Replies and D_k rows, step by step, with and without :meth:`TDGANEdge.look_ahead`; a look-ahead
    for other labels, or for classes the node does not hold, is dropped and changes nothing."""
    cfg = TDGANConfig(batch_size=16, width=32, seed=2, arch=arch, lookahead=True)
    data = _parts(digits)["e0"]
    ahead, plain = TDGANEdge("e0", data, cfg), TDGANEdge("e0", data, cfg)
    g = torch.Generator().manual_seed(0)
    y = _labels(data, 16, g)
    for step in range(6):
        fake = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
        nxt = _labels(data, 16, g)
        a, b = ahead.feedback(FeedbackRequest("e0", step, fake, y)), plain.feedback(FeedbackRequest("e0", step, fake, y))
        assert torch.equal(a.grad, b.grad) and a.stats == b.stats, step
        assert torch.equal(ahead.row, plain.row), step
        ahead.look_ahead({2: _labels(data, 16, g), 4: torch.full((16,), 9)}.get(step, nxt))
        assert (ahead._ahead is None) == (step == 4), step  # class 9 is not e0's: nothing to begin
        y = nxt


def test_a_pass_mixing_begun_and_fresh_nodes_gives_each_node_its_own_bytes(digits) -> None:
    """Three nodes in one pass, one begun ahead, one begun for other labels, one not begun: every
    reply and row equals that node's own TDGANEdge with no look-ahead at all."""
    cfg = TDGANConfig(batch_size=16, width=32, seed=4, lookahead=True)
    parts = _parts(digits)
    packed = PackedEdges(cfg, parts["e0"])
    nodes = [(k, d, class_pools(d)) for k, d in parts.items()]
    block = torch.stack([packed.fresh(k, d) for k, d in parts.items()])
    alone = {k: TDGANEdge(k, d, cfg) for k, d in parts.items()}
    g = torch.Generator().manual_seed(1)
    labels = [_labels(d, 16, g) for d in parts.values()]
    for step in range(3):
        begun = packed.look_ahead(block, nodes, labels)
        assert all(a is not None for a in begun)
        labels[1] = _labels(parts["e1"], 16, g)  # e1's request comes with other labels: its begun update is stale
        reqs = [FeedbackRequest(k, step, torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, y) for k, y in zip(IDS, labels)]
        got = packed.feedback(block, nodes, reqs, [begun[0], begun[1], None])
        assert (packed.begun, packed.discarded) == (1, 1)
        for k, r, reply, row in zip(IDS, reqs, got, block):
            want = alone[k].feedback(r)
            assert torch.equal(reply.grad, want.grad) and reply.stats == want.stats, (step, k)
            assert torch.equal(row, alone[k].row), (step, k)
        labels = [_labels(d, 16, g) for d in parts.values()]


def test_the_split_step_is_the_exact_step_in_another_summation_order(digits) -> None:
    """Same request, same D_k: the lookahead step's feedback and d_loss agree with the exact step's to
    float32 rounding (they differ: the sums run in another order), and d_real is the score before
    the update rather than after it."""
    data = _parts(digits)["e2"]
    g = torch.Generator().manual_seed(5)
    req = FeedbackRequest("e2", 0, torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, _labels(data, 16, g))
    exact = TDGANEdge("e2", data, TDGANConfig(batch_size=16, width=32)).feedback(req)
    split = TDGANEdge("e2", data, TDGANConfig(batch_size=16, width=32, lookahead=True)).feedback(req)
    torch.testing.assert_close(split.grad, exact.grad, rtol=1e-4, atol=1e-7)
    for k in ("d_loss", "d_fake", "g_loss"):
        assert split.stats[k] == pytest.approx(exact.stats[k], rel=1e-5, abs=1e-7), k
    assert split.stats["d_real"] != exact.stats["d_real"]


def test_the_cloud_sends_next_labels_and_keeps_them_across_a_checkpoint(digits) -> None:
    """With lookahead every request carries the node's next labels and the next request uses exactly
    those; a node that leaves takes its drawn labels with it; state_dict carries them."""
    cfg = TDGANConfig(batch_size=8, width=16, lookahead=True)
    parts = _parts(digits)

    def cloud() -> TDGANCloud:
        G, _ = build_gan("mlp", (1, 8, 8), cfg.latent_dim, 10, 16)
        c = TDGANCloud(G, cfg)
        for k in IDS[:2]:
            c.join(NodeInfo.of(k, parts[k]))
        return c

    a = cloud()
    first = {r.node_id: r for r in a.make_requests()}
    assert all(r.next_labels is not None and r.next_labels.shape == (8,) for r in first.values())
    a.apply_feedback([])
    state = a.state_dict()
    second = {r.node_id: r for r in a.make_requests()}
    for k in IDS[:2]:
        assert torch.equal(second[k].labels, first[k].next_labels), k
    b = cloud()
    b.load_state_dict(state)
    again = {r.node_id: r for r in b.make_requests()}
    for k in IDS[:2]:
        assert torch.equal(again[k].labels, second[k].labels) and torch.equal(again[k].next_labels, second[k].next_labels)
    a.leave("e1")
    assert "e1" not in a.state_dict()["ahead"]
    plain = TDGANCloud(build_gan("mlp", (1, 8, 8), cfg.latent_dim, 10, 16)[0], TDGANConfig(batch_size=8, width=16))
    plain.join(NodeInfo.of("e0", parts["e0"]))
    assert plain.make_requests()[0].next_labels is None


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_a_host_begins_its_nodes_next_updates_between_steps(digits, arch: str) -> None:
    """An EdgeHost with lookahead: after each step's replies, ``look_ahead`` of each request begins
    the next update on the look-ahead thread; every reply is still the node's own TDGANEdge's bytes."""
    cfg = TDGANConfig(batch_size=16, width=32, seed=3, lookahead=True, arch=arch)
    parts = _parts(digits)
    host = EdgeHost(parts)
    host.configure(cfg, (1, 8, 8))
    alone = {k: TDGANEdge(k, d, cfg) for k, d in parts.items()}
    g = torch.Generator().manual_seed(0)
    nxt = {k: _labels(d, 16, g) for k, d in parts.items()}

    async def run() -> int:
        used = 0
        for step in range(4):
            reqs = []
            for k, d in parts.items():
                y, nxt[k] = nxt[k], _labels(d, 16, g)
                reqs.append(FeedbackRequest(k, step, torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, y, nxt[k]))
            used += sum(host.ahead.get(k) is not None for k in IDS)
            got = await asyncio.gather(*(host.answer(r) for r in reqs))
            for r, reply in zip(reqs, got):
                want = alone[r.node_id].feedback(r)
                assert torch.equal(reply.grad, want.grad) and reply.stats == want.stats, (step, r.node_id)
                host.look_ahead(r)
            for _ in range(500):  # the cloud steps; the host's look-ahead thread (nice 19) begins the next updates
                if step == 3 or all(host.ahead.get(k) is not None for k in IDS):
                    break
                await asyncio.sleep(0.01)
        return used

    try:
        assert asyncio.run(run()) == 3 * len(IDS)  # every node's update begun ahead from step 1 on
    finally:
        host.close()


def test_an_edge_whose_look_ahead_fails_still_answers_with_its_own_bytes(digits, monkeypatch, caplog) -> None:
    """``EdgeNode``: a look-ahead that raises is logged and the update is computed whole on arrival."""
    from edgegan.runtime.edge_node import EdgeNode

    cfg = TDGANConfig(batch_size=16, width=32, lookahead=True)
    data = _parts(digits)["e1"]
    node, plain = EdgeNode("e1", data), TDGANEdge("e1", data, cfg)
    node.configure_tdgan(cfg, (1, 8, 8))
    g = torch.Generator().manual_seed(7)

    def boom(labels: torch.Tensor) -> None:
        raise RuntimeError("out of memory (simulated)")

    async def run() -> None:
        y = _labels(data, 16, g)
        for step in range(3):
            nxt = _labels(data, 16, g)
            req = FeedbackRequest("e1", step, torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, y, nxt)
            got, want = await node.answer(req), plain.feedback(req)
            assert torch.equal(got.grad, want.grad) and got.stats == want.stats, step
            node.look_ahead(req)
            y = nxt

    monkeypatch.setattr(node._tdgan, "look_ahead", boom)
    asyncio.run(run())
    assert "could not begin its next update" in caplog.text and node.tally.begun == 0
