"""Feature-FID, class share, class coverage and class-histogram TV from a data set's classifier;
exact W1 via POT."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import ot
import torch

from edgegan.eval.classifier import FeatureClassifier
from edgegan.eval.fid import fid_from_features, gaussian_fit, frechet_distance
from edgegan.errors import require


@torch.no_grad()
def extract_features(classifier: FeatureClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Penultimate features (n, feat_dim) of images x (n, C, H, W), on the classifier's device."""
    dev = next(classifier.parameters()).device
    return torch.cat([classifier.features(b.to(dev)).cpu() for b in x.split(batch)])


class FeatureFID:
    """Feature-FID against a fixed reference set, whose Gaussian fit is computed once."""

    def __init__(self, classifier: FeatureClassifier, reference: torch.Tensor) -> None:
        self.classifier = classifier
        self.mu, self.sigma = gaussian_fit(extract_features(classifier, reference))

    def __call__(self, samples: torch.Tensor) -> float:
        mu, sigma = gaussian_fit(extract_features(self.classifier, samples.float()))
        return frechet_distance(mu, sigma, self.mu, self.sigma)


def feature_fid(classifier: FeatureClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Feature-FID (seed 000 D.1) between two image sets."""
    return fid_from_features(extract_features(classifier, real), extract_features(classifier, fake.float()))


@torch.no_grad()
def class_shares(classifier: FeatureClassifier, samples: torch.Tensor) -> dict[str, list[float]]:
    """``share``: fraction of samples per predicted class (the *class share*); ``confidence``: the
    mean softmax probability of those predictions."""
    dev = next(classifier.parameters()).device
    probs = torch.cat([classifier(b.to(dev)).softmax(1).cpu() for b in samples.float().split(512)])
    k = probs.shape[1]
    pred = probs.argmax(1)
    share = torch.bincount(pred, minlength=k).float() / max(len(pred), 1)
    conf = torch.zeros(k)
    for c in range(k):
        m = pred == c
        conf[c] = probs[m, c].mean() if m.any() else 0.0
    return {"share": share.tolist(), "confidence": conf.tolist()}


def target_share(share: Sequence[float], classes: Iterable[int]) -> float:
    """Share of samples predicted in ``classes``: Σ_{c ∈ classes} share_c (seed 000 §5: does the
    target's generator make the target's classes?)."""
    return float(sum(share[c] for c in set(classes)))


def classes_covered(share: Sequence[float]) -> float:
    """Class coverage, a fraction: |{c : share_c ≥ ½ · 1/K}| / K (mode collapse lowers it)."""
    k = len(share)
    return sum(s >= 0.5 / k for s in share) / k


def class_tv(share: Sequence[float], population: Sequence[float] | torch.Tensor) -> float:
    """Total-variation distance ½ Σ_c |share_c − p_c| between the generated class share and the
    population's label histogram ``population`` (counts or frequencies; normalised here)."""
    p = torch.as_tensor(population, dtype=torch.float64)
    q = torch.as_tensor(list(share), dtype=torch.float64)
    require(p.shape == q.shape, "population", f"{len(p)} classes vs {len(q)} in the share")
    require(float(p.sum()) > 0, "population", "is empty")
    return float(0.5 * (q / q.sum().clamp_min(1e-12) - p / p.sum()).abs().sum())


@torch.no_grad()
def class_accuracy(classifier: FeatureClassifier, samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of (conditional) samples the classifier assigns to their intended label."""
    dev = next(classifier.parameters()).device
    pred = torch.cat([classifier(b.to(dev)).argmax(1).cpu() for b in samples.float().split(512)])
    return float((pred == labels.cpu()).float().mean())


def exact_w1(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Exact W1 between two empirical measures with uniform weights (POT's network simplex)."""
    a = a.detach().cpu().double().flatten(1).numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().cpu().double().flatten(1).numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    require(a.shape[1] == b.shape[1], "samples", f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), m, numItermax=1_000_000))
