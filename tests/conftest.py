import os
import socket

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")



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
