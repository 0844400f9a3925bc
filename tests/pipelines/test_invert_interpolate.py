"""DDIM encoding (DDIM §4.3, Table 2) and slerp interpolation (DDIM §5.3)."""

import math
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from closed_form import ClosedFormOutput, GaussianEpsModel

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline, slerp
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler


def gaussian_data(n, std=0.5, seed=0):
    """x_0 ~ N(0, std²) per pixel, clipped to [-1, 1] like images (at std 0.5 the clip touches the 4.6% beyond 2σ)."""
    return (std * torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def reconstruction_mse(pipe, x0, steps):
    latents = pipe.invert(x0, num_inference_steps=steps, value_range=(-1, 1))
    decoded = pipe(batch_size=len(x0), latents=latents, num_inference_steps=steps, eta=0.0, output_type="pt").images
    return float(((decoded * 2 - 1) - x0).pow(2).mean())


def test_invert_then_decode_error_falls_as_steps_grow_like_ddim_table_2(gaussian_pipe):
    # With the exact ε of Gaussian data the probability-flow ODE is exact, so the encode→decode error is the DDIM
    # discretisation alone, and it must fall with S as in DDIM Table 2 (CIFAR10: 0.014 / 0.0065 / 0.0023 / 0.0009 for
    # S = 10 / 20 / 50 / 100). No x̂_0 clipping: it is not part of the ODE.
    pipe = gaussian_pipe(DDIMScheduler, num_train_timesteps=1000, clip_sample=False)
    x0 = gaussian_data(16)
    errors = {steps: reconstruction_mse(pipe, x0, steps) for steps in (10, 20, 50, 100)}
    # Measured (CPU, float32, 16 images, leading spacing): 10: 1.7e-2, 20: 4.2e-3, 50: 6.6e-4, 100: 1.6e-4 (and 200:
    # 4.1e-5); the error falls about 4x per doubling of S. Paper, CIFAR10: 1.4e-2, 6.5e-3, 2.3e-3, 9e-4.
    assert errors[10] > errors[20] > errors[50] > errors[100]
    assert errors[10] < 3e-2
    assert errors[100] < 3e-4
    assert errors[10] / errors[100] > 20  # convergence, not noise around a floor (measured ratio: 104)


def test_invert_reaches_the_gaussian_prior(gaussian_pipe):
    # DDIM's encoder maps the data distribution to N(0, I) (DDIM §4.3): with exact ε the codes are standard normal.
    pipe = gaussian_pipe(DDIMScheduler, num_train_timesteps=1000, clip_sample=False)
    latents = pipe.invert(gaussian_data(64, seed=1), num_inference_steps=50, value_range=(-1, 1))
    assert latents.shape == (64, 3, 8, 8)
    assert abs(float(latents.mean())) < 0.05  # 4096 values: standard error 0.016
    assert abs(float(latents.std()) - 1.0) < 0.05


def test_invert_accepts_pil_numpy_and_tensors_in_0_1_alike(gaussian_pipe):
    pipe = gaussian_pipe(DDIMScheduler, num_train_timesteps=100, clip_sample=False)
    # Values on the 0..255 grid, so the PIL version holds exactly the same image.
    grid = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 255
    array = grid.permute(0, 2, 3, 1).numpy()
    pil = [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
    from_tensor = pipe.invert(grid, num_inference_steps=5)
    from_model_space = pipe.invert(grid * 2 - 1, num_inference_steps=5, value_range=(-1, 1))
    torch.testing.assert_close(pipe.invert(array, num_inference_steps=5), from_tensor)
    torch.testing.assert_close(pipe.invert(pil, num_inference_steps=5), from_tensor)
    torch.testing.assert_close(pipe.invert((array * 255).round().astype(np.uint8), num_inference_steps=5), from_tensor)
    torch.testing.assert_close(from_model_space, from_tensor)


def test_invert_of_a_ddpm_pipeline_uses_ddim_and_leaves_its_scheduler_alone(ddpm_pipe):
    before = ddpm_pipe.scheduler.timesteps.clone()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="clip_sample=True"):  # DDPMScheduler's default, kept by the DDIM decoder
        latents = ddpm_pipe.invert(x, num_inference_steps=5)
    assert latents.shape == (1, 3, 8, 8) and torch.isfinite(latents).all()
    torch.testing.assert_close(ddpm_pipe.scheduler.timesteps, before)


def test_invert_warns_when_the_scheduler_clips_x0_and_says_how_to_stop_it(gaussian_pipe):
    x0 = gaussian_data(2)
    pipe = gaussian_pipe(DDIMScheduler, num_train_timesteps=100, clip_sample=True)
    with pytest.warns(UserWarning) as record:
        pipe.invert(x0, num_inference_steps=5, value_range=(-1, 1))
    message = str(record[0].message)
    for words in (
        "clip_sample=True",
        "clips x̂_0",
        "DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)",
    ):
        assert words in message, message
    assert record[0].filename == __file__  # points at the caller's line, not at the library

    thresholding = gaussian_pipe(DDIMScheduler, num_train_timesteps=100, clip_sample=False, thresholding=True)
    with pytest.warns(
        UserWarning, match=r"thresholding=True.*from_config\(pipe.scheduler.config, thresholding=False\)"
    ):
        thresholding.invert(x0, num_inference_steps=5, value_range=(-1, 1))

    unclipped = gaussian_pipe(DDIMScheduler, num_train_timesteps=100, clip_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unclipped.invert(x0, num_inference_steps=5, value_range=(-1, 1))


class BiasedEpsModel(GaussianEpsModel):
    """The exact ε of Gaussian data times `eps_scale`: a model error of a few percent, such as any trained network
    has somewhere. x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t multiplies it by up to √(1 − ᾱ_T)/√ᾱ_T ≈ 150 (linear β, T = 1000),
    so x̂_0 leaves [-1, 1] at high noise, where diffusers' clip_sample=True then clips it."""

    eps_scale = 1.0

    def forward(self, sample, timestep):
        return ClosedFormOutput(sample=self.eps_scale * super().forward(sample, timestep).sample)


def test_clipping_x0_while_decoding_spoils_the_round_trip(quiet):
    def round_trip_errors(eps_scale):
        errors = {}
        for clip_sample in (False, True):
            scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=clip_sample)
            model = BiasedEpsModel(scheduler.alphas_cumprod.tolist(), std=0.5, sample_size=8, in_channels=3)
            model.eps_scale = eps_scale
            pipe = quiet(DDPMPipeline(unet=model, scheduler=scheduler))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the warning this test justifies
                errors[clip_sample] = [reconstruction_mse(pipe, x0, steps) for steps in (20, 50, 100)]
        return errors

    x0 = gaussian_data(16)
    # The exact ε of data in [-1, 1]: x̂_0 = E[x_0 | x_t] never leaves [-1, 1], so clipping changes nothing.
    exact = round_trip_errors(1.0)
    assert exact[True] == exact[False]
    # 5% off: the unclipped round trip still converges as S grows, the clipped one gets worse.
    # Measured (CPU, float32, 16 images), S = 20/50/100: unclipped 7.0e-4/7.0e-5/1.4e-5, clipped 9.9e-3/2.0e-2/4.0e-2.
    biased = round_trip_errors(0.95)
    unclipped, clipped = biased[False], biased[True]
    assert unclipped[0] > unclipped[1] > unclipped[2]
    assert clipped[0] < clipped[1] < clipped[2]
    assert all(c > 10 * u for c, u in zip(clipped, unclipped))


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.full((1, 3, 8, 8), 1.5), {}, r"\[0, 1\].*1\.5"),
        (torch.full((1, 3, 8, 8), -0.5), {}, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), -1.2), {"value_range": (-1, 1)}, r"\[-1, 1\].*-1\.2"),
        (torch.zeros(1, 3, 16, 16), {}, r"shape \(B, 3, 8, 8\).*\(1, 3, 16, 16\)"),
        (torch.zeros(1, 1, 8, 8), {}, r"shape \(B, 3, 8, 8\)"),
        (torch.zeros(1, 3, 8, 8), {"value_range": (0, 255)}, "value_range"),
        (torch.zeros(1, 3, 8, 8), {"num_inference_steps": 0}, "num_inference_steps"),
        ("image.png", {}, "images must be"),
    ],
)
def test_bad_images_to_invert_are_refused(ddim_pipe, images, kwargs, match):
    kwargs = {"num_inference_steps": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        ddim_pipe.invert(images, **kwargs)


# ----------------------------------------------------------------------------------------------------- slerp
def test_slerp_follows_ddim_section_5_3_formula():
    # Oracle: the closed form on orthogonal unit vectors, x(λ) = cos(λπ/2) x⁰ + sin(λπ/2) x¹.
    x0 = torch.tensor([1.0, 0.0, 0.0])
    x1 = torch.tensor([0.0, 1.0, 0.0])
    for lam in (0.0, 0.25, 0.5, 1.0):
        expected = math.cos(lam * math.pi / 2) * x0 + math.sin(lam * math.pi / 2) * x1
        torch.testing.assert_close(slerp(x0, x1, lam), expected)


def test_slerp_keeps_the_norm_where_a_straight_line_would_shrink_it():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 9))
    assert path.shape == (9, 3, 8, 8)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    norms = path.flatten(1).norm(dim=1)
    # Independent Gaussian latents are nearly orthogonal and of nearly equal norm: the arc stays within their norms.
    assert float(norms.min()) > 0.97 * min(a.norm(), b.norm())
    assert float(((a + b) / 2).norm()) < 0.8 * float(norms[4])


