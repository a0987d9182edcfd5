import os
import socket

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: Test files that start Ray (a local ``ray.init`` or ``ray start`` clusters).
RAY_FILES = {"test_ray_cluster", "test_sim_ray", "test_sim_grpc", "test_flower_simulation"}


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): a file's tests
    stay on one worker, in order (module fixtures and cached sources are built once), and the files
    that start Ray share one group, so they run one after another: ``ray.init()`` without an address
    joins the newest ``ray start`` cluster on the machine, and two Ray tests at once would share it."""
    for item in items:
        name = item.module.__name__.rpartition(".")[2]
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_FILES else name))


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """Every device test runs on CPU and on CUDA; the CUDA case is reported skipped without a GPU."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def torch_threads_unchanged():
    """A test that changes torch's global intra-op thread count must restore it: a leaked count
    changes the kernels' reduction order (and speed) of every later test."""
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"torch.get_num_threads() went from {before} to {after} during the test and was not restored")


@pytest.fixture(scope="session")
def digits():
    from edgegan.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_classifier(digits):
    from edgegan.eval import get_classifier

    return get_classifier(digits)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
