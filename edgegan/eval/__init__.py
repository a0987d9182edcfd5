"""Evaluation: one :class:`Evaluator` per data set (feature-FID against the whole set and a class
subset, class share, class coverage, class-histogram TV, class accuracy), and exact W1."""

from edgegan.eval.classifier import FeatureClassifier, get_classifier
from edgegan.eval.evaluator import EVAL_LATENT_SEED, Evaluator, GeneratorScore, evaluator_for
from edgegan.eval.fid import fid_from_features, frechet_distance, gaussian_fit
from edgegan.eval.metrics import (
    FeatureFID,
    class_accuracy,
    class_shares,
    class_tv,
    classes_covered,
    exact_w1,
    extract_features,
    feature_fid,
    target_share,
)

__all__ = [
    "EVAL_LATENT_SEED", "Evaluator", "FeatureClassifier", "FeatureFID", "GeneratorScore", "class_accuracy", "class_shares",
    "class_tv", "classes_covered", "evaluator_for", "exact_w1", "extract_features", "feature_fid",
    "fid_from_features", "frechet_distance", "gaussian_fit", "get_classifier", "target_share",
]
