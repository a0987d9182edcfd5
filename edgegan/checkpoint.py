"""Atomic checkpoints that rebuild their models: ``model_args`` travel beside state dicts.

Written to a temp file in the same folder, fsynced, then renamed, so a crash leaves either
the old file or the new one, never half of one. Corrupt files are a one-line error.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from edgegan.errors import EdgeganError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a dict of tensors / state dicts / plain values atomically with ``torch.save``."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise EdgeganError("checkpoint", f"'{path}' does not exist", "check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise EdgeganError("checkpoint", f"'{path}' is corrupt or not an edgegan checkpoint "
                           f"({type(e).__name__})", "delete it and rerun from the previous step") from None
    if not isinstance(obj, dict):
        raise EdgeganError("checkpoint", f"'{path}' does not hold a dict", "not an edgegan checkpoint")
    return obj
