"""Atomic checkpoints that rebuild their models: ``model_args`` travel beside state dicts
(:func:`pack_model` / :func:`unpack_model`, the one packing every caller uses).

Written to a temp file in the same folder, fsynced, then renamed, so a crash leaves either
the old file or the new one, never half of one. Corrupt files are a one-line error.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgegan.errors import EdgeganError
from edgegan.nn import build_from_spec, model_spec


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


MODEL_ARGS = "model_args"


def pack_model(model: nn.Module) -> dict[str, Any]:
    """``{"model_args": model_spec(model), "state_dict": CPU tensors}``: the one way a model is
    stored (checkpoints, run outputs, W2-solver resumes); :func:`unpack_model` rebuilds it."""
    return {MODEL_ARGS: model_spec(model), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def unpack_model(packed: dict[str, Any], device: str | torch.device = "cpu", field: str = "model") -> nn.Module:
    """Rebuild a model packed by :func:`pack_model` on ``device``; a missing key, an unknown
    class or weights that do not fit the architecture are one-line :class:`EdgeganError` s."""
    if not isinstance(packed, dict) or MODEL_ARGS not in packed or "state_dict" not in packed:
        raise EdgeganError(field, f"expected {{'{MODEL_ARGS}', 'state_dict'}}",
                           "write models with edgegan.checkpoint.pack_model")
    model = build_from_spec(packed[MODEL_ARGS])
    try:
        model.load_state_dict(packed["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise EdgeganError(f"{field}.state_dict", f"does not fit {packed[MODEL_ARGS].get('cls')!r}: {detail[:300]}",
                           "load it with the model_args it was saved with") from None
    return model.to(device)


def same_model_args(packed: dict[str, Any], model: nn.Module) -> bool:
    """Whether ``packed`` (a :func:`pack_model` dict, possibly read back from JSON) describes
    ``model``'s architecture."""
    return json.loads(json.dumps(packed.get(MODEL_ARGS))) == json.loads(json.dumps(model_spec(model)))
