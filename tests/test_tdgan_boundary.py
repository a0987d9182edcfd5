"""TDGAN edge/cloud boundary (seed 003 Alg. 1): what leaves an edge, and bad feedback."""

import dataclasses
import logging

import pytest
import torch

from edgegan.config import from_dict
from edgegan.data import partition_by_classes
from edgegan.errors import EdgeganError
from edgegan.gan import generator_loss
from edgegan.tdgan import FeedbackReply, FeedbackRequest, NodeInfo, TDGANCloud, TDGANConfig, TDGANEdge
from edgegan.tdgan.dk_pass import g_loss_logloss
from edgegan.tdgan.harness import build_generator

CFG = TDGANConfig(batch_size=16, remind_batch_size=16, seed=3)


@pytest.fixture(scope="module")
def parts(digits):
    return partition_by_classes(digits, [[0, 1, 2], [3, 4], [5]], samples_per_node=[100, 300, 60], seed=0)


def make(parts, cfg=CFG, device="cpu"):
    cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10).to(device), cfg)
    edges = {f"n{i}": TDGANEdge(f"n{i}", p, cfg=cfg, device=device) for i, p in enumerate(parts)}
    return cloud, edges


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("loss", ["logloss", "wgan-gp"])
def test_edge_returns_one_float_tensor_of_fake_shape_and_scalars_and_bytes_are_counted(parts, loss, device):
    cfg = dataclasses.replace(CFG, loss=loss)
    cloud, edges = make(parts, cfg, device)
    cloud.join(edges["n0"].info())
    cloud.join(edges["n1"].info())
    total = 0
    for step in range(3):
        reqs = cloud.make_requests()
        assert [r.node_id for r in reqs] == ["n0", "n1"]
        d_before = params(edges["n0"].discriminator())
        replies = [edges[r.node_id].feedback(r) for r in reqs]
        for req, rep in zip(reqs, replies):
            # the reply type carries exactly: node id, step, one tensor, scalar stats
            assert [f.name for f in dataclasses.fields(rep)] == ["node_id", "step", "grad", "stats"]
            assert isinstance(rep.grad, torch.Tensor) and rep.grad.dtype == torch.float32
            assert rep.grad.shape == req.fake.shape and rep.grad.device == req.fake.device
            assert rep.stats and all(type(v) is float for v in rep.stats.values())
            assert {"d_loss", "g_loss"} <= set(rep.stats)
            assert rep.nbytes() == req.fake.numel() * 4 + 8 * len(rep.stats)
            total += rep.nbytes()
        # the edge trained D_k on this request
        assert any(not torch.equal(a, b) for a, b in zip(d_before, edges["n0"].discriminator().parameters()))
        stats = cloud.apply_feedback(replies)
        assert stats["bytes_in"] == sum(r.nbytes() for r in replies)
    assert cloud.totals["bytes_in"] == total
    assert cloud.totals["bytes_out"] == 3 * 2 * (16 * 64 * 4 + 16 * 8)


def test_feedback_is_the_generator_loss_gradient_of_the_updated_discriminator(parts):
    for loss, g_loss in [("logloss", g_loss_logloss), ("wgan-gp", generator_loss)]:
        cfg = dataclasses.replace(CFG, loss=loss)
        cloud, edges = make(parts, cfg)
        cloud.join(edges["n1"].info())
        (req,) = cloud.make_requests()
        rep = edges["n1"].feedback(req)
        x = req.fake.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(g_loss(edges["n1"].discriminator(), x, req.labels), x)
        torch.testing.assert_close(rep.grad, expected)
        assert set(req.labels.tolist()) <= {3, 4}


def test_pi_weights_and_digesting_gradient(parts):
    cfg = dataclasses.replace(CFG, reminding_weight=0.0)
    cloud, edges = make(parts, cfg)
    cloud.join(edges["n0"].info())
    cloud.join(edges["n1"].info())
    assert cloud.pi == pytest.approx({"n0": 0.25, "n1": 0.75})
    reqs = cloud.make_requests()
    replies = [edges[r.node_id].feedback(r) for r in reqs]
    # Σ_k π_k loss_k(D_k(G(u_k, y_k))) computed directly on the cloud's own graph
    pend = cloud._pending
    direct = sum(cloud.pi[k] * g_loss_logloss(edges[k].discriminator(), pend[k].fake, pend[k].request.labels) for k in pend)
    expected = torch.autograd.grad(direct, list(cloud.G.parameters()), retain_graph=True, allow_unused=True)
    cloud.apply_feedback(replies)
    for p, e in zip(cloud.G.parameters(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if e is None else e, rtol=1e-4, atol=1e-7)
    cloud.leave("n0")
    assert cloud.pi == {"n1": 1.0}


@pytest.mark.parametrize("bad", ["shape", "dtype", "nan", "inf", "norm", "step"])
def test_bad_feedback_is_rejected_before_touching_G(parts, bad, caplog):
    cloud, edges = make(parts)
    cloud.join(edges["n0"].info())
    for _ in range(2):  # a couple of normal steps so Adam has momentum that would move G
        cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])
    (req,) = cloud.make_requests()
    good = edges["n0"].feedback(req)
    g = good.grad.clone()
    grad, step = {
        "shape": (g[:-1], req.step), "dtype": (g.double(), req.step),
        "nan": (g.index_put_((torch.tensor(0),), torch.tensor(float("nan"))), req.step),
        "inf": (g.index_put_((torch.tensor(1),), torch.tensor(float("inf"))), req.step),
        "norm": (g * 0 + 1.0, req.step),  # per-sample norm 8 > bound 1
        "step": (g, req.step + 7),
    }[bad]
    before = params(cloud.G)
    with caplog.at_level(logging.WARNING, logger="edgegan.tdgan"):
        stats = cloud.apply_feedback([FeedbackReply("n0", step, grad, good.stats)])
    assert stats["rejected"] == 1 and stats["accepted"] == 0 and stats["g_stepped"] == 0
    assert cloud.totals["rejected"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, cloud.G.parameters()))
    assert "rejected feedback" in caplog.text and "n0" in caplog.text


