"""Joining or starting Ray for the worker pool: a fast reachability check of the address (``ray.init``
itself retries for minutes) and the one place ``ray.init`` is called."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from edgegan.errors import EdgeganError

#: HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server
#: (Ray's GCS and its client server both are) answers with a SETTINGS frame of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
#: Bytes of an HTTP/2 frame header; its fourth byte is the frame type (4: SETTINGS).
_FRAME_HEADER_BYTES, _SETTINGS = 9, 4


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast with one line when a Ray address (GCS ``HOST:PORT`` or ``ray://HOST:PORT``) does
    not answer as a gRPC server within ``timeout_s`` (nothing listening, a dropped route, or another
    service on that port)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EdgeganError("engine.ray_address", f"{address!r} is not HOST:PORT or ray://HOST:PORT",
                           "pass e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001")
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < _FRAME_HEADER_BYTES:  # the server's first frame header
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(_FRAME_HEADER_BYTES - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError as e:
        raise EdgeganError("engine.ray_address", f"cannot reach Ray at {address} within {timeout_s:g} s ({e})",
                           "start the head with `ray start --head` there, or check host, port and firewall")
    if len(head) < _FRAME_HEADER_BYTES or head[3] != _SETTINGS:
        raise EdgeganError("engine.ray_address", f"{address} does not answer as a Ray (gRPC) server",
                           "pass the head's GCS port (ray start --port, 6379) or its client port (ray://…:10001)")


def init_ray(ray: Any, address: str | None, connect_timeout_s: float, object_store_bytes: int) -> bool:
    """Join ``address`` (``auto``, ``HOST:PORT`` or ``ray://…``) when given, else start a local Ray sized
    to the machine; nothing when this process already runs Ray. Returns whether Ray was started or
    joined here (the caller then shuts it down).

    Before Ray starts, ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` defaults to ``0`` (unless set): a worker
    asking for no GPU keeps the visible devices it inherits instead of Ray blanking them, the
    behaviour Ray announces as its future default with a warning at every start.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kw: dict[str, Any] = {"include_dashboard": False, "configure_logging": True,
                          "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        check_reachable(address, connect_timeout_s)
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=object_store_bytes, **kw)
    return True
