"""DDPM and DDIM schedulers: drop-in subclasses of diffusers' with the papers' quantities as methods."""

from .schedule_utils import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    DiffusionChainMixin,
    chain_coefficients,
    discretized_gaussian_log_likelihood,
    normal_kl,
    quadratic_timesteps,
    spaced_timesteps,
)
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMMeanVariance, DDPMScheduler

__all__ = [
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "DDIMScheduler",
    "DDPMMeanVariance",
    "DDPMScheduler",
    "DiffusionChainMixin",
    "chain_coefficients",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "quadratic_timesteps",
    "spaced_timesteps",
]
