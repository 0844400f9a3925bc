"""The exact noise predictor of Gaussian data, as a UNet stand-in for pipeline and evaluation tests.

For data x_0 ~ N(μ, s²) per dimension, x_t ~ N(√ᾱ_t μ, ᾱ_t s² + 1 − ᾱ_t), so the L_simple-optimal noise predictor is
E[ε | x_t] = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t): linear in x_t. With it DDIM's ODE maps the data law to
N(0, I) exactly (encode→decode errors measure only the sampler's discretisation, DDIM §4.3), and every term of the
bound (DDPM eq. 5) has an expectation the tests can compute by hand. ᾱ_t is read from the scheduler under test (a
test oracle, not library code re-deriving it). Importable as `closed_form` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


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
