"""MNIST / FashionMNIST (IDX files) and CIFAR-10 / CIFAR-100 (python batches) from a local
folder, in torchvision's layout. Nothing is downloaded unless the user asks (``download``).

Layouts read (as torchvision writes them):
  <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  <root>/FashionMNIST/raw/...  (same names)
  <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}
  <root>/cifar-100-python/{train,test}
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from edgegan.data.tensordata import TensorData
from edgegan.errors import EdgeganError

_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_TV_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10",
               "cifar100": "CIFAR100"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic (0,0,dtype,ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise EdgeganError("data_root", f"'{path}' is not an unsigned-byte IDX file",
                           "re-download the data set")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise EdgeganError("data_root", f"'{path}' is truncated", "re-download the data set")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _missing(name: str, root: Path, what: Path) -> EdgeganError:
    return EdgeganError("data_root", f"{name} not found at '{what}'",
                        f"put torchvision's files under '{root}' or rerun with --download")


def _load_idx(name: str, root: Path, train: bool) -> TensorData:
    folder = root / _IDX_FOLDERS[name] / "raw"
    pre = "train" if train else "t10k"
    img, lab = _find(folder, f"{pre}-images-idx3-ubyte"), _find(folder, f"{pre}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise _missing(name, root, folder)
    x = torch.from_numpy(read_idx(img).copy()).float().unsqueeze(1) / 127.5 - 1.0
    y = torch.from_numpy(read_idx(lab).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise EdgeganError("data_root", f"{name}: {x.shape[0]} images but {y.shape[0]} labels",
                           "re-download the data set")
    return TensorData(name, x, y, 10)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_cifar(name: str, root: Path, train: bool) -> TensorData:
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        key, ncls = "labels", 10
    else:
        folder = root / "cifar-100-python"
        files = ["train" if train else "test"]
        key, ncls = "fine_labels", 100
    paths = [folder / f for f in files]
    if not all(p.is_file() for p in paths):
        raise _missing(name, root, folder)
    xs, ys = [], []
    for p in paths:
        d = _unpickle(p)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(d[key])
    x = torch.from_numpy(np.concatenate(xs)).float() / 127.5 - 1.0
    return TensorData(name, x, torch.tensor(ys, dtype=torch.long), ncls)


def load_vision(name: str, root: str | Path | None, train: bool = True,
                download: bool = False) -> TensorData:
    """Load one of ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` from ``root``."""
    if root is None:
        raise EdgeganError("data_root", f"{name} needs a local folder",
                           "pass --data-root DIR (add --download to fetch it once)")
    root = Path(root)
    if download:
        import torchvision

        getattr(torchvision.datasets, _TV_CLASSES[name])(str(root), train=train, download=True)
    if not root.is_dir():
        raise EdgeganError("data_root", f"folder '{root}' does not exist",
                           "create it and put the data set there, or rerun with --download")
    if name in _IDX_FOLDERS:
        return _load_idx(name, root, train)
    return _load_cifar(name, root, train)
