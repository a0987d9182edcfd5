"""A small classifier per data set, trained once and cached; its penultimate layer gives
the features of the feature-FID (seed 000 appendix D.1, fig. 11) and its predictions the
class coverage. Cache key: data set name + a content hash of the training tensors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from edgegan.checkpoint import load_checkpoint, save_checkpoint
from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError


def cache_dir() -> Path:
    """``$EDGEGAN_CACHE`` or ``~/.cache/edgegan``."""
    return Path(os.environ.get("EDGEGAN_CACHE", Path.home() / ".cache" / "edgegan"))


def content_hash(data: TensorData) -> str:
    h = hashlib.sha256()
    h.update(data.x.contiguous().numpy().tobytes())
    h.update(data.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureClassifier(nn.Module):
    """conv(32) → conv(64) → fc(feat_dim) → fc(num_classes); ``features`` = the fc(feat_dim) output."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feat_dim: int = 64) -> None:
        super().__init__()
        c, h, w = image_shape
        self.model_args = {"image_shape": tuple(image_shape), "num_classes": num_classes, "feat_dim": feat_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        n = self.conv(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(n, feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # (B, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes) logits


def _train(model: FeatureClassifier, data: TensorData, epochs: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    perm = torch.randperm(n, generator=g)
    n_val = max(n // 10, 1)
    val, tr = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for idx in tr[torch.randperm(len(tr), generator=g)].split(128):
            x = data.x[idx]
            # small shifts make features robust to the off-by-a-pixel fakes GANs produce
            x = x + 0.05 * torch.randn(x.shape, generator=g)
            loss = nn.functional.cross_entropy(model(x), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(data.x[val]).argmax(1) == data.y[val]).float().mean())


def get_classifier(data: TensorData, epochs: int = 30, seed: int = 0,
                   cache: bool = True) -> FeatureClassifier:
    """The cached classifier for ``data`` (trained on CPU on first use, then loaded)."""
    if len(data) < 20:
        raise EdgeganError("data", f"'{data.name}' has {len(data)} samples", "a classifier needs >= 20")
    path = cache_dir() / "classifiers" / f"{data.name.replace('/', '_')}-{content_hash(data)}-e{epochs}-s{seed}.pt"
    if cache and path.is_file():
        ck = load_checkpoint(path)
        model = FeatureClassifier(**ck["model_args"])
        model.load_state_dict(ck["state_dict"])
        model.val_accuracy = ck["val_accuracy"]
        return model.eval()
    torch.manual_seed(seed)
    model = FeatureClassifier(data.image_shape, data.num_classes)
    acc = _train(model, data, epochs, seed)
    model.val_accuracy = acc
    if cache:
        save_checkpoint(path, {"model_args": model.model_args, "state_dict": model.state_dict(),
                               "val_accuracy": acc})
    return model.eval()
