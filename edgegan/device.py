"""Device selection: the user's ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

The core never picks a device itself; callers resolve the option once and pass it down.
"""

from __future__ import annotations

import torch

from edgegan.errors import EdgeganError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a device option into a ``torch.device``; ``auto`` means CUDA when present."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EdgeganError("device", f"'{spec}' asked for but no CUDA GPU is visible",
                               "use --device cpu or --device auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EdgeganError("device", f"'{spec}' but only {torch.cuda.device_count()} GPU(s)",
                               "pick cuda:0..cuda:%d" % (torch.cuda.device_count() - 1))
        return dev
    raise EdgeganError("device", f"unknown value '{spec}'", "use cpu, cuda, cuda:N or auto")
