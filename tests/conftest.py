import os
import socket

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device test runs on CPU, and on CUDA where a GPU is present."""
    return torch.device(request.param)


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
