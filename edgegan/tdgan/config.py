"""TDGAN knobs (seed 003 §4.1 "Training details", eq. 1 and Alg. 1).

A :class:`~edgegan.gan.WGANConfig` (the project's one training-settings type) plus TDGAN's
own knobs. Where seed 003 §4.1 gives a value it overrides the shared default: Adam β2 0.999
(lr 2e-4, β1 0.5 agree), λ = 1, one D_k update per request. The paper's batch is 8
(256×256 images); for 8×8 digits the shared batch of 64 is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from edgegan.config import check_fields
from edgegan.errors import require
from edgegan.gan.train import WGANConfig
from edgegan.nn.factory import arch_field, check_arch

LOSSES = ("logloss", "wgan-gp")


@dataclass
class TDGANConfig(WGANConfig):
    """Cloud generator + edge discriminator settings shared by both sides (seed 003)."""

    loss: Literal["logloss", "wgan-gp"] = field(default="logloss", metadata={
        "unit": "adversarial loss", "help": "logloss: seed 003 eq. 1 (non-saturating G loss); "
                                           "wgan-gp: critic loss + gradient penalty"})
    reminding_weight: float = field(default=1.0, metadata={"unit": "λ of seed 003 eq. 1 (0 = fine-tuning)"})
    beta2: float = field(default=0.999, metadata={"unit": "Adam β2 (seed 003 §4.1)"})
    critic_steps: int = field(default=1, metadata={"unit": "D_k updates per feedback request"})
    remind_batch_size: int = field(default=64, metadata={"unit": "samples per reminding-loss batch (n)"})
    max_feedback_norm: float = field(default=1.0, metadata={
        "unit": "bound on the per-sample L2 norm of ∂loss_G/∂fake (loss is a batch mean)"})
    clip_feedback: bool = field(default=True, metadata={
        "unit": "edges scale a sample's feedback down to just under max_feedback_norm rather than send one the "
                "cloud refuses (D_k's input gradient grows over thousands of steps; samples within keep their bytes)"})
    max_share: float = field(default=1.0, metadata={
        "unit": "largest π_k of one node (1: π_k = n_k/n as in seed 003; < 1 caps a node's self-reported weight)"})
    arch: str = arch_field(what="model family for default G / D_k")
    width: Optional[int] = field(default=None, metadata={"unit": "hidden size / base channels (None: family default)"})
    seed: int = field(default=0, metadata={"unit": "RNG seed (labels, latents, real batches, default D_k init)"})
    exact_grouping: bool = field(default=True, metadata={
        "unit": "with a convolutional D_k (vmap pass), a lone node is computed as a pair so its numbers are the same "
                "bytes whichever nodes share its pass (a one-row batched convolution sums in another order); false: "
                "a lone node costs one row and differs at ~1e-8 between groupings. MLP critics are exact either way"})
    lookahead: bool = field(default=False, metadata={
        "unit": "the cloud draws each node's labels one step ahead and sends them with the current request, so an "
                "edge draws its next real batch and computes D_k's real half (score and weight gradient) while the "
                "cloud steps; D_k's gradient is then real half + fake half (another float summation order) and "
                "d_real is the real batch's mean score before the update. Off: the exact single-pass step. The "
                "same numbers on every backend either way"})

    def validate(self, prefix: str = "") -> None:
        p = f"{prefix}." if prefix else ""
        super().validate(prefix)
        require(self.loss in LOSSES, f"{p}loss", f"unknown loss {self.loss!r}", "choose logloss or wgan-gp")
        check_fields(self, prefix, ("reminding_weight",), 0)
        check_fields(self, prefix, ("remind_batch_size",), 1)
        check_fields(self, prefix, ("max_feedback_norm",), 0, strict_low=True)
        check_fields(self, prefix, ("max_share",), 0, 1.0 + 1e-12, strict_low=True)
        check_arch(self.arch, f"{p}arch")
        require(self.width is None or self.width >= 1, f"{p}width", f"must be >= 1, got {self.width}")
