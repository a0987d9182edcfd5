"""Data: embedded digits, synthetic Gaussians and 2-D mixtures, torchvision folders,
partitioners and label histograms."""

from edgegan.data.digits import load_digits
from edgegan.data.partition import (
    label_histogram,
    partition_by_classes,
    partition_by_count,
    partition_dirichlet,
)
from edgegan.data.registry import DATASETS, TensorData, load_dataset
from edgegan.data.tensordata import load_partitions, save_partitions
from edgegan.data.synthetic import (
    gaussian_sampler,
    grid25_sampler,
    random_spd,
    ring8_sampler,
)

__all__ = [
    "DATASETS", "TensorData", "gaussian_sampler", "grid25_sampler", "label_histogram",
    "load_dataset", "load_digits", "load_partitions", "partition_by_classes", "partition_by_count",
    "partition_dirichlet", "random_spd", "ring8_sampler", "save_partitions",
]
