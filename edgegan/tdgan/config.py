"""TDGAN knobs (seed 003 §4.1 "Training details", eq. 1 and Alg. 1).

Paper defaults: Adam(lr 2e-4, β1 0.5, β2 0.999), λ = 1. The paper's batch is 8 (256×256
images); for 8×8 digits a batch of 64 is the default here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from edgegan.config import check_fields
from edgegan.errors import require
from edgegan.nn.factory import ARCHS

LOSSES = ("logloss", "wgan-gp")


@dataclass
class TDGANConfig:
    """Cloud generator + edge discriminator settings shared by both sides."""

    loss: Literal["logloss", "wgan-gp"] = field(default="logloss", metadata={
        "unit": "adversarial loss", "help": "logloss: seed 003 eq. 1 (non-saturating G loss); "
                                           "wgan-gp: critic loss + gradient penalty"})
    reminding_weight: float = field(default=1.0, metadata={"unit": "λ of seed 003 eq. 1 (0 = fine-tuning)"})
    lr: float = field(default=2e-4, metadata={"unit": "Adam step size (G and every D_k)"})
    beta1: float = field(default=0.5, metadata={"unit": "Adam β1"})
    beta2: float = field(default=0.999, metadata={"unit": "Adam β2"})
    batch_size: int = field(default=64, metadata={"unit": "fake samples per node per step (m)"})
    remind_batch_size: int = field(default=64, metadata={"unit": "samples per reminding-loss batch (n)"})
    d_steps: int = field(default=1, metadata={"unit": "D_k updates per feedback request"})
    gp_weight: float = field(default=10.0, metadata={"unit": "gradient-penalty coefficient (wgan-gp)"})
    max_feedback_norm: float = field(default=1.0, metadata={
        "unit": "bound on the per-sample L2 norm of ∂loss_G/∂fake (loss is a batch mean)"})
    latent_dim: int = field(default=32, metadata={"unit": "latent dimensions of u"})
    arch: str = field(default="mlp", metadata={"unit": "model family for default G / D_k (mlp, dcgan)"})
    width: Optional[int] = field(default=None, metadata={"unit": "hidden size / base channels (None: family default)"})
    seed: int = field(default=0, metadata={"unit": "RNG seed (labels, latents, real batches, default D_k init)"})

    def validate(self, prefix: str = "") -> None:
        p = f"{prefix}." if prefix else ""
        require(self.loss in LOSSES, f"{p}loss", f"unknown loss {self.loss!r}", "choose logloss or wgan-gp")
        require(self.reminding_weight >= 0, f"{p}reminding_weight", f"must be >= 0, got {self.reminding_weight}")
        check_fields(self, prefix, ("lr",), 0, strict_low=True)
        check_fields(self, prefix, ("beta1", "beta2"), 0, 1)
        check_fields(self, prefix, ("batch_size", "remind_batch_size", "d_steps"), 1)
        require(self.gp_weight >= 0, f"{p}gp_weight", f"must be >= 0, got {self.gp_weight}")
        require(self.max_feedback_norm > 0, f"{p}max_feedback_norm", f"must be > 0, got {self.max_feedback_norm}")
        require(self.latent_dim >= 1, f"{p}latent_dim", f"must be >= 1, got {self.latent_dim}")
        require(self.arch in ARCHS, f"{p}arch", f"unknown architecture {self.arch!r}", "choose one of " + ", ".join(ARCHS))
        require(self.width is None or self.width >= 1, f"{p}width", f"must be >= 1, got {self.width}")