def test_one_bad_node_is_skipped_and_the_good_node_still_steps(parts):
    cfg = dataclasses.replace(CFG, reminding_weight=0.0)
    cloud, edges = make(parts, cfg)
    cloud.join(edges["n0"].info())
    cloud.join(edges["n1"].info())
    reqs = cloud.make_requests()
    good = edges["n0"].feedback(reqs[0])
    pend = cloud._pending["n0"]
    expected = torch.autograd.grad(0.25 * (pend.fake * good.grad).sum(), list(cloud.G.parameters()),
                                   retain_graph=True, allow_unused=True)
    bad = FeedbackReply("n1", reqs[1].step, torch.full_like(reqs[1].fake, float("nan")), {})
    stats = cloud.apply_feedback([good, bad, good])  # bad values, then a duplicate
    assert stats["accepted"] == 1 and stats["rejected"] == 2 and stats["g_stepped"] == 1
    for p, e in zip(cloud.G.parameters(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if e is None else e)


def test_edge_rejects_bad_requests(parts):
    edge = TDGANEdge("n1", parts[1], cfg=CFG)  # classes 3, 4
    fake = torch.zeros(4, 1, 8, 8)
    with pytest.raises(EdgeganError, match=r"^labels: .*class\(es\) \[0, 7\]"):
        edge.feedback(FeedbackRequest("n1", 0, fake, torch.tensor([3, 0, 7, 4])))
    with pytest.raises(EdgeganError, match="^node_id: "):
        edge.feedback(FeedbackRequest("n9", 0, fake, torch.tensor([3, 3, 4, 4])))
    with pytest.raises(EdgeganError, match="^fake: "):
        edge.feedback(FeedbackRequest("n1", 0, torch.zeros(4, 1, 6, 6), torch.tensor([3, 3, 4, 4])))
    with pytest.raises(EdgeganError, match="^fake: "):
        edge.feedback(FeedbackRequest("n1", 0, fake.double(), torch.tensor([3, 3, 4, 4])))
    with pytest.raises(EdgeganError, match="^labels: "):
        edge.feedback(FeedbackRequest("n1", 0, fake, torch.tensor([3.0, 3, 4, 4])))
    with pytest.raises(EdgeganError, match="^data: "):
        TDGANEdge("empty", parts[1].subset([]), cfg=CFG)
    with pytest.raises(EdgeganError, match="^n_samples: "):
        NodeInfo("x", 0, (0,) * 10)


def test_config_validation():
    cfg = from_dict(TDGANConfig, {"loss": "wgan-gp", "reminding_weight": 0.5}, "tdgan")
    assert cfg.loss == "wgan-gp" and cfg.reminding_weight == 0.5
    with pytest.raises(EdgeganError, match=r"^tdgan\.loss: "):
        from_dict(TDGANConfig, {"loss": "hinge"}, "tdgan")
    with pytest.raises(EdgeganError, match=r"^tdgan\.max_feedback_norm: "):
        from_dict(TDGANConfig, {"max_feedback_norm": 0.0}, "tdgan")
    with pytest.raises(EdgeganError, match=r"^tdgan\.critic_steps: "):
        from_dict(TDGANConfig, {"critic_steps": 0}, "tdgan")


def test_an_honest_edge_clips_feedback_above_the_bound_instead_of_being_refused(parts):
    """D_k's input gradient grows over a long run (a 64-node soak reached per-sample norm 1.0, the
    bound, after ~4000 steps). With ``clip_feedback`` (default) the edge scales each such sample to
    just under ``max_feedback_norm`` and the cloud accepts it; samples within keep their bytes.
    Without it the same reply is refused."""
    norms = {}
    for clip in (False, True):
        cfg = dataclasses.replace(CFG, clip_feedback=clip)
        cloud, edges = make(parts, cfg)
        cloud.join(edges["n0"].info())
        (req,) = cloud.make_requests()
        reply = edges["n0"].feedback(req)
        norms[clip] = (reply.grad, reply.grad.flatten(1).norm(dim=1))
    raw, n_raw = norms[False]
    bound = float(n_raw.median())  # half the samples above it
    results = {}
    for clip in (False, True):
        cfg = dataclasses.replace(CFG, clip_feedback=clip, max_feedback_norm=bound)
        cloud, edges = make(parts, cfg)
        cloud.join(edges["n0"].info())
        (req,) = cloud.make_requests()
        reply = edges["n0"].feedback(req)
        results[clip] = (cloud.apply_feedback([reply]), reply.grad)
    assert results[False][0]["rejected"] == 1 and results[False][0]["g_stepped"] == 0
    stats, clipped = results[True]
    assert stats["accepted"] == 1 and stats["rejected"] == 0
    n = clipped.flatten(1).norm(dim=1)
    over = n_raw > bound * 0.999
    assert 0 < int(over.sum()) < len(over)
    assert torch.equal(clipped[~over], raw[~over])  # within the bound: the same bytes
    torch.testing.assert_close(n[over], torch.full_like(n[over], bound * 0.999), rtol=1e-5, atol=0)
    assert bool((n <= bound).all())
