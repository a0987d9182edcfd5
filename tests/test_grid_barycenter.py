"""Amortized grid barycenters (seed 002): the DCNN, its data, its aggregator and CLI."""

import numpy as np
import pytest
import torch

from edgegan.barycenter.grid import (
    GridBarycenterNet,
    GridTrainConfig,
    aggregate_grid,
    default_model_path,
    euclidean_grid_barycenter,
    grid_barycenter,
    grid_l1,
    load_grid_model,
    predict_grid_barycenters,
    sinkhorn_grid_barycenter,
    train_grid_net,
)
from edgegan.barycenter.grid_data import GridDataConfig, csg_shape, make_pair_dataset, random_shapes
from edgegan.cli import main
from edgegan.errors import EdgeganError


@pytest.fixture(scope="module")
def shapes() -> np.ndarray:
    """Held-out 64×64 CSG shapes (the shipped model saw seed 0 only)."""
    return random_shapes(np.random.default_rng(123), 6, 64)


def centroid(h: np.ndarray) -> np.ndarray:
    r, c = np.indices(h.shape)
    return np.array([(h * r).sum(), (h * c).sum()]) / h.sum()


def test_csg_shapes_are_probability_contours():
    rng = np.random.default_rng(0)
    h = csg_shape(rng, 32)
    assert h.shape == (32, 32) and np.all(h >= 0) and h.sum() == pytest.approx(1.0)
    filled = csg_shape(rng, 32, contour=False)
    assert (filled > 0).sum() > (h > 0).sum() / 4  # filled masks are not thin outlines


def test_shipped_model_is_small_and_loads():
    assert default_model_path().stat().st_size < 3 * 2**20
    net = load_grid_model()
    assert isinstance(net, GridBarycenterNet) and 64 % net.multiple == 0


@pytest.mark.parametrize("n", [2, 3, 4])
def test_predictions_are_probability_vectors(shapes, n):
    w = np.random.default_rng(n).dirichlet(np.ones(n))
    b = grid_barycenter(shapes[:n], w)
    assert b.shape == (64, 64) and np.isfinite(b).all() and (b >= 0).all()
    assert b.sum() == pytest.approx(1.0, abs=1e-9)


def test_batched_prediction_on_device(shapes, device):
    net = load_grid_model()
    mu = torch.tensor(shapes[:4], dtype=torch.float32).reshape(2, 2, 64, 64).to(device)
    lam = torch.tensor([[0.3, 0.7], [0.5, 0.5]], device=device)
    out = predict_grid_barycenters(net.to(device), mu, lam)
    net.to("cpu")
    assert out.device.type == device.type and out.shape == (2, 64, 64)
    assert torch.allclose(out.sum((1, 2)), torch.ones(2, device=device), atol=1e-4)


@pytest.mark.stochastic
def test_n1_barycenter_is_close_to_its_input(shapes):
    for h in shapes[:3]:
        pred = grid_barycenter(h[None], [1.0])
        ref = sinkhorn_grid_barycenter(h[None], [1.0])  # the entropic n = 1 barycenter: a blurred input
        assert np.linalg.norm(centroid(pred) - centroid(h)) < 1.5  # cells
        assert np.abs(pred - ref).sum() < 0.4 and np.abs(pred - ref).sum() < np.abs(pred - np.roll(ref, 6)).sum()


@pytest.mark.stochastic
def test_weights_one_zero_give_the_first_input(shapes):
    a, b = shapes[0], shapes[1]
    pred = grid_barycenter(np.stack([a, b]), [1.0, 0.0])
    ref_a = sinkhorn_grid_barycenter(a[None], [1.0])
    ref_b = sinkhorn_grid_barycenter(b[None], [1.0])
    assert np.abs(pred - ref_a).sum() < 0.4 < np.abs(pred - ref_b).sum()
    assert np.linalg.norm(centroid(pred) - centroid(a)) < 1.5