def test_slerp_of_parallel_or_zero_latents_falls_back_to_the_line():
    a = torch.ones(3, 8, 8)
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)
    torch.testing.assert_close(slerp(torch.zeros_like(a), a, 0.25), 0.25 * a)


def test_interpolate_returns_per_pair_paths_usable_as_latents(ddim_pipe):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    path = ddim_pipe.interpolate(a, b, num=4)
    assert path.shape == (8, 3, 8, 8)
    torch.testing.assert_close(path[0], a[0])
    torch.testing.assert_close(path[3], b[0])
    torch.testing.assert_close(path[4], a[1])
    torch.testing.assert_close(path[1:3], slerp(a[0], b[0], [1 / 3, 2 / 3]))
    single = ddim_pipe.interpolate(a[0], b[0], num=4)
    torch.testing.assert_close(single, path[:4])
    images = ddim_pipe(batch_size=8, latents=path, num_inference_steps=2, output_type="pt").images
    assert images.shape == (8, 3, 8, 8)


@pytest.mark.parametrize(
    ("a", "b", "num", "match"),
    [
        (torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), 1, "num"),
        (torch.zeros(3, 8, 8), torch.zeros(1, 3, 8, 8), 4, "same shape"),
        (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), 4, r"\(3, 8, 8\)"),
        (torch.zeros(3, 8, 8, dtype=torch.long), torch.zeros(3, 8, 8), 4, "floating-point"),
    ],
)
def test_bad_interpolation_input_is_refused(ddim_pipe, a, b, num, match):
    with pytest.raises(ValueError, match=match):
        ddim_pipe.interpolate(a, b, num=num)
