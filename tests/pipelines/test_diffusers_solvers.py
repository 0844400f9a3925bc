"""diffusers' solvers in `DDPMPipeline`: every family runs, follows diffusers' own denoising loop, and on the exact
ε-model of Gaussian data (tests/closed_form.py) solves the probability-flow ODE it is meant to solve."""

from __future__ import annotations

import inspect

import pytest
import torch
from closed_form import GaussianEpsModel
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

# DDPM's β (linear, 1e-4 to 0.02, T = 1000) given explicitly: diffusers' `from_config` of a config holding defaults
# would hand HeunDiscreteScheduler its own default β instead.
BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
FAMILIES = {
    "dpmsolver++_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver_singlestep": (DPMSolverSinglestepScheduler, {"lower_order_final": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
}
MEAN, STD = 0.2, 0.5


def make_scheduler(name: str):
    """The family's scheduler on DDPM's β; "trailing" spacing (where the class takes one) starts at t = T − 1 and
    keeps every timestep an integer, which the closed-form model indexes ᾱ_t with."""
    scheduler_class, settings = FAMILIES[name]
    if "timestep_spacing" in inspect.signature(scheduler_class.__init__).parameters:
        settings = {**settings, "timestep_spacing": "trailing"}
    return scheduler_class(**BETAS, **settings)


def unet_inputs(unet: torch.nn.Module) -> list[torch.Tensor]:
    """Registers a hook that records every sample the UNet is called with; returns the (growing) list."""
    seen = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    return seen


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_solver_family_samples_finite_images_in_range(name, tiny_unet, quiet):
    pipe = quiet(DDPMPipeline(unet=tiny_unet(), scheduler=make_scheduler(name)))
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert images.images.shape == (2, *pipe.sample_shape)
    assert torch.isfinite(images.images).all() and images.images.min() >= 0 and images.images.max() <= 1


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pipeline_follows_the_diffusers_denoising_loop(name, tiny_unet, quiet):
    # diffusers' loop for any scheduler: x_T · init_noise_sigma, then per timestep scale_model_input, the network,
    # step (with the generator where step takes one).
    unet, scheduler = tiny_unet(), make_scheduler(name)
    pipe = quiet(DDPMPipeline(unet=unet, scheduler=make_scheduler(name)))
    out = pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(3), output_type="latent")

    generator = torch.Generator().manual_seed(3)
    scheduler.set_timesteps(6)
    x = randn_tensor((2, *pipe.sample_shape), generator=generator) * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    torch.testing.assert_close(out.images, x, rtol=0, atol=1e-6)


def test_euler_network_input_is_scaled_to_the_ddpm_marginal(tiny_unet, quiet):
    # Euler works on x_σ = x_t / √ᾱ_t, whose start has std σ_max ≈ 157; the network was trained on x_t, std ≈ 1.
    # Without scale_model_input (x_σ / √(σ² + 1)) the first input would be ~157 times too large.
    pipe = quiet(DDPMPipeline(unet=tiny_unet(), scheduler=make_scheduler("euler")))
    seen = unet_inputs(pipe.unet)
    pipe(batch_size=4, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert pipe.scheduler.init_noise_sigma > 100
    assert len(seen) == 5 and 0.8 < seen[0].std().item() < 1.2


def test_heun_evaluates_the_network_twice_per_step_but_the_last(tiny_unet, quiet):
    # Heun's correction needs a second evaluation at the step's end; the last step goes to σ = 0, where diffusers
    # takes a plain Euler step, so S steps cost 2S − 1 evaluations.
    pipe = quiet(DDPMPipeline(unet=tiny_unet(), scheduler=make_scheduler("heun")))
    seen = unet_inputs(pipe.unet)
    pipe(batch_size=1, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert len(seen) == 2 * 5 - 1


def gaussian_solver_pipe(name: str) -> DDPMPipeline:
    ddpm = DDPMScheduler(**BETAS)
    model = GaussianEpsModel(
        alphas_cumprod=ddpm.alphas_cumprod.tolist(), mean=MEAN, std=STD, sample_size=8, in_channels=3
    )
    pipe = DDPMPipeline(unet=model, scheduler=make_scheduler(name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_ode_solution(x_T: torch.Tensor, alpha_prod_T: float) -> torch.Tensor:
    """The probability-flow ODE of N(MEAN, STD²) data keeps each x_t's standard score: x_t = √ᾱ_t μ + √v_t z with
    v_t = ᾱ_t s² + 1 − ᾱ_t, so x_0 = μ + s z with z read off x_T (the exact DDIM map of DDIM §4.3)."""
    a = torch.tensor(alpha_prod_T, dtype=torch.float64)
    return MEAN + STD * (x_T.double() - a.sqrt() * MEAN) / (a * STD**2 + 1 - a).sqrt()


def ode_error(name: str, steps: int) -> float:
    pipe = gaussian_solver_pipe(name)
    x_T = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_0 = pipe(batch_size=64, latents=x_T, num_inference_steps=steps, output_type="latent").images
    first_t = int(pipe.scheduler.timesteps[0])
    return (x_0.double() - exact_ode_solution(x_T, DDPMScheduler(**BETAS).alphas_cumprod[first_t].item())).abs().max()


# Largest |x_0 − exact| over 12288 values at 50 steps, measured (in brackets), with ~2× headroom. The solver's order
# shows: LMS (order 4) and PNDM lead, Euler (order 1) trails. At 25 steps each error is larger (asserted below).
ODE_TOLERANCE_AT_50 = {
    "dpmsolver++_2m": 0.005,  # [0.002]
    "dpmsolver_singlestep": 0.1,  # [0.054]
    "unipc": 0.01,  # [0.005]
    "euler": 0.25,  # [0.12]
    "heun": 0.04,  # [0.018]
    "pndm": 0.003,  # [0.001]
    "lms": 0.001,  # [0.0002]
    "deis": 0.05,  # [0.024]
}


@pytest.mark.parametrize("name", list(ODE_TOLERANCE_AT_50))
def test_ode_solvers_reach_the_exact_ode_solution_of_gaussian_data(name):
    error_50, error_25 = ode_error(name, 50), ode_error(name, 25)
    assert error_50 < ODE_TOLERANCE_AT_50[name], error_50
    assert error_25 > error_50  # converging, not merely close


@pytest.mark.parametrize(
    ("name", "steps", "tolerance"),
    [("euler_ancestral", 200, 0.03), ("dpmsolver++_2m", 25, 0.015), ("unipc", 25, 0.015)],
)
def test_solvers_sample_the_data_law(name, steps, tolerance):
    # Mean and spread of 12288 values (sampling error of the std ≈ 0.5 / √24576 ≈ 0.003). Measured std: 0.490 for
    # DPM-Solver++ and UniPC at 25 steps; Euler ancestral, stochastic and first order, 0.444 at 50 steps, 0.481 at 200.
    pipe = gaussian_solver_pipe(name)
    x_0 = pipe(
        batch_size=64, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent"
    )
    x_0 = x_0.images.double()
    assert abs(x_0.mean().item() - MEAN) < 0.01
    assert abs(x_0.std().item() - STD) < tolerance, x_0.std().item()
