"""The one generator evaluator: every pipeline, baseline harness, benchmark and runtime role
scores generators here, with the same metrics and one cache per (data set, device).

Metrics (seed 000 appendix D.1 for the feature-FID; the coalescence benchmark reports the same):

* ``fid_whole``: feature-FID against the whole data set (seed 000's rule);
* ``fid_target``: feature-FID against the real images of given classes (the target node's, or
  the classes TDGAN has seen);
* ``class_tv``: total variation ½ Σ_c |share_c − p_c| between the generated class share and the
  population's label histogram p;
* ``target_share``: share of samples the classifier puts in the given classes;
* ``class_share`` (a list, one share per class) and ``classes_covered`` (a fraction: classes
  holding at least half a uniform share);
* conditional generators (TDGAN, seed 003 §4) also get ``class_acc``: the share of G(u, y)
  classified as y, per class and averaged over the given classes.

Samples come from a fixed latent on the evaluator's own RNG, so scoring never moves training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from edgegan.data import TensorData, label_histogram, load_dataset
from edgegan.errors import require
from edgegan.eval.classifier import FeatureClassifier, get_classifier
from edgegan.eval.fid import frechet_distance, gaussian_fit
from edgegan.eval.metrics import class_accuracy, class_shares, class_tv, classes_covered, extract_features, \
    target_share
from edgegan.nn.base import Generator

#: The latent seed every score is drawn from unless told otherwise: a fixed latent, so two scores of
#: one generator agree and scoring never moves training (a simulated run adds its scenario seed).
EVAL_LATENT_SEED = 1234

@dataclass
class GeneratorScore:
    """One generator's scores (see the module docstring); ``None`` where no classes were given."""

    fid_whole: float
    fid_target: float | None
    class_tv: float
    target_share: float | None
    classes_covered: float
    class_share: list[float]
    class_acc: float | None = None
    per_class_acc: dict[int, float] = field(default_factory=dict)

    def mean_class_acc(self, classes: Sequence[int]) -> float | None:
        """Mean of ``per_class_acc`` over ``classes`` (None when empty)."""
        return sum(self.per_class_acc[c] for c in classes) / len(classes) if classes else None


class Evaluator:
    """Scores generators of data set ``data`` with its feature classifier (see the module docstring).

    Feature statistics of each reference (the whole set, a class subset) are computed once.
    """

    def __init__(self, data: TensorData, classifier: FeatureClassifier) -> None:
        self.data = data
        self.classifier = classifier
        self.population = label_histogram(data.y, data.num_classes).double()
        self._refs: dict[tuple[int, ...] | None, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    def _mask(self, classes: Sequence[int] | None) -> torch.Tensor:
        if classes is None:
            return torch.ones(len(self.data), dtype=torch.bool)
        return torch.isin(self.data.y, torch.tensor(sorted(set(classes)), dtype=self.data.y.dtype))

    def _reference(self, classes: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        key = None if classes is None else tuple(sorted(set(classes)))
        if key not in self._refs:
            mask = self._mask(key)
            require(int(mask.sum()) >= 2, "classes", f"{list(key or ())} have fewer than 2 real images in "
                    f"'{self.data.name}'", "choose classes the data set holds")
            self._refs[key] = gaussian_fit(extract_features(self.classifier, self.data.x[mask]))
        return self._refs[key]

    def fid(self, samples: torch.Tensor, classes: Sequence[int] | None = None) -> float:
        """Feature-FID of ``samples`` against the whole data set (``classes`` None) or those classes."""
        return self._fid(gaussian_fit(extract_features(self.classifier, samples.float())), classes)

    def _fid(self, fit: tuple[np.ndarray, np.ndarray], classes: Sequence[int] | None) -> float:
        return frechet_distance(*fit, *self._reference(classes))

    def score_samples(self, samples: torch.Tensor, classes: Sequence[int] | None = None) -> GeneratorScore:
        """Every unconditional metric of a sample set; ``classes`` are the target's."""
        fit = gaussian_fit(extract_features(self.classifier, samples.float()))
        share = class_shares(self.classifier, samples)["share"]
        return GeneratorScore(
            fid_whole=self._fid(fit, None), fid_target=None if classes is None else self._fid(fit, classes),
            class_tv=class_tv(share, self.population),
            target_share=None if classes is None else target_share(share, classes),
            classes_covered=classes_covered(share), class_share=share)

    @torch.no_grad()
    def score(self, G: Generator, classes: Sequence[int] | None = None, n: int = 1000,
              seed: int = EVAL_LATENT_SEED, samples_per_class: int = 100) -> GeneratorScore:
        """Score ``G`` on ``n`` samples from latent seed ``seed``; ``classes``: the target's classes.

        A conditional ``G(u, y)`` (TDGAN) is asked for the labels of the real images it is
        compared with, and for ``samples_per_class`` samples of each of ``classes`` to measure
        class accuracy; ``classes`` is then required (the classes seen so far).
        """
        was = G.training
        G.eval()
        try:
            dev = next(G.parameters()).device
            rng = torch.Generator(dev).manual_seed(seed)
            if not G.num_classes:
                return self.score_samples(G.sample(n, generator=rng), classes)
            require(bool(classes), "classes", "a conditional generator is scored on given classes",
                    "pass the classes seen so far")
            return self._score_conditional(G, sorted(set(classes)), rng, samples_per_class)
        finally:
            G.train(was)

    def _score_conditional(self, G: Generator, seen: list[int], rng: torch.Generator,
                           samples_per_class: int) -> GeneratorScore:
        dev = next(G.parameters()).device
        acc = {}
        for c in seen:
            y = torch.full((samples_per_class,), c, dtype=torch.long, device=dev)
            acc[c] = class_accuracy(self.classifier, G(G.sample_latent(len(y), dev, generator=rng), y), y)

        def fake(classes: list[int] | None) -> torch.Tensor:
            y = self.data.y[self._mask(classes)].to(dev)
            return G(G.sample_latent(len(y), dev, generator=rng), y)

        seen_fake = fake(seen)
        fid_target = self.fid(seen_fake, seen)
        every = set(torch.nonzero(self.population).flatten().tolist())
        whole = seen_fake if every <= set(seen) else fake(None)
        s = self.score_samples(whole, seen)
        s.fid_target, s.per_class_acc = fid_target, acc
        s.class_acc = s.mean_class_acc(seen)
        return s


_CACHE: dict[tuple[str, str | None, str], Evaluator] = {}


def evaluator_for(dataset: str, data_root: str | None = None, device: torch.device | str = "cpu") -> Evaluator:
    """The process's :class:`Evaluator` of data set ``dataset`` on ``device``, built once (its
    classifier is itself cached on disk by :func:`get_classifier`). Building it never moves the
    global torch RNG, so a first-time classifier fit does not change a run's numbers."""
    key = (dataset, None if data_root is None else str(data_root), str(torch.device(device)))
    if key not in _CACHE:
        with torch.random.fork_rng(devices=[]):
            data = load_dataset(dataset, data_root)
            _CACHE[key] = Evaluator(data, get_classifier(data).to(device))
    return _CACHE[key]
