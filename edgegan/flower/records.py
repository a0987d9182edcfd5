"""Models ⇄ Flower records, without pickles.

Several named models travel in ONE ``ArrayRecord`` (keys ``<name>.<state-dict key>``, one
numpy array each) beside ONE ``ConfigRecord`` holding each model's
:func:`~edgegan.nn.model_spec` as JSON under ``<name>.spec``; the receiver rebuilds the model
with :func:`~edgegan.nn.build_from_spec` and loads the arrays strictly. A reply that does not
decode is a one-line :class:`~edgegan.errors.EdgeganError` naming the model.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from edgegan.errors import EdgeganError, require
from edgegan.nn import build_from_spec, model_spec

SPEC_SUFFIX = ".spec"


def models_to_records(models: Mapping[str, nn.Module]) -> tuple[ArrayRecord, ConfigRecord]:
    """``{name: model}`` → (ArrayRecord of every state-dict entry, ConfigRecord of the specs)."""
    state: dict[str, torch.Tensor] = {}
    specs = ConfigRecord()
    for name, model in models.items():
        require("." not in name and bool(name), "models", f"bad model name {name!r}", "use a name without dots")
        state.update({f"{name}.{key}": t for key, t in model.state_dict().items()})
        specs[name + SPEC_SUFFIX] = json.dumps(model_spec(model), sort_keys=True)
    return ArrayRecord(state), specs


def models_from_records(arrays: ArrayRecord, specs: ConfigRecord, names: Sequence[str],
                        device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """Rebuild the models ``names`` from :func:`models_to_records` output, on ``device``."""
    state = arrays.to_torch_state_dict()
    out: dict[str, nn.Module] = {}
    for name in names:
        raw = specs.get(name + SPEC_SUFFIX)
        require(isinstance(raw, str), f"{name}.spec", "missing from the ConfigRecord",
                "send models with edgegan.flower.records.models_to_records")
        try:
            model = build_from_spec(json.loads(raw))
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EdgeganError(f"{name}.spec", f"does not describe a model ({e})") from None
        prefix = name + "."
        own = {k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(own, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise EdgeganError(f"{name}.arrays", f"do not fit the model spec ({first})",
                               "all nodes must build models from the same run config") from None
        out[name] = model.to(device)
    return out