def test_n_way_from_two_way_duplicates_paths_exactly():
    """Features combine linearly in λ (seed 002 §3.1), so splitting an input's weight over two
    copies of it, or permuting inputs, leaves the prediction unchanged."""
    torch.manual_seed(0)
    net = GridBarycenterNet((4, 8), pool=2, prior_reg=0.004).eval()
    mu = torch.rand(1, 2, 16, 16)
    mu /= mu.sum((2, 3), keepdim=True)
    two = predict_grid_barycenters(net, mu, torch.tensor([[0.4, 0.6]]))
    three = predict_grid_barycenters(net, mu[:, [0, 1, 1]], torch.tensor([[0.4, 0.25, 0.35]]))
    swapped = predict_grid_barycenters(net, mu.flip(1), torch.tensor([[0.6, 0.4]]))
    torch.testing.assert_close(three, two, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(swapped, two, rtol=1e-4, atol=1e-7)


@pytest.mark.stochastic
def test_training_loss_falls_and_data_set_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGAN_CACHE", str(tmp_path))
    cfg = GridDataConfig(size=32, num_shapes=12, num_pairs=48, max_ops=6, seed=3)
    data = make_pair_dataset(cfg)
    assert len(list((tmp_path / "grid_barycenter").glob("pairs-*.pt"))) == 1
    again = make_pair_dataset(cfg)  # now read from the cache
    torch.testing.assert_close(again["barycenters"], data["barycenters"])
    assert torch.allclose(data["barycenters"].sum((1, 2)), torch.ones(48), atol=1e-5)
    # seed 002's own network (no blurred-mean skip), so the loss starts far from its floor
    _, rows = train_grid_net(data, GridTrainConfig(epochs=7, batch_size=8, channels=(4, 8, 16), pool=1, prior_reg=0.0))
    losses = [r["loss"] for r in rows]
    # measured last/first epoch loss (data seeds 3-7 × train seeds 0-4 paired, × ATEN_CPU_CAPABILITY
    # default/avx2/avx512, 1 thread; identical across capabilities): min 0.49, median 0.52, max 0.67;
    # this seed 0.52. Bound 0.8: the worst seed's ratio + 0.13 margin; no training gives ~1.0
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.stochastic
def test_aggregators_and_euclidean(shapes):
    h, w = shapes[:3], [0.2, 0.3, 0.5]
    np.testing.assert_allclose(aggregate_grid(h, w, "grid-sinkhorn"), sinkhorn_grid_barycenter(h, w))
    np.testing.assert_allclose(aggregate_grid(h, w, "grid-dcnn"), grid_barycenter(h, w))
    np.testing.assert_allclose(euclidean_grid_barycenter(h, w), np.tensordot(w, h, 1), atol=1e-12)
    # the DCNN is nearer to the Sinkhorn reference than the linear blend is
    ref = torch.tensor(sinkhorn_grid_barycenter(h, w))
    assert grid_l1(ref, torch.tensor(grid_barycenter(h, w))) < grid_l1(ref, torch.tensor(np.tensordot(w, h, 1)))


@pytest.mark.parametrize("hists, weights, field", [
    ([np.ones((64, 64)), np.ones((32, 32))], None, "histograms: grid sizes differ"),
    ([np.ones((64, 64)), -np.ones((64, 64))], None, "histograms: negative mass"),
    ([np.ones((64, 64)), np.zeros((64, 64))], None, "histograms: histogram(s) [1] are all zero"),
    ([np.ones((64, 64)), np.ones((64, 64))], [0.5, 0.6], "weights: sum to 1.1"),
    ([np.ones((64, 64)), np.ones((64, 64))], [0.5], "weights: 1 weights for 2"),
    ([np.ones((64, 64)), np.ones((64, 64))], [1.5, -0.5], "weights: must be finite and non-negative"),
])
def test_bad_input_is_one_line_error(hists, weights, field):
    for fn in (grid_barycenter, sinkhorn_grid_barycenter, euclidean_grid_barycenter):
        with pytest.raises(EdgeganError) as e:
            fn(hists, weights)
        assert str(e.value).startswith(field) and "\n" not in str(e.value)
    with pytest.raises(EdgeganError, match="^aggregator: unknown"):
        aggregate_grid(hists, None, method="grid-magic")


def test_cli_predict_and_bad_input(tmp_path, shapes, capsys):
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"h{i}.npy"))
        np.save(files[-1], shapes[i])
    out = tmp_path / "bar.npy"
    assert main(["grid-barycenter", "predict", *files, "--weights", "0.3,0.7", "--out", str(out)]) == 0
    b = np.load(out)
    assert b.shape == (64, 64) and b.sum() == pytest.approx(1.0) and out.with_suffix(".png").is_file()
    np.save(tmp_path / "small.npy", np.ones((32, 32)))
    assert main(["grid-barycenter", "predict", files[0], str(tmp_path / "small.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgegan: error: histograms: grid sizes differ")
