import numpy as np
import pytest
import torch

from edgegan.eval import class_coverage, exact_w1, frechet_distance, get_classifier
from edgegan.eval.fid import fid_from_features


def test_frechet_closed_form_diagonal():
    # diagonal Gaussians: FD = ‖μ1−μ2‖² + Σ (σ1 − σ2)²
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(want, abs=1e-6)


def test_frechet_closed_form_general():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    r = linalg.sqrtm(s1)
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(r @ s2 @ r)))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(want, abs=1e-6)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_same_features_is_zero():
    f = torch.randn(200, 5)
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)


def test_classifier_is_accurate_and_cached(digits, digits_classifier, tmp_path, monkeypatch):
    assert digits_classifier.val_accuracy > 0.95
    cov = class_coverage(digits_classifier, digits.x[digits.y == 3])
    assert cov["share"][3] > 0.9 and cov["confidence"][3] > 0.8
    again = get_classifier(digits)  # same content hash → loaded from cache, same weights
    for a, b in zip(again.state_dict().values(), digits_classifier.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_exact_w1_translation():
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    assert exact_w1(x, x + torch.tensor([3.0, 4.0])) == pytest.approx(5.0, rel=1e-6)
