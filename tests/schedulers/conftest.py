"""Closed-form oracles shared by the scheduler tests.

Data whose exact noise predictor is known: for x_0 ~ Σ_k w_k N(μ_k, s_k²) (per dimension), x_t given component k is
N(√ᾱ_t μ_k, ᾱ_t s_k² + 1 − ᾱ_t), and the L_simple-optimal predictor is E[ε | x_t] = Σ_k r_k(x_t) √(1−ᾱ_t)
(x_t − √ᾱ_t μ_k) / (ᾱ_t s_k² + 1 − ᾱ_t), r_k the component posteriors. Feeding it to a scheduler tests the math alone.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch


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


@pytest.fixture
def gaussian() -> GaussianMixture:
    """x_0 ~ N(0.3, 0.5²): a well-conditioned exact denoiser for drop-in comparisons."""
    return GaussianMixture(weights=(1.0,), means=(0.3,), stds=(0.5,))


@pytest.fixture
def mixture() -> GaussianMixture:
    """An asymmetric two-component mixture: tests both location and weights of a multimodal law."""
    return GaussianMixture(weights=(0.3, 0.7), means=(-0.6, 0.5), stds=(0.15, 0.2))
