"""WGAN-GP losses, gradient penalty, the weighted multi-critic objective and its trainer."""

from edgegan.gan.losses import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    normalize_weights,
    weighted_critic_loss,
    weighted_generator_loss,
)
from edgegan.gan.train import MultiCriticWGAN, WGANConfig, train_wgan_gp

__all__ = [
    "MultiCriticWGAN", "WGANConfig", "critic_loss", "generator_loss", "gradient_penalty",
    "normalize_weights", "train_wgan_gp", "weighted_critic_loss", "weighted_generator_loss",
]
