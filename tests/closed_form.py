"""Data whose exact noise predictor is known in closed form: the test oracles of the schedulers, pipelines and
evaluation. Importable as `closed_form` (pytest puts tests/ on sys.path).

For x_0 ~ Σ_k w_k N(μ_k, s_k²) per dimension, x_t given component k is N(√ᾱ_t μ_k, ᾱ_t s_k² + 1 − ᾱ_t), and the
L_simple-optimal noise predictor is E[ε | x_t] = Σ_k r_k(x_t) √(1 − ᾱ_t) (x_t − √ᾱ_t μ_k) / (ᾱ_t s_k² + 1 − ᾱ_t), r_k
the component posteriors. Feeding it to a scheduler tests the math alone. For one Gaussian it is linear in x_t: DDIM's
ODE then maps the data law to N(0, I) exactly (DDIM §4.3), and every term of the bound (DDPM eq. 5) has an
expectation the tests can compute by hand. ᾱ_t is read from the scheduler under test (an oracle input, not library
code re-deriving it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass(frozen=True)
class GaussianMixture:
    """A 1-d Gaussian mixture, applied independently to every element of a tensor."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def exact_noise(self, sample: torch.Tensor, alpha_prod: torch.Tensor | float) -> torch.Tensor:
        """E[ε | x_t] in float64 for ᾱ_t = `alpha_prod` (a float or a tensor broadcasting against `sample`)."""
        x = sample.double()
        a = torch.as_tensor(alpha_prod, dtype=torch.float64)
        log_r, eps = [], []
        for w, mu, s in zip(self.weights, self.means, self.stds):
            var = a * s**2 + 1 - a
            centered = x - a.sqrt() * mu
            log_r.append(math.log(w) - 0.5 * torch.log(var) - centered**2 / (2 * var))
            eps.append((1 - a).sqrt() * centered / var)
        r = torch.softmax(torch.stack(log_r), dim=0)
        return (r * torch.stack(eps)).sum(0)

    def model_output(self, sample: torch.Tensor, alpha_prod: float, prediction_type: str = "epsilon") -> torch.Tensor:
        """The exact model output for a prediction type, in the sample's dtype."""
        a = torch.as_tensor(alpha_prod, dtype=torch.float64)
        eps = self.exact_noise(sample, a)
        x0 = (sample.double() - (1 - a).sqrt() * eps) / a.sqrt()
        out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
        return out.to(sample.dtype)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        return rng.normal(np.asarray(self.means)[component], np.asarray(self.stds)[component])


class ClosedFormOutput(BaseOutput):
    sample: torch.Tensor


class GaussianEpsModel(ModelMixin, ConfigMixin):
    """The exact ε(x_t, t) of `GaussianMixture` N(`mean`, `std`²) as a UNet stand-in; with `learned_range_v` it also
    outputs that constant v in C extra channels (the "learned_range" interpolation weight)."""

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
        self._data = GaussianMixture(weights=(1.0,), means=(mean,), stds=(std,))
        # ModelMixin reads dtype/device from the parameters; this one is never used in the computation.
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> ClosedFormOutput:
        eps = self._data.exact_noise(sample, self._alphas_cumprod[int(timestep)])
        if self.config.learned_range_v is not None:
            eps = torch.cat([eps, torch.full_like(eps, self.config.learned_range_v)], dim=1)
        return ClosedFormOutput(sample=eps.to(sample.dtype))
