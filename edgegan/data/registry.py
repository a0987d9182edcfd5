"""Data sets by name."""

from __future__ import annotations

from pathlib import Path

from edgegan.data.digits import load_digits
from edgegan.data.tensordata import TensorData
from edgegan.data.vision import load_vision
from edgegan.errors import EdgeganError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")


def load_dataset(name: str, data_root: str | Path | None = None, train: bool = True,
                 download: bool = False) -> TensorData:
    """Load a labelled image data set by name; only ``digits`` needs no ``data_root``."""
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise EdgeganError("dataset", f"unknown data set '{name}'", "choose one of " + ", ".join(DATASETS))
    if key == "digits":
        return load_digits()
    return load_vision(key, data_root, train=train, download=download)
