"""Ray cluster robustness (issue 15 item 4): an unreachable ``--ray-address`` is a one-line
error within a bounded time, and the pool spreads its actors over the cluster's nodes."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("ray")

from edgegan.errors import EdgeganError  # noqa: E402
from edgegan.sim.engine import RayPool, _check_reachable  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_unreachable_address_fails_fast(form):
    addr = form.format(_closed_port())
    t0 = time.perf_counter()
    with pytest.raises(EdgeganError, match="cannot reach Ray") as e:
        RayPool(workers=1, address=addr, connect_timeout_s=2.0)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(e.value)


def test_bad_address_form():
    with pytest.raises(EdgeganError, match="HOST:PORT"):
        _check_reachable("ray://nohostport", 1.0)
