"""TDGAN membership (seed 003 Alg. 1): reminding loss, join/leave/rejoin, schedules, checkpoints."""

import dataclasses

import pytest
import torch

from edgegan.checkpoint import load_checkpoint, save_checkpoint
from edgegan.data import label_histogram, partition_by_classes
from edgegan.errors import EdgeganError
from edgegan.tdgan import Event, FeedbackReply, Schedule, Task, TDGANCloud, TDGANConfig, TDGANEdge
from edgegan.tdgan.harness import build_generator, run_schedule

CFG = TDGANConfig(batch_size=16, remind_batch_size=32, seed=5)


def membership_parts(digits):
    """Three nodes: classes {0, 1}, {2, 3}, {4} with 80, 120, 50 samples."""
    return partition_by_classes(digits, [[0, 1], [2, 3], [4]], samples_per_node=[80, 120, 50], seed=1)


@pytest.fixture(scope="module")
def parts(digits):
    return membership_parts(digits)


def make(parts, cfg=CFG):
    cloud = TDGANCloud(build_generator(cfg, (1, 8, 8), 10), cfg)
    return cloud, {f"n{i}": TDGANEdge(f"n{i}", p, cfg=cfg) for i, p in enumerate(parts)}


def step(cloud, edges):
    return cloud.apply_feedback([edges[r.node_id].feedback(r) for r in cloud.make_requests()])


@pytest.mark.stochastic
def test_reminding_loss_is_zero_after_freeze_and_grows_as_G_moves(parts):
    cloud, edges = make(parts)
    cloud.join(edges["n0"].info())
    assert float(cloud.reminding_loss().detach()) == 0.0  # nothing seen before the first join
    for _ in range(20):
        step(cloud, edges)
    cloud.leave("n0")
    cloud.join(edges["n1"].info())
    # s_{t-1} = the label counts of n0 (seen before), G_{t-1} = G at the join
    torch.testing.assert_close(cloud.remind_hist, label_histogram(parts[0].y, 10).double())
    assert float(cloud.reminding_loss().detach()) == 0.0
    losses = []
    for _ in range(60):
        losses.append(step(cloud, edges)["reminding_loss"])
    assert losses[0] == 0.0
    # measured late/early reminding-loss ratio (cfg seeds 5-9 × ATEN_CPU_CAPABILITY default/avx2/avx512,
    # 1 thread): min 8.5, median 9.0, max 12.6 (this seed 9.9); the bound 3 leaves a 2.8× margin
    assert sum(losses[-10:]) / 10 > 3 * max(sum(losses[1:6]) / 5, 1e-6)
    assert float(cloud.reminding_loss().detach()) > 0.0


