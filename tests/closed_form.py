"""Data whose exact noise predictor is known in closed form: the test oracles of the schedulers, pipelines and
evaluation. Importable as `closed_form` (pytest puts tests/ on sys.path).

For x_0 ~ Σ_k w_k N(μ_k, s_k²) per dimension, x_t given component k is N(√ᾱ_t μ_k, ᾱ_t s_k² + 1 − ᾱ_t), and the
L_simple-optimal noise predictor is E[ε | x_t] = Σ_k r_k(x_t) √(1 − ᾱ_t) (x_t − √ᾱ_t μ_k) / (ᾱ_t s_k² + 1 − ᾱ_t), r_k
the component posteriors. Feeding it to a scheduler tests the math alone. For one Gaussian it is linear in x_t: DDIM's
ODE then maps the data law to N(0, I) exactly (DDIM §4.3), and every term of the bound (DDPM eq. 5) has an
expectation the tests can compute by hand. ᾱ_t is read from the scheduler under test (an oracle input, not library
code re-deriving it).

With component k as class k, the same formula gives the class-conditional predictor of classifier-free guidance
(Ho & Salimans 2022): ε(x_t, k) is component k's exact noise, ε(x_t, ∅) the mixture's.
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

    def component(self, k: int) -> GaussianMixture:
        """Component k alone: the data of class k when component k is class k."""
        return GaussianMixture(weights=(1.0,), means=(self.means[k],), stds=(self.stds[k],))

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


class ClassConditionalMixtureEpsModel(ModelMixin, ConfigMixin):
    """The exact ε(x_t, t, c) of `GaussianMixture(weights, means, stds)` with component k as class k, as a
    class-conditional UNet stand-in: label k < K gives component k's noise, the null label K (index `num_classes`,
    as in DiT) the mixture's, so `num_class_embeds = K + 1`. With `learned_range_v` (K + 1 values, one per label) it
    also outputs that label's constant v in C extra channels (the "learned_range" interpolation weight)."""

    @register_to_config
    def __init__(
        self,
        alphas_cumprod: list[float],
        weights: tuple[float, ...] = (0.5, 0.5),
        means: tuple[float, ...] = (-0.5, 0.5),
        stds: tuple[float, ...] = (0.2, 0.2),
        sample_size: int = 4,
        in_channels: int = 1,
        learned_range_v: tuple[float, ...] | None = None,
    ):
        super().__init__()
        self.register_to_config(num_class_embeds=len(weights) + 1)
        self._alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float64)
        self._data = GaussianMixture(weights=tuple(weights), means=tuple(means), stds=tuple(stds))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives ModelMixin a dtype and device

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor
    ) -> ClosedFormOutput:
        alpha_prod = self._alphas_cumprod[int(timestep)]
        labels = class_labels.reshape(-1).expand(sample.shape[0])
        null_label = len(self._data.weights)
        eps = torch.empty(sample.shape, dtype=torch.float64, device=sample.device)
        for label in labels.unique().tolist():
            rows = labels == label
            data = self._data if label == null_label else self._data.component(label)
            eps[rows] = data.exact_noise(sample[rows], alpha_prod)
        if self.config.learned_range_v is not None:
            v = torch.tensor(self.config.learned_range_v, dtype=torch.float64)[labels.cpu()].to(sample.device)
            eps = torch.cat([eps, v.reshape(-1, 1, 1, 1).expand_as(eps)], dim=1)
        return ClosedFormOutput(sample=eps.to(sample.dtype))


def ddim_gaussian_std(scheduler, std: float) -> float:
    """The std of x_0 that DDIM (η = 0, eq. 12) with the exact ε of N(μ, std²) draws from x_T ~ N(0, 1), over the
    scheduler's set timesteps (previous ᾱ: the next timestep's, then `final_alpha_cumprod`).

    With v_t = ᾱ_t std² + 1 − ᾱ_t, each step is affine: x_prev − √ᾱ_prev μ = g_t (x_t − √ᾱ_t μ) with
    g_t = (√(ᾱ_prev ᾱ_t) std² + √((1 − ᾱ_prev)(1 − ᾱ_t))) / v_t ≤ √(v_prev / v_t) (Cauchy–Schwarz): the discrete chain
    narrows the law a little at every step, and the product of the g_t is the std it ends with.
    """
    timesteps = scheduler.timesteps.tolist()
    alphas_cumprod = scheduler.alphas_cumprod.double().tolist()
    previous = [alphas_cumprod[t] for t in timesteps[1:]] + [float(scheduler.final_alpha_cumprod)]
    gain = 1.0
    for t, a_prev in zip(timesteps, previous):
        a = alphas_cumprod[t]
        gain *= (math.sqrt(a_prev * a) * std**2 + math.sqrt((1 - a_prev) * (1 - a))) / (a * std**2 + 1 - a)
    return gain
