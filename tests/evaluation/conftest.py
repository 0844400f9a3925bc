"""Closed-form oracles for the evaluation tests.

For data x_0 ~ N(μ, s²) per dimension, x_t ~ N(√ᾱ_t μ, ᾱ_t s² + 1 − ᾱ_t), so the L_simple-optimal noise predictor is
E[ε | x_t] = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t): linear in x_t. Every term of the bound (DDPM eq. 5) then
has an expectation over x_t that the tests compute by hand (see `expected_kl_terms` in test_likelihood.py).

(tests/pipelines/conftest.py has a similar ε-model; it is reachable only as a fixture of that folder, and this one
also emits the variance channels of a "learned_range" model, so it lives here.)
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler


class ClosedFormOutput(BaseOutput):
    sample: torch.Tensor


class GaussianEpsModel(ModelMixin, ConfigMixin):
    """The exact ε(x_t, t) for x_0 ~ N(`mean`, `std`²) per dimension; with `learned_range_v` it also outputs that
    constant v in C extra channels (the "learned_range" interpolation weight)."""

    @register_to_config
    def __init__(
        self,
        alphas_cumprod: list[float],
        mean: float = 0.0,
        std: float = 0.3,
        sample_size: int = 4,
        in_channels: int = 1,
        learned_range_v: float | None = None,
    ):
        super().__init__()
        self._alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float64)
        # ModelMixin reads dtype/device from the parameters; this one is never used in the computation.
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> ClosedFormOutput:
        a = float(self._alphas_cumprod[int(timestep)])
        mean, var = self.config.mean, self.config.std**2
        x = sample.to(torch.float64)
        eps = math.sqrt(1 - a) * (x - math.sqrt(a) * mean) / (a * var + 1 - a)
        if self.config.learned_range_v is not None:
            eps = torch.cat([eps, torch.full_like(eps, self.config.learned_range_v)], dim=1)
        return ClosedFormOutput(sample=eps.to(sample.dtype))


def gaussian_pipeline(
    mean: float = 0.0, std: float = 0.3, sample_size: int = 4, variance_type: str = "fixed_small", **scheduler_kwargs
) -> DDPMPipeline:
    """A DDPM pipeline whose UNet is the exact ε-model of N(mean, std²) data."""
    scheduler = DDPMScheduler(variance_type=variance_type, **scheduler_kwargs)
    model = GaussianEpsModel(
        alphas_cumprod=scheduler.alphas_cumprod.tolist(),
        mean=mean,
        std=std,
        sample_size=sample_size,
        learned_range_v=0.3 if variance_type == "learned_range" else None,
    )
    pipe = DDPMPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quantized_gaussian(num: int, mean: float, std: float, sample_size: int, seed: int) -> torch.Tensor:
    """Draws of N(mean, std²) rounded to the 256 levels of [-1, 1] (outer values clamped), shape (num, 1, R, R)."""
    x = mean + std * torch.randn(num, 1, sample_size, sample_size, generator=torch.Generator().manual_seed(seed))
    return (((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1).double()


@pytest.fixture(name="gaussian_pipeline")
def _gaussian_pipeline():
    return gaussian_pipeline


@pytest.fixture(name="quantized_gaussian")
def _quantized_gaussian():
    return quantized_gaussian
