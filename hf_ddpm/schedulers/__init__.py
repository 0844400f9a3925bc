"""DDPM and DDIM schedulers: drop-in subclasses of diffusers' with the papers' quantities as methods."""

from .chain_coefficients import chain_coefficients
from .diffusion_chain import PREDICTION_TYPES, DiffusionChainMixin
from .gaussian_likelihood import discretized_gaussian_log_likelihood, normal_kl
from .scheduling_ddim import DDIM_BETA_SCHEDULES, DDIMScheduler
from .scheduling_ddpm import BETA_SCHEDULES, LEARNED_VARIANCE_TYPES, VARIANCE_TYPES, DDPMMeanVariance, DDPMScheduler
from .timestep_spacing import TIMESTEP_SPACINGS, quadratic_timesteps, spaced_timesteps

__all__ = [
    "BETA_SCHEDULES",
    "DDIM_BETA_SCHEDULES",
    "LEARNED_VARIANCE_TYPES",
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
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