def reminding_drift(parts, cfg: TDGANConfig = CFG) -> dict[float, float]:
    """n0 trains G for 30 steps, leaves, n1 joins and trains 150 steps, with reminding weight λ = 0 and 1:
    E‖G(u, y) − G_{t-1}(u, y)‖² on 200 fixed latents with old labels y ∈ {0, 1} (seed 003 eq. 6), per λ."""
    drift = {}
    for lam in (0.0, 1.0):
        cloud, edges = make(parts, dataclasses.replace(cfg, reminding_weight=lam))
        cloud.join(edges["n0"].info())
        for _ in range(30):
            step(cloud, edges)
        cloud.leave("n0")
        cloud.join(edges["n1"].info())
        for _ in range(150):
            step(cloud, edges)
        u = torch.randn(200, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            drift[lam] = float((cloud.G(u, y) - cloud.G_prev(u, y)).pow(2).sum(1).mean())
    return drift


@pytest.mark.stochastic
def test_reminding_pulls_G_back_toward_G_prev(parts):
    # same feedback stream, λ = 1 vs λ = 0: G stays closer to G_{t-1} on old labels with λ = 1
    drift = reminding_drift(parts)
    # measured drift(λ=1) / drift(λ=0) (benchmarks/test_margins.py --stats membership_drift; cfg seeds 5-9 ×
    # ATEN_CPU_CAPABILITY default/avx2/avx512, 1 thread, + avx512 2 threads, identical to 1 thread; n = 20):
    # min 0.013, median 0.032, max 0.034 (this seed 0.014-0.016). The bound was 1/2 (15× above the worst
    # run); 0.1 still leaves 2.9×
    assert drift[1.0] < 0.1 * drift[0.0], drift


def test_join_leave_rejoin_and_unknown_ids(parts):
    cloud, edges = make(parts)
    with pytest.raises(EdgeganError, match="^node_id: unknown node 'n0'"):
        cloud.leave("n0")
    cloud.join(edges["n0"].info())
    cloud.join(edges["n1"].info())
    with pytest.raises(EdgeganError, match="^node_id: .*already online"):
        cloud.join(edges["n0"].info())
    assert cloud.online == ["n0", "n1"]
    reqs = cloud.make_requests()
    replies = [edges[r.node_id].feedback(r) for r in reqs]
    cloud.leave("n1")  # leaves mid-step: its reply no longer counts
    assert cloud.online == ["n0"] and cloud.pi == {"n0": 1.0}
    stats = cloud.apply_feedback(replies)
    assert stats["accepted"] == 1 and stats["rejected"] == 1
    with pytest.raises(EdgeganError, match="^node_id: .*not online"):
        cloud.leave("n1")
    with pytest.raises(EdgeganError, match="^node_id: unknown node 'ghost'"):
        cloud.apply_feedback([FeedbackReply("ghost", cloud.step, torch.zeros(1), {})])
    cloud.join(edges["n1"].info())  # back again
    assert cloud.online == ["n0", "n1"]
    torch.testing.assert_close(cloud.remind_hist, (label_histogram(parts[0].y, 10)
                                                   + label_histogram(parts[1].y, 10)).double())
    assert [r.node_id for r in cloud.make_requests()] == ["n0", "n1"]
    assert cloud.totals["membership_changes"] == 4
    cloud.leave("n0")
    cloud.leave("n1")
    assert cloud.make_requests() == []
    before = [p.detach().clone() for p in cloud.G.parameters()]
    assert cloud.apply_feedback([])["g_stepped"] == 0  # nobody online: G does not move
    assert all(torch.equal(a, b) for a, b in zip(before, cloud.G.parameters()))


def test_schedule_with_mid_task_leave_and_rejoin_drives_the_cloud(parts):
    sched = Schedule([Task("t1", ("n0",), 4), Task("t2", ("n1", "n2"), 6)],
                     [Event(5, "leave", "n1"), Event(7, "join", "n1"), Event(8, "join", "n0")])
    assert sched.online_at(3) == ["n0"]
    assert sched.online_at(4) == ["n1", "n2"] and sched.online_at(5) == ["n2"]
    assert sched.online_at(7) == ["n1", "n2"] and sched.online_at(9) == ["n1", "n2", "n0"]
    assert [(e.kind, e.node_id) for e in sched.events_at(4)] == [("leave", "n0"), ("join", "n1"), ("join", "n2")]
    cloud, edges = make(parts)
    seen = []
    orig = cloud.make_requests

    def spy(step=None):
        reqs = orig(step)
        seen.append((step, sorted(r.node_id for r in reqs)))
        return reqs

    cloud.make_requests = spy
    ends = []
    hist = run_schedule(cloud, edges, sched, ends.append)
    assert ends == [0, 1] and len(hist) == 10
    assert seen == [(s, sorted(sched.online_at(s))) for s in range(10)]
    assert all(h["g_stepped"] == 1 and h["rejected"] == 0 for h in hist)
    with pytest.raises(EdgeganError, match=r"^schedule\.events\[0\]\.step: "):
        Schedule([Task("t", ("n0",), 3)], [Event(3, "leave", "n0")])


def test_cloud_and_edge_checkpoints_resume_bit_identically(parts, tmp_path):
    cloud, edges = make(parts)
    cloud.join(edges["n0"].info())
    for _ in range(3):
        step(cloud, edges)
    cloud.leave("n0")
    cloud.join(edges["n1"].info())
    step(cloud, edges)
    save_checkpoint(tmp_path / "cloud.pt", cloud.state_dict())
    save_checkpoint(tmp_path / "edge.pt", edges["n1"].state_dict())
    ref = [step(cloud, edges) for _ in range(3)]

    cloud2, edges2 = make(parts)
    cloud2.load_state_dict(load_checkpoint(tmp_path / "cloud.pt"))
    edges2["n1"].load_state_dict(load_checkpoint(tmp_path / "edge.pt"))
    assert cloud2.online == ["n1"] and cloud2.seen == ["n0", "n1"] and cloud2.step == cloud.step - 3
    got = [step(cloud2, edges2) for _ in range(3)]
    assert got == ref
    for a, b in zip(cloud.G.parameters(), cloud2.G.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(EdgeganError, match="^node_id: "):
        edges2["n0"].load_state_dict(edges["n1"].state_dict())
