"""The batched TDGAN cloud step (seed 003 eq. 1, Alg. 1): one generator forward and one backward
for all online nodes must be the per-node loop's maths, and a node's fake batch must not depend
on the other nodes' labels (BatchNorm statistics per node); a parked (spilled) edge resumes exactly."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from edgegan.data import label_histogram, partition_by_classes
from edgegan.errors import EdgeganError
from edgegan.tdgan import FeedbackRequest, NodeInfo, TDGANCloud, TDGANConfig, TDGANEdge
from edgegan.tdgan.cloud import per_node_batch_norm
from edgegan.nn.factory import build_gan
from edgegan.tdgan.edge import PackedEdges, class_pools, node_seed
from edgegan.tdgan.harness import build_generator

CFG = TDGANConfig(batch_size=8, remind_batch_size=8, seed=5, width=16, lr=2e-3)
ARCHS = ["mlp", "dcgan"]  # dcgan's G has BatchNorm1d and BatchNorm2d


@pytest.fixture(scope="module")
def parts(digits):
    return partition_by_classes(digits, [[0, 1, 2], [3, 4], [5], [6, 7, 8, 9]],
                                samples_per_node=[100, 300, 60, 80], seed=0)


def info(node_id, part):
    return NodeInfo(node_id, len(part), tuple(int(c) for c in label_histogram(part.y, 10)))


def cloud_in_progress(parts, cfg):
    """Three nodes online, G moved away from G_{t−1} (frozen at the last join) by three steps."""
    cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
    edges = {f"n{i}": TDGANEdge(f"n{i}", p, cfg=cfg) for i, p in enumerate(parts[:3])}
    cloud.join(edges["n0"].info())
    cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])
    cloud.join(edges["n1"].info())
    cloud.join(edges["n2"].info())
    for _ in range(3):
        cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])
    twin = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
    twin.load_state_dict(copy.deepcopy(cloud.state_dict()))
    return cloud, twin, edges


def per_node_loop_step(cloud, replies):
    """The step with one G call per online node (the code before batching): draws (y_k, u_k) from
    the same RNG streams, then Adam on Σ_k π_k ⟨G(u_k, y_k), g_k⟩ + λ · reminding loss."""
    b, pis = cloud.cfg.batch_size, cloud.pi
    fakes = {}
    for node_id, i in cloud._online.items():
        y = cloud._labels(torch.tensor(i.label_histogram), b)
        fakes[node_id] = (y, cloud.G(cloud._latent(b), y))
    digest = sum(pis[r.node_id] * (fakes[r.node_id][1] * r.grad).sum() for r in replies)
    loss = digest + cloud.cfg.reminding_weight * cloud.reminding_loss()
    cloud.opt.zero_grad(set_to_none=True)
    loss.backward()
    cloud.opt.step()
    return fakes


def assert_same_step(a, b):
    """Same gradients, parameters after the Adam step, and BatchNorm running statistics. Entries
    whose exact gradient is 0 (a bias right before BatchNorm; the embedding of a class that fills a
    node's whole batch) get rounding noise (~1e-8) as gradient in either form, which Adam turns
    into steps of ±lr: those are compared as gradients only."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        signal = q.grad.abs() > 1e-6
        assert signal.any() or name.endswith("bias")
        torch.testing.assert_close(p[signal], q[signal], rtol=1e-5, atol=1e-6, msg=name)
    for (name, x), y in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.stochastic
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_step_equals_the_per_node_loop_including_the_reminding_term(parts, arch):
    cfg = dataclasses.replace(CFG, arch=arch)
    cloud, twin, edges = cloud_in_progress(parts, cfg)
    reqs = cloud.make_requests()
    replies = [edges[r.node_id].feedback(r) for r in reqs]
    stats = cloud.apply_feedback(replies)
    fakes = per_node_loop_step(twin, replies)
    assert stats["g_stepped"] == 1 and stats["accepted"] == 3
    assert stats["reminding_loss"] > 1e-4  # G ≠ G_{t−1}: the reminding term pulls
    for r in reqs:  # the same requests went out
        assert torch.equal(r.labels, fakes[r.node_id][0])
        torch.testing.assert_close(r.fake, fakes[r.node_id][1].detach(), rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(p, q) for p, q in zip(cloud.G.parameters(), cloud.G_prev.parameters())]
    assert any(moved)
    assert_same_step(cloud.G, twin.G)


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_bad_feedback_of_one_node_leaves_the_batched_step_equal_to_the_others_alone(parts, bad):
    cfg = dataclasses.replace(CFG, arch="dcgan")
    cloud, twin, edges = cloud_in_progress(parts, cfg)
    reqs = cloud.make_requests()
    replies = [edges[r.node_id].feedback(r) for r in reqs]
    g = replies[1].grad
    replies[1] = dataclasses.replace(replies[1], grad=g[:-1] if bad == "shape" else torch.full_like(g, float("nan")))
    stats = cloud.apply_feedback(replies)
    per_node_loop_step(twin, [replies[0], replies[2]])
    assert stats["accepted"] == 2 and stats["rejected"] == 1
    assert all(torch.isfinite(p).all() for p in cloud.G.parameters())
    assert_same_step(cloud.G, twin.G)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_nodes_fake_batch_does_not_depend_on_the_other_nodes_labels(parts, arch):
    cfg = dataclasses.replace(CFG, arch=arch)
    sent = []
    for others in ([], [parts[1]], [parts[2], parts[3]]):  # alone, beside classes {3, 4}, beside {5} and {6..9}
        cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
        for i, p in enumerate([parts[0], *others]):
            cloud.join(info(f"n{i}", p))
        reqs = cloud.make_requests()
        sent.append(reqs[0])
        assert len(reqs) == 1 + len(others)
    assert not torch.equal(sent[0].fake, torch.zeros_like(sent[0].fake))
    for r in sent[1:]:
        assert torch.equal(r.labels, sent[0].labels)
        torch.testing.assert_close(r.fake, sent[0].fake, rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_node_batch_norm_is_each_groups_own_batch_norm(momentum):
    torch.manual_seed(0)
    for bn, shape in ((nn.BatchNorm1d(6, momentum=momentum), (4, 5, 6)), (nn.BatchNorm2d(3, momentum=momentum), (4, 5, 3, 2, 2))):
        nn.init.uniform_(bn.weight)
        nn.init.uniform_(bn.bias)
        seq = copy.deepcopy(bn)
        x = (torch.randn(shape) * torch.arange(1, 5).view(4, *[1] * (len(shape) - 1))).requires_grad_(True)
        w = torch.randn(shape)
        with per_node_batch_norm(bn, 4) as grouped:
            out = grouped(x.flatten(0, 1))
        (out.view(shape) * w).sum().backward()
        ref = torch.stack([seq(x[k]) for k in range(4)])  # one call per group, in order
        gx, gw = torch.autograd.grad((ref * w).sum(), [x, seq.weight])
        torch.testing.assert_close(out.view(shape), ref)
        torch.testing.assert_close(x.grad, gx)
        torch.testing.assert_close(bn.weight.grad, gw)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(seq, name), msg=name)
        assert "forward" not in vars(bn)  # the module itself is never patched


def test_a_parked_edge_resumes_exactly_and_a_wrong_size_state_is_one_line(parts):
    """The engine parks virtual nodes as packed state (TDGANEdge.pack / unpack)."""
    cfg = dataclasses.replace(CFG, arch="mlp")
    cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
    cloud.join(info("n0", parts[0]))
    live = TDGANEdge("n0", parts[0], cfg=cfg)
    reqs = [cloud.make_requests()[0] for _ in range(4)]
    live.feedback(reqs[0])
    parked = TDGANEdge("n0", parts[0], cfg=cfg)
    parked.unpack(live.pack().clone())
    assert parked.requests_served == 1 and parked.info() == live.info()
    for r in reqs[1:]:  # same D_k, Adam moments and real-batch RNG: identical replies
        assert torch.equal(live.feedback(r).grad, parked.feedback(r).grad)
    wide = TDGANEdge("n0", parts[0], cfg=dataclasses.replace(cfg, width=8))
    with pytest.raises(EdgeganError, match=r"^state: node 'n0': packed state has \d+ bytes"):
        wide.unpack(live.pack())


@pytest.mark.parametrize("critic_steps", [1, 2])
def test_packed_edges_answer_as_each_nodes_own_edge_in_any_grouping(parts, critic_steps):
    """The engine keeps its nodes as PackedEdges rows and answers a group of them in one vectorised pass:
    a new row is the node's fresh TDGANEdge packed (D_k under its seed); over two rounds (the second
    starts from Adam state the first wrote) the replies and the rows after are bit for bit each node's
    own TDGANEdge.feedback (a view of one row), whatever the grouping of the nodes."""
    cfg = dataclasses.replace(CFG, critic_steps=critic_steps)
    cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
    ids = [f"n{i}" for i in range(len(parts))]
    live = {k: TDGANEdge(k, p, cfg=cfg) for k, p in zip(ids, parts)}
    packed = PackedEdges(cfg, parts[0])
    rows = {k: packed.fresh(k, p) for k, p in zip(ids, parts)}
    assert all(torch.equal(rows[k], live[k].pack()) for k in ids)
    nodes = {k: (k, p, class_pools(p)) for k, p in zip(ids, parts)}
    for e in live.values():
        cloud.join(e.info())
    for _ in range(2):
        reqs = {r.node_id: r for r in cloud.make_requests()}
        expected = {k: live[k].feedback(reqs[k]) for k in ids}
        answers = []
        for groups in ([ids], [ids[:1], ids[1:3], ids[3:]]):
            got, after = {}, {}
            for g in groups:
                block = torch.stack([rows[k] for k in g])
                got.update(zip(g, packed.feedback(block, [nodes[k] for k in g], [reqs[k] for k in g])))
                after.update(zip(g, block))
            answers.append((got, after))
        (got, rows), (split, split_rows) = answers
        for k in ids:
            assert torch.equal(got[k].grad, split[k].grad) and got[k].stats == split[k].stats, k
            assert torch.equal(rows[k], split_rows[k]), k
            assert (got[k].node_id, got[k].step) == (k, expected[k].step)
            assert torch.equal(got[k].grad, expected[k].grad) and got[k].stats == expected[k].stats
        cloud.apply_feedback(list(expected.values()))
    for k in ids:  # D_k, Adam state, RNG and requests served: the same bytes
        assert torch.equal(rows[k], live[k].pack()) and live[k].requests_served == 2, k


@pytest.mark.parametrize("arch", ARCHS)
def test_a_new_nodes_row_holds_d_k_as_build_gan_draws_it_under_the_nodes_seed(parts, arch):
    """The one initialisation (modules reset in place, in order, under the node's seed) is byte for
    byte D_k of ``build_gan`` under that seed, G drawn first; Adam starts at step 0 with zero moments."""
    cfg = dataclasses.replace(CFG, arch=arch)
    packed = PackedEdges(cfg, parts[0])
    for i, p in enumerate(parts):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(node_seed(cfg.seed, f"node{i}"))
            D = build_gan(arch, (1, 8, 8), cfg.latent_dim, 10, cfg.width)[1]
        row = packed.fresh(f"node{i}", p)
        assert torch.equal(row, TDGANEdge(f"node{i}", p, cfg=cfg).pack())
        views = packed.layout.views(row.view(1, -1))
        for w, t in zip(views.weights, (*D.parameters(), *D.buffers())):
            assert torch.equal(w.view_as(t), t.detach())
        assert not views.steps.any() and not any(m.any() for m in views.first + views.second)
    with pytest.raises(EdgeganError, match="^data: node 'odd' does not fit"):
        packed.fresh("odd", dataclasses.replace(parts[0], num_classes=12))


@pytest.mark.parametrize("arch,loss", [("mlp", "logloss"), ("dcgan", "logloss"), ("mlp", "wgan-gp")])
def test_a_nodes_reply_does_not_depend_on_who_shares_its_call_even_with_mixed_batch_sizes(parts, arch, loss):
    """At the default widths and batch size, rows answered alone, together, or beside a node of
    another batch size give the same bytes (a one-row batched convolution sums in another order than
    a two-row one: without the lone row's twin, every dcgan node here differed at 1e-8; an MLP D_k's
    pass needs no twin)."""
    cfg = TDGANConfig(arch=arch, loss=loss, seed=5)
    packed = PackedEdges(cfg, parts[0])
    ids = [f"n{i}" for i in range(3)]
    nodes = [(k, p, class_pools(p)) for k, p in zip(ids, parts)]
    g = torch.Generator().manual_seed(0)
    b = cfg.batch_size
    reqs = [FeedbackRequest(k, 0, torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, p.y[torch.arange(n) % len(p)].clone())
            for k, p, n in zip(ids, parts, (b, b, b // 2))]
    fresh = torch.stack([packed.fresh(k, p) for k, p in zip(ids, parts)])
    results = []
    for groups in ([[0, 1, 2]], [[0], [1], [2]], [[2, 0], [1]]):
        block, got = fresh.clone(), {}
        for grp in groups:
            sub = block[grp].clone()
            torch.manual_seed(1)  # the gradient penalty's interpolation draws
            got.update(zip(grp, packed.feedback(sub, [nodes[k] for k in grp], [reqs[k] for k in grp])))
            block[grp] = sub
        results.append((block, got))
    (block0, got0) = results[0]
    for block, got in results[1:]:
        assert torch.equal(block, block0)
        for k in range(3):
            assert torch.equal(got[k].grad, got0[k].grad) and got[k].stats == got0[k].stats


def test_packed_edges_refuse_a_bad_request_in_one_line_and_keep_the_rows(parts):
    """Group-wide request checks name the node at fault like TDGANEdge's own check, before any row changes."""
    packed = PackedEdges(CFG, parts[0])
    ids = ["n0", "n1"]
    nodes = [(k, p, class_pools(p)) for k, p in zip(ids, parts)]
    block = torch.stack([packed.fresh(k, p) for k, p in zip(ids, parts)])
    before = block.clone()
    fake = torch.zeros(4, 1, 8, 8)
    good = [FeedbackRequest(k, 0, fake, p.y[:4].clone()) for k, p in zip(ids, parts)]
    bad = {"nan": (1, dataclasses.replace(good[1], fake=torch.full_like(fake, float("nan"))),
                   r"^fake: node 'n1' got non-finite values$"),
           "class": (1, dataclasses.replace(good[1], labels=torch.tensor([3, 3, 0, 3])),
                     r"^labels: node 'n1' has no samples of class\(es\) \[0\]"),
           "range": (0, dataclasses.replace(good[0], labels=torch.tensor([0, 1, 10, -1])),
                     r"^labels: node 'n0' has no samples of class\(es\) \[-1, 10\]"),
           "route": (0, dataclasses.replace(good[0], node_id="n9"), r"^node_id: request for 'n9' reached node 'n0'")}
    for name, (k, req, message) in bad.items():
        reqs = list(good)
        reqs[k] = req
        with pytest.raises(EdgeganError, match=message):
            packed.feedback(block, nodes, reqs)
        assert torch.equal(block, before), name
    assert [r.node_id for r in packed.feedback(block, nodes, good)] == ids and not torch.equal(block, before)


def test_a_nodes_numbers_do_not_depend_on_how_many_share_its_pass_or_on_threads(digits):
    """40 nodes (more than a SIMD block of rows, so kernels' vector bodies and scalar tails both
    see them) over three rounds: all in one pass on 2 threads, one by one, in two interleaved halves
    on 1 thread, and 7 + 33: every reply, statistic and row after is the same bytes."""
    n = 40
    cfg = dataclasses.replace(CFG, batch_size=64)
    parts = partition_by_classes(digits, [[c, (c + 1) % 10] for c in range(10)] * (n // 10),
                                 samples_per_node=[50] * n, seed=0)
    ids = [f"n{i}" for i in range(n)]
    packed = PackedEdges(cfg, parts[0])
    nodes = [(k, p, class_pools(p)) for k, p in zip(ids, parts)]
    fresh = torch.stack([packed.fresh(k, p) for k, p in zip(ids, parts)])
    threads = torch.get_num_threads()

    def run(groups, num_threads):
        torch.set_num_threads(num_threads)
        g, block, out = torch.Generator().manual_seed(0), fresh.clone(), {}
        for step in range(3):
            reqs = [FeedbackRequest(k, step, torch.rand(64, 1, 8, 8, generator=g) * 2 - 1,
                                    p.y[torch.randint(len(p), (64,), generator=g)].clone()) for k, p in zip(ids, parts)]
            for grp in groups:
                sub = block[grp].clone()
                out.update({(step, k): r for k, r in zip(grp, packed.feedback(sub, [nodes[k] for k in grp],
                                                                                [reqs[k] for k in grp]))})
                block[grp] = sub
        return block, out

    try:
        block0, out0 = run([list(range(n))], 2)
        for groups, num_threads in (([[i] for i in range(n)], 2), ([list(range(0, n, 2)), list(range(1, n, 2))], 1),
                                    ([list(range(7)), list(range(7, n))], 2)):
            block, out = run(groups, num_threads)
            assert torch.equal(block, block0), (len(groups), num_threads)
            for key, r in out.items():
                assert torch.equal(r.grad, out0[key].grad) and r.stats == out0[key].stats, key
    finally:
        torch.set_num_threads(threads)
