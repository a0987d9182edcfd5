"""Issue 5: exact Gaussian barycenter, BW2-UVP, WIN (seed 004), NWB (seed 001), aggregate()."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from numpy.testing import assert_allclose

from edgegan.barycenter.gaussian import (bw2_uvp, exact_gaussian_barycenter, fixed_point_residual,
                                         gaussian_benchmark, gaussian_samplers, gaussian_w2_squared,
                                         location_scatter_samplers, uniform_cube_sampler)
from edgegan.barycenter.nets import ICNN, MapGenerator
from edgegan.barycenter.nwb import NWBConfig, nwb_barycenter
from edgegan.barycenter.win import WINConfig, win_barycenter
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


def test_win_uvp_falls_and_resumes(tmp_path):
    means, covs = _problem(2, seed=3)  # random means: the identity start is far off
    bm, bc = exact_gaussian_barycenter(means, covs, W)
    cfg = WINConfig(k_g=50, k_t=5, k_v=15, outer_iters=5, batch_size=128, lr_g=1e-3, hidden=32)
    uvps = [bw2_uvp(torch.randn(100_000, 2), bm, bc)]

    def score(it, res):
        uvps.append(bw2_uvp(res.generator.sample(100_000), bm, bc))

    res = win_barycenter(gaussian_samplers(means, covs), W, cfg=cfg, callback=score,
                         checkpoint_dir=tmp_path)
    assert uvps[0] > 10.0, uvps
    assert uvps[-1] < 0.3 * uvps[0] and min(uvps[-2:]) < uvps[1]
    assert len(res.maps) == 3 and (tmp_path / "win.pt").is_file()
    # resume: a rerun with more outer iterations continues from iteration 5
    more = win_barycenter(gaussian_samplers(means, covs), W,
                          cfg=WINConfig(**{**cfg.__dict__, "outer_iters": 6}), checkpoint_dir=tmp_path)
    assert more.log["outer_iter"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(EdgeganError, match=r"^checkpoint_dir: .*weights"):
        win_barycenter(gaussian_samplers(means, covs), [0.5, 0.25, 0.25], cfg=cfg, checkpoint_dir=tmp_path)


def test_nwb_moves_towards_barycenter():
    means, covs = _problem(2, seed=3)
    bm, bc = exact_gaussian_barycenter(means, covs, W)
    before = bw2_uvp(torch.randn(100_000, 2), bm, bc)
    res = nwb_barycenter(gaussian_samplers(means, covs), W,
                         cfg=NWBConfig(k1=2, k2=2, k3=150, batch_size=128, hidden=16, log_every=50))
    after = bw2_uvp(res.generator.sample(100_000), bm, bc)
    assert after < 0.5 * before, (before, after)
    assert res.log == {}


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
