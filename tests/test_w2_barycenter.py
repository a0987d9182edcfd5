"""Exact Gaussian barycenter, BW2-UVP, WIN (seed 004), NWB (seed 001), their stopping rule, aggregate()."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from numpy.testing import assert_allclose

from edgegan.barycenter.gaussian import (bw2_uvp, exact_gaussian_barycenter, fixed_point_residual,
                                         gaussian_benchmark, gaussian_samplers, gaussian_w2_squared,
                                         hard_gaussian_benchmark, location_scatter_samplers, sqrtm_spd,
                                         uniform_cube_sampler)
from edgegan.barycenter._w2_solver import StopRule, W2SolverConfig
from edgegan.barycenter.nets import ICNN, MapGenerator, Potential, ResidualMap
from edgegan.barycenter.nwb import NWBConfig, nwb_barycenter
from edgegan.barycenter.win import StackedMaps, StackedPotentials, WINConfig, win_barycenter
from edgegan.errors import EdgeganError

W = [0.25, 0.5, 0.25]


def _problem(d: int, seed: int = 0):
    means, covs = gaussian_benchmark(d, 3, seed)
    means = torch.randn(3, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return means, covs


@pytest.mark.parametrize("d", [2, 7])
def test_exact_barycenter_matches_pot_and_fixed_point(device, d):
    means, covs = _problem(d)
    m, s, log = exact_gaussian_barycenter(means.to(device), covs.to(device), W, log=True)
    assert m.device.type == device.type and s.dtype == torch.float64
    pm, ps = ot.gaussian.bures_wasserstein_barycenter(means.numpy(), covs.numpy(), np.array(W),
                                                      num_iter=1000, eps=1e-12)
    assert_allclose(s.cpu().numpy(), ps, atol=1e-6, rtol=0)
    assert_allclose(m.cpu().numpy(), pm, atol=1e-6, rtol=0)
    assert fixed_point_residual(s, covs, W) < 1e-9 and log["residual"] < 1e-9
    # a non-barycenter (the arithmetic mean of covariances) violates the fixed point
    assert fixed_point_residual(covs.mul(torch.tensor(W, dtype=torch.float64)[:, None, None]).sum(0), covs, W) > 1e-3


def test_one_input_barycenter_is_the_input_and_dtype_kept():
    means, covs = _problem(4)
    m, s = exact_gaussian_barycenter(means[:1].float(), covs[:1].float(), [1.0])
    assert s.dtype == torch.float32
    assert_allclose(s.numpy(), covs[0].numpy(), atol=1e-5)
    assert_allclose(m.numpy(), means[0].numpy(), atol=1e-6)


def test_w2_closed_form_and_uvp():
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 1.0]))
    m1, m2 = torch.zeros(2), torch.tensor([3.0, 0.0])
    # commuting covariances: |Δm|² + Σ (√a − √b)² = 9 + 1 + 1
    assert gaussian_w2_squared(m1, s1, m2, s2) == pytest.approx(11.0, abs=1e-9)
    assert bw2_uvp((m2, s2), m1, s1) == pytest.approx(100 * 11 / 5, abs=1e-7)
    means, covs = _problem(3)
    bm, bc = exact_gaussian_barycenter(means, covs, W)
    x = gaussian_samplers(bm[None], bc[None], seed=1)[0](100_000)
    assert bw2_uvp(x, bm, bc) < 0.05
    assert bw2_uvp(x + 1.0, bm, bc) > 10


def test_location_scatter_family_has_known_barycenter():
    means, covs = _problem(2)
    samplers, bar, bm, bc = location_scatter_samplers(
        uniform_cube_sampler(2, torch.Generator().manual_seed(0)), means, covs, W)
    x = bar(200_000)
    assert bw2_uvp(x, bm, bc) < 0.05  # the barycenter sampler has the barycenter's moments
    y = samplers[1](200_000)
    assert bw2_uvp(y, means[1], covs[1]) < 0.05
    assert y.abs().max() < 10  # bounded support: not Gaussian


def test_bad_inputs_are_one_line_errors():
    means, covs = _problem(2)
    with pytest.raises(EdgeganError, match=r"^weights: weights must be non-negative"):
        exact_gaussian_barycenter(means, covs, [-0.5, 1.0, 0.5])
    with pytest.raises(EdgeganError, match=r"^weights: weights sum to 2"):
        exact_gaussian_barycenter(means, covs, [0.5, 1.0, 0.5])
    with pytest.warns(UserWarning, match="normalised"):
        _, s = exact_gaussian_barycenter(means, covs, [0.5, 1.0, 0.5], normalize=True)
    assert_allclose(s.numpy(), exact_gaussian_barycenter(means, covs, W)[1].numpy(), atol=1e-12)
    bad = covs.clone()
    bad[1] = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(EdgeganError, match=r"^covs: covariance matrices must be positive definite"):
        exact_gaussian_barycenter(means, bad, W)
    bad[1] = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(EdgeganError, match=r"^covs: covariance matrices must be symmetric"):
        exact_gaussian_barycenter(means, bad, W)
    samplers = gaussian_samplers(means, covs)
    samplers[2] = lambda m: torch.randn(m, 3)
    with pytest.raises(EdgeganError, match=r"^samplers\[2\]: .*dimension 3.*dimension 2") as e:
        win_barycenter(samplers, W)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeganError, match=r"^weights: got 2 weights for 3 inputs"):
        nwb_barycenter(gaussian_samplers(means, covs), [0.5, 0.5])
    with pytest.raises(EdgeganError, match=r"^win.k_t: must be >= 1"):
        win_barycenter(gaussian_samplers(means, covs), W, k_t=0)
    with pytest.raises(EdgeganError, match=r"^nwb.k_t: is not a setting of this solver"):
        nwb_barycenter(gaussian_samplers(means, covs), W, k_t=1)  # one override interface, checked
    with pytest.raises(EdgeganError, match=r"^win.init: unknown init 'zeros'"):
        win_barycenter(gaussian_samplers(means, covs), W, init="zeros")
    with pytest.raises(EdgeganError, match=r"^nwb.init: 'gaussian' warm-starts the built-in generator"):
        nwb_barycenter(gaussian_samplers(means, covs), W, latent_dim=5, init="gaussian")


def test_centring_and_uniform_scaling_are_exact_for_w2_barycenters():
    """bary(μ_k) = Σ α_k m_k + bary(μ̄_k), and bary(μ_k / c) = bary(μ_k) / c (what the solvers use)."""
    means, covs = _problem(4, seed=5)
    m, s = exact_gaussian_barycenter(means, covs, W)
    _, s0 = exact_gaussian_barycenter(torch.zeros_like(means), covs, W)
    assert_allclose(m.numpy(), (torch.tensor(W, dtype=torch.float64)[:, None] * means).sum(0).numpy(), atol=1e-12)
    assert_allclose(s0.numpy(), s.numpy(), atol=1e-9)
    c = 3.0
    _, sc = exact_gaussian_barycenter(means / c, covs / c**2, W)
    assert_allclose(sc.numpy(), s.numpy() / c**2, atol=1e-9)
    # a general whitening is not exact: whiten by the first input's covariance, solve, map back
    wh = sqrtm_spd(covs[0], inverse=True)
    _, sw = exact_gaussian_barycenter(means @ wh, wh @ covs @ wh, W)
    back = sqrtm_spd(covs[0]) @ sw @ sqrtm_spd(covs[0])
    assert float((back - s).abs().max()) > 1e-3


def test_nets_identity_start_and_icnn_convexity():
    g = MapGenerator(3, (3,))
    z = torch.randn(5, 3)
    assert torch.equal(g(z), z)
    f = ICNN(2, hidden=16)
    with torch.no_grad():
        for w in f.convex_weights():
            w.normal_()  # break convexity, then project back
    f.clamp_()
    a, b = torch.randn(500, 2) * 3, torch.randn(500, 2) * 3
    with torch.no_grad():
        assert (f(0.5 * (a + b)) <= 0.5 * (f(a) + f(b)) + 1e-5).all()
    assert f.negativity_penalty() == 0


HARD_W = [0.2, 0.5, 0.3]
TEST_WIN = WINConfig(k_g=50, k_t=5, k_v=10, outer_iters=4, batch_size=128, hidden=32, window=0)  # 4 rounds, no early stop
TEST_NWB = NWBConfig(k1=1, k2=2, k3=100, batch_size=64, hidden=16, log_every=50)


def _hard(d: int = 4, seed: int = 7):
    """Off-centre, condition-100 inputs (issue 17's hard family, N = 3) and their exact barycenter."""
    means, covs = hard_gaussian_benchmark(d, 3, seed)
    return gaussian_samplers(means, covs, seed=seed), *exact_gaussian_barycenter(means, covs, HARD_W)


def win_uvp(seed: int = 0, **overrides) -> tuple[float, dict]:
    samplers, bm, bc = _hard()
    res = win_barycenter(samplers, HARD_W, cfg=TEST_WIN, seed=seed, **overrides)
    return bw2_uvp(res.generator.sample(100_000), bm, bc), res.log


def nwb_uvp(seed: int = 0, **overrides) -> tuple[float, dict]:
    samplers, bm, bc = _hard()
    res = nwb_barycenter(samplers, HARD_W, cfg=TEST_NWB, seed=seed, **overrides)
    return bw2_uvp(res.generator.sample(100_000), bm, bc), res.log


# BW2-UVP % on the d = 4 problem below, 4 fixed rounds (benchmarks/test_margins.py --stats w2_win,w2_nwb).
# WIN re-measured after the damped fixed-point step and the stacked maps became the default (seeds 0-4 x
# ATEN_CPU_CAPABILITY default/avx2, 1 thread, n = 10): default 8.92/9.83/10.39 (min/median/max), paper
# setting on the same budget 19.9/23.0/26.5, ratio paper/default >= 2.03. Limits: WIN 1.25x over the worst
# run, ratio 1.4 well below the worst 2.03. NWB (issue 16, n = 20): 5.45/6.12/7.35; after the
# refactor re-run for seeds 0-4, default capability: 5.52/6.17/7.17 (same range); limit 1.29x over the worst.
WIN_LIMIT, PAPER_FACTOR, NWB_LIMIT = 13.0, 1.4, 9.5


@pytest.mark.stochastic
def test_win_on_standardised_inputs_reaches_exact_barycenter():
    # Standardised inputs (the default) against the exact barycenter, and against the paper's
    # raw-input setting on the same budget; distributions and margins at WIN_LIMIT above.
    uvp, summary = win_uvp()
    assert uvp < WIN_LIMIT, uvp
    assert summary["iterations"] == 4 and summary["converged"] is False and "history" not in summary
    assert summary["stopped_at"] == 4 and summary["stop_reason"] == "budget"
    raw, _ = win_uvp(centre=False, rescale=False)
    assert raw > PAPER_FACTOR * uvp, (raw, uvp)


@pytest.mark.stochastic
def test_nwb_on_standardised_inputs_moves_to_exact_barycenter():
    # Distribution and margin at NWB_LIMIT above.
    uvp, summary = nwb_uvp(log=True)
    assert uvp < NWB_LIMIT, uvp
    assert summary["iterations"] == 100 and summary["history"]["iteration"] == [50, 100]


def test_win_resumes_and_checks_checkpoint(tmp_path):
    samplers, _, _ = _hard(d=2)
    cfg = WINConfig(k_g=2, k_t=1, k_v=2, outer_iters=2, batch_size=16, hidden=8)
    win_barycenter(samplers, HARD_W, cfg=cfg, checkpoint_dir=tmp_path)
    assert (tmp_path / "win.pt").is_file()
    more = win_barycenter(samplers, HARD_W, cfg=cfg, outer_iters=3, checkpoint_dir=tmp_path, log=True)
    assert more.log["iterations"] == 3 and more.log["history"]["iteration"] == [1, 2, 3]
    with pytest.raises(EdgeganError, match=r"^checkpoint_dir: .*weights"):
        win_barycenter(samplers, [0.5, 0.25, 0.25], cfg=cfg, checkpoint_dir=tmp_path)


TOL_RUN = {"k_g": 5, "k_t": 1, "k_v": 3, "outer_iters": 4, "batch_size": 32, "hidden": 8, "log": True, "window": 0}


@pytest.mark.stochastic
def test_tolerance_stops_when_moments_stop_moving():
    # One-round moment changes over 4 rounds (benchmarks/test_margins.py --stats w2_tolerance; seeds 0-4 ×
    # ATEN_CPU_CAPABILITY default/avx2, 1 thread, n = 10, after the damped step became the default),
    # min/median/max: largest 0.0013/0.0027/0.0064 %, smallest 0.00095/0.0020/0.0021 %. tol = 50 % stops
    # after the first round (7800× above the largest); tol = 1e-6 % never fires (950× below the smallest).
    samplers, _, _ = _hard(d=2)
    res = win_barycenter(samplers, HARD_W, tol=50.0, **TOL_RUN)
    assert res.log["iterations"] == 1 and res.log["converged"] is True and res.log["stop_reason"] == "tol"
    assert res.log["history"]["moment_change_pct"][0] < 50.0
    res = win_barycenter(samplers, HARD_W, tol=1e-6, **TOL_RUN)
    assert res.log["iterations"] == 4 and res.log["converged"] is False


def _gauss(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(2, dtype=torch.float64), scale * torch.eye(2, dtype=torch.float64)


def test_stop_rule_stops_when_moves_fall_below_residual_noise():
    # G's moments shrink their steps geometrically: moves in % of tr Σ are 100·2(√a − √b)²/(2b)
    rule = StopRule(W2SolverConfig(window=3, stop_ratio=2.0), _gauss(1.0))
    scales, reasons, moves = [1.5, 1.3, 1.2, 1.15, 1.14, 1.139, 1.1389], [], []
    for t, sc in enumerate(scales, 1):
        verdict = rule.update(_gauss(sc), residual_se=1e-4, done=t, total=100)
        reasons.append(verdict["reason"])
        moves.append(verdict["mean_move_pct"])
    assert moves[:2] == [None, None] and moves[2] > 1.0  # (√1.5 − 1)² ... : far above 2 × 0.01 %
    assert reasons[:5] == [None] * 5 and reasons[5] == "moves below noise", (reasons, moves)
    assert moves[5] < 2 * 0.01 <= moves[4]
    # the same moves against a larger standard error stop earlier; without a window only the budget stops
    loud = StopRule(W2SolverConfig(window=3, stop_ratio=2.0), _gauss(1.0))
    assert [loud.update(_gauss(sc), 0.05, t, 100)["reason"] for t, sc in enumerate(scales[:3], 1)] == [None, None, "moves below noise"]
    off = StopRule(W2SolverConfig(window=0), _gauss(1.0))
    assert [off.update(_gauss(sc), 1.0, t, 7)["reason"] for t, sc in enumerate(scales, 1)] == [None] * 6 + ["budget"]


def test_win_log_names_where_and_why_it_stopped():
    samplers, _, _ = _hard(d=2)
    small = {"k_g": 2, "k_t": 1, "k_v": 2, "outer_iters": 6, "batch_size": 32, "hidden": 8, "log": True}
    res = win_barycenter(samplers, HARD_W, window=3, stop_ratio=1e9, **small)  # any move is below 1e9 SE
    assert res.log["stopped_at"] == 3 and res.log["stop_reason"] == "moves below noise" and res.log["converged"]
    hist = res.log["history"]
    assert hist["mean_move_pct"][:2] == [None, None] and hist["residual_se_pct"][0] > 0
    assert all(hist[f"seconds_{p}"][0] > 0 for p in ("maps", "potentials", "generator"))
    res = win_barycenter(samplers, HARD_W, window=3, stop_ratio=1e-12, **small)
    assert res.log["stopped_at"] == 6 and res.log["stop_reason"] == "budget" and not res.log["converged"]


def test_stacked_networks_are_the_per_input_networks():
    torch.manual_seed(0)
    maps, pots = [ResidualMap(3, 8, 2) for _ in range(2)], [Potential(3, 8, 2) for _ in range(2)]
    for t in maps:  # leave the identity start so the linear and last layers matter
        for prm in t.parameters():
            prm.data.normal_(0, 0.3)
    st, sv = StackedMaps(2, 3, 8, 2), StackedPotentials(2, 3, 8, 2)
    st.copy_members(maps, into=False)
    sv.copy_members(pots, into=False)
    x, y = torch.randn(5, 3), torch.randn(2, 5, 3)
    with torch.no_grad():
        assert_allclose(st(x).numpy(), torch.stack([t(x) for t in maps]).numpy(), atol=1e-6)
        assert_allclose(sv(y).numpy(), torch.stack([v(y[k]) for k, v in enumerate(pots)]).numpy(), atol=1e-6)
        back = [ResidualMap(3, 8, 2) for _ in range(2)]
        st.copy_members(back, into=True)
        assert_allclose(torch.stack([t(x) for t in back]).numpy(), st(x).numpy(), atol=1e-6)
    paper, legacy = WINConfig.paper(), WINConfig.legacy()
    assert (paper.lr_g, paper.lr_g_decay, paper.centre, paper.k_v_warm, paper.batch_size) == (1e-4, 1.0, False, 0, 1024)
    assert (legacy.shared_batch, legacy.fp_step_decay, legacy.window, legacy.outer_iters) == (False, 1.0, 0, 50)
    samplers, _, _ = _hard(d=2)  # one batch per input (the paper's sampling) runs the same loop
    res = win_barycenter(samplers, HARD_W, cfg=legacy, k_g=2, k_t=1, k_v=2, outer_iters=2, batch_size=16, hidden=8)
    assert res.log["stop_reason"] == "budget" and len(res.maps) == 3


@pytest.mark.parametrize("solver", [win_barycenter, nwb_barycenter])
def test_gaussian_init_starts_at_bures_wasserstein_barycenter(solver):
    # init="gaussian" puts G at Σ α_k m̂_k + c·S̄^{1/2} z from 10k samples per input; with a
    # vanishing learning rate nothing trains, so G is scored as started (sampling error only).
    samplers, bm, bc = _hard()
    lr = {"lr_g": 1e-12} if solver is win_barycenter else {"lr_h": 1e-12}
    steps = ({"k_g": 1, "k_t": 1, "k_v": 1, "outer_iters": 1} if solver is win_barycenter
             else {"k1": 1, "k2": 1, "k3": 1, "log_every": 1})
    res = solver(samplers, HARD_W, init="gaussian", batch_size=16, hidden=8, **lr, **steps)
    assert bw2_uvp(res.generator.sample(100_000), bm, bc) < 0.1
    ident = solver(samplers, HARD_W, batch_size=16, hidden=8, **lr, **steps)
    assert bw2_uvp(ident.generator.sample(100_000), bm, bc) > 5.0


def test_aggregate_dispatch():
    from edgegan.barycenter.aggregate import aggregate, aggregator_name
    from edgegan.nn import build_gan

    pairs = []
    for k in range(2):
        torch.manual_seed(k)
        pairs.append(build_gan("mlp", (2,), latent_dim=2, width=16))
    gens, crits = [p[0] for p in pairs], [p[1] for p in pairs]
    eta = [1.0, 3.0]  # λ = (1, 1/3) → α = (3/4, 1/4)
    with pytest.raises(EdgeganError, match=r"^aggregator: unknown aggregator 'wasserstein'; choose one of recursive_w1, win, nwb, weight_average"):
        aggregate("wasserstein", gens, crits, eta)
    assert aggregator_name("recursive-w1") == "recursive_w1" == aggregator_name("recursive")
    avg = aggregate("weight-average", gens, crits, eta)
    assert avg.weights == pytest.approx([0.75, 0.25])
    key = "net.0.weight"
    want = 0.75 * gens[0].state_dict()[key] + 0.25 * gens[1].state_dict()[key]
    assert torch.allclose(avg.generator.state_dict()[key], want)
    assert torch.equal(avg.critic_new.state_dict()["out.weight"], crits[0].state_dict()["out.weight"])
    win = aggregate("win", gens, crits, eta, win=WINConfig(k_g=5, k_t=2, k_v=3, outer_iters=2, batch_size=64, hidden=16))
    assert win.generator.sample(7).shape == (7, 2) and win.aggregator == "win"
    nwb = aggregate("nwb", gens, crits, eta, nwb=NWBConfig(k1=1, k2=1, k3=3, batch_size=32, hidden=8))
    assert nwb.generator.sample(3).shape == (3, 2)
    rec = aggregate("recursive_w1", gens, crits, eta, steps_per_stage=2)
    assert rec.generator.sample(3).shape == (3, 2) and rec.aggregator == "recursive_w1"


def test_w2_aggregate_keeps_image_shape():
    from edgegan.barycenter.aggregate import aggregate
    from edgegan.nn import build_gan

    gens, crits = zip(*[build_gan("mlp", (1, 4, 4), latent_dim=3, width=8) for _ in range(2)])
    res = aggregate("win", gens, crits, [1.0, 1.0],
                    win=WINConfig(k_g=2, k_t=1, k_v=2, outer_iters=1, batch_size=16, hidden=8))
    assert res.generator.sample(5).shape == (5, 1, 4, 4) and res.generator.latent_dim == 16
