import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from edgegan.data import (
    label_histogram,
    load_dataset,
    partition_by_classes,
    partition_by_count,
    partition_dirichlet,
    random_spd,
    ring8_sampler,
)
from edgegan.errors import EdgeganError


def test_digits_range_and_shape(digits):
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.min() >= -1 and digits.x.max() <= 1
    assert digits.x.min() == -1 and digits.x.max() == 1
    assert label_histogram(digits.y, 10).sum() == 1797


def test_random_spd_condition_and_seed():
    a = random_spd(6, torch.Generator().manual_seed(3))
    b = random_spd(6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    eig = torch.linalg.eigvalsh(a)
    torch.testing.assert_close(eig[0], torch.tensor(0.5, dtype=eig.dtype), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eig[-1], torch.tensor(2.0, dtype=eig.dtype), rtol=1e-9, atol=1e-9)


def test_ring_samples_near_circle():
    x = ring8_sampler(radius=2.0, std=0.02)(1000)
    r = x.norm(dim=1)
    assert (r - 2.0).abs().max() < 0.15


def test_partition_by_classes(digits):
    parts = partition_by_classes(digits, [[0, 1, 2], [2, 3]], disjoint=True)
    assert set(parts[0].y.unique().tolist()) == {0, 1, 2}
    assert set(parts[1].y.unique().tolist()) == {2, 3}
    n2 = int((digits.y == 2).sum())
    assert int((parts[0].y == 2).sum()) + int((parts[1].y == 2).sum()) == n2
    capped = partition_by_classes(digits, [[5]], samples_per_node=[20])
    assert len(capped[0]) == 20


def test_partition_dirichlet_covers_everything(digits):
    parts = partition_dirichlet(digits, 5, alpha=0.5, seed=1)
    assert sum(len(p) for p in parts) == len(digits)
    again = partition_dirichlet(digits, 5, alpha=0.5, seed=1)
    assert [len(p) for p in parts] == [len(p) for p in again]


def test_partition_by_count(digits):
    parts = partition_by_count(digits, [10, 20, 30])
    assert [len(p) for p in parts] == [10, 20, 30]


@pytest.mark.parametrize("call, field", [
    (lambda d: load_dataset("imagenet"), "dataset"),
    (lambda d: load_dataset("mnist"), "data_root"),
    (lambda d: load_dataset("mnist", "/nonexistent/folder"), "data_root"),
    (lambda d: partition_by_classes(d, [[0], [11]]), "classes[1]"),
    (lambda d: partition_by_count(d, [10, 0]), "counts[1]"),
    (lambda d: partition_dirichlet(d, 3, alpha=0), "alpha"),
])
def test_bad_input_is_one_line(digits, call, field):
    with pytest.raises(EdgeganError) as e:
        call(digits)
    assert str(e.value).startswith(field + ":")
    assert "\n" not in str(e.value)


def _write_idx(path, arr: np.ndarray, gz=False):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_loader_reads_real_format(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    labels = np.arange(7) % 10
    _write_idx(raw / "train-images-idx3-ubyte.gz", imgs, gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", labels)
    d = load_dataset(name, tmp_path)
    assert d.x.shape == (7, 1, 28, 28)
    torch.testing.assert_close(d.x[3, 0], torch.tensor(imgs[3], dtype=torch.float32) / 127.5 - 1)
    assert d.y.tolist() == labels.tolist()


def test_cifar_loaders_read_real_format(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pickle.dump({"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), "labels": [1, 2, 3]},
                    open(c10 / f, "wb"))
    d = load_dataset("cifar10", tmp_path)
    assert d.x.shape == (15, 3, 32, 32) and d.num_classes == 10
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    arr = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
    pickle.dump({"data": arr, "fine_labels": [0, 50, 99, 7]}, open(c100 / "train", "wb"))
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100 and d.y.tolist() == [0, 50, 99, 7]
    # channel-major layout: the first 1024 bytes are the red plane
    torch.testing.assert_close(d.x[1, 0].flatten(), torch.tensor(arr[1, :1024], dtype=torch.float32) / 127.5 - 1)
