"""Whether a tensor holds only finite numbers: the check every tensor crossing a trust boundary
(fakes, feedback, wire messages) gets, so it runs once per message and has to be cheap."""

from __future__ import annotations

import numpy as np
import torch

#: CPU dtypes numpy checks in one vectorised pass (torch's ``isfinite(t).all()`` builds boolean
#: intermediates and is 10–30× slower on these sizes; bfloat16 has no numpy type).
_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element of ``t`` is NaN or ±Inf (integer tensors always are)."""
    if not t.is_floating_point():
        return True
    if t.device.type == "cpu" and t.dtype in _NUMPY_FLOATS:
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())
