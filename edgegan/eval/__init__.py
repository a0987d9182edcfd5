"""Evaluation: feature-FID from a per-data-set classifier, class coverage, exact W1."""

from edgegan.eval.classifier import FeatureClassifier, get_classifier
from edgegan.eval.fid import fid_from_features, frechet_distance, gaussian_fit
from edgegan.eval.metrics import (
    FeatureFID,
    class_accuracy,
    class_coverage,
    coverage_of,
    exact_w1,
    extract_features,
    feature_fid,
)

__all__ = [
    "FeatureClassifier", "FeatureFID", "class_accuracy", "class_coverage", "coverage_of",
    "exact_w1", "extract_features", "feature_fid", "fid_from_features", "frechet_distance",
    "gaussian_fit", "get_classifier",
]
