"""Sampling with the exact noise predictor of a known data law: a test of the schedulers' math alone.

Data: the asymmetric 1-d Gaussian mixture 0.3·N(-0.6, 0.15²) + 0.7·N(0.5, 0.2²) (conftest `mixture`). The scheduler
gets E[ε | x_t] in closed form at every step, so any error in the sampler's equations shows up as a distance between
its samples and the mixture. Distance: 1-d Wasserstein-1 to 200000 exact draws. The sampling-error floor, measured with
independent exact draws: W1 = 0.0035 (10000 draws, seed 5) and 0.0071 (20000 draws, seed 5): about 0.005-0.01.

Measured W1 (10000 samples, float64, clip off):
- DDPM, T = 1000 ancestral steps: fixed_small 0.0057, fixed_large 0.0042 (at the floor).
- DDIM η = 0, "leading" (DDIM's linear τ_i = ⌊c·i⌋): S = 10: 0.090, S = 20: 0.038, S = 50: 0.016.
- DDIM η = 0, "quadratic" (DDIM App. D.2): S = 10: 0.051, S = 20: 0.024, S = 50: 0.014.
- DDIM quadratic S = 100: η = 1: 0.0093, σ̂: 0.0129.
So at 10 steps quadratic spacing is markedly better than linear here too, as the paper found on CIFAR10.
"""

import pytest
import torch
from scipy.stats import wasserstein_distance

from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

NUM_SAMPLES = 10000


def _truth(mixture):
    return mixture.sample(200000, seed=123)


def _sample(mixture, scheduler, seed=0, **step_kwargs):
    x = torch.randn(NUM_SAMPLES, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        output = mixture.model_output(x, float(scheduler.alphas_cumprod_f64[int(t)]))
        x = scheduler.step(output, t, x, generator=generator, **step_kwargs).prev_sample
    return x.flatten().numpy()


def test_sampling_error_floor(mixture):
    # The reference for the tolerances below: two independent exact samples of the same size.
    floor = wasserstein_distance(mixture.sample(NUM_SAMPLES, seed=5), _truth(mixture))
    assert floor < 0.015  # measured 0.0035


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_with_a_thousand_steps_reproduces_the_data_law(mixture, variance_type):
    samples = _sample(mixture, DDPMScheduler(clip_sample=False, variance_type=variance_type))
    truth = _truth(mixture)
    # Measured W1 0.0057 (fixed_small) / 0.0042 (fixed_large): at the sampling floor.
    assert wasserstein_distance(samples, truth) < 0.015
    # The lighter component's weight, 0.3 (measured 0.2987 / 0.2998; binomial std with 10000 draws: 0.0046).
    assert abs((samples < -0.05).mean() - 0.3) < 0.02
    assert abs(samples.mean() - truth.mean()) < 0.02 and abs(samples.std() - truth.std()) < 0.02


def test_ddim_approaches_the_data_law_as_steps_grow(mixture):
    truth = _truth(mixture)
    distances = []
    for steps in (10, 20, 50):
        scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="leading")
        scheduler.set_timesteps(steps)
        distances.append(wasserstein_distance(_sample(mixture, scheduler, eta=0.0), truth))
    # Measured: 0.090, 0.038, 0.016; DDPM's 1000 steps: 0.006.
    assert distances[0] > distances[1] > distances[2], distances
    assert distances[0] < 0.13 and distances[2] < 0.025, distances


def test_quadratic_spacing_beats_linear_at_ten_steps(mixture):
    truth = _truth(mixture)
    result = {}
    for spacing in ("leading", "quadratic"):
        scheduler = DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
        scheduler.set_timesteps(10)
        result[spacing] = wasserstein_distance(_sample(mixture, scheduler, eta=0.0), truth)
    # Measured: linear 0.090, quadratic 0.051 (DDIM Table 1 uses quadratic for CIFAR10 for this reason).
    assert result["quadratic"] < 0.75 * result["leading"], result
    assert result["quadratic"] < 0.08, result


def test_ddim_eta_one_and_sigma_hat_also_converge(mixture):
    truth = _truth(mixture)
    for kwargs in ({"eta": 1.0}, {"sigma_hat": True}):
        scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="quadratic")
        scheduler.set_timesteps(100)
        distance = wasserstein_distance(_sample(mixture, scheduler, **kwargs), truth)
        # Measured: η = 1: 0.0093, σ̂: 0.0129.
        assert distance < 0.025, (kwargs, distance)
