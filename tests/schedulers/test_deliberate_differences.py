"""Where hf_ddpm's schedulers deliberately behave unlike diffusers 0.42: each test pins both behaviours, so a change
on either side shows up here (docs/diffusers_differences.md)."""

import diffusers
import pytest
import torch

from hf_ddpm import DDIMScheduler, DDPMScheduler, DDPMUNet2DModel

SHAPE = (2, 3, 8, 8)


def _pair():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)


def test_ddim_step_off_the_schedule_is_refused_where_diffusers_guesses_the_previous_timestep():
    sample, model_output = _pair()
    stock = diffusers.DDIMScheduler()
    stock.set_timesteps(50)
    assert 990 not in stock.timesteps.tolist()
    # diffusers steps from 990 to 990 - T/S = 970, a timestep that is not in its schedule either.
    assert torch.isfinite(stock.step(model_output, 990, sample).prev_sample).all()

    ours = DDIMScheduler()
    ours.set_timesteps(50)
    with pytest.raises(ValueError, match="not in the set schedule"):
        ours.step(model_output, 990, sample)


def test_unknown_variance_type_is_refused_where_diffusers_falls_back_to_fixed_small():
    sample, model_output = _pair()

    def first_step(scheduler):
        scheduler.set_timesteps(10)
        t = scheduler.timesteps[0]
        return scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(1)).prev_sample

    silent = first_step(diffusers.DDPMScheduler(variance_type="fixed_smal"))  # a typo
    assert torch.equal(silent, first_step(diffusers.DDPMScheduler(variance_type="fixed_small")))

    with pytest.raises(ValueError, match="variance_type"):
        DDPMScheduler(variance_type="fixed_smal")


def _ddpm_chain(scheduler, unet, steps=50):
    """A `steps`-step DDPM loop of an untrained UNet, unclipped: x̂_0 is far outside [-1, 1], nothing bounds x_t."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return x


def test_float64_chain_differs_from_diffusers_float32_step_by_rounding_only():
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny").eval()
    ours = _ddpm_chain(DDPMScheduler(clip_sample=False), unet)
    stock = _ddpm_chain(diffusers.DDPMScheduler(clip_sample=False), unet)
    # Same algorithm, same noise: diffusers recomputes β_t = 1 − ᾱ_t/ᾱ_prev in float32 inside each step, ours reads
    # float64 tables. Measured: max |Δ| 2.7e-3 on values up to 6e2 (the untrained chain grows), i.e. ~5e-6 relative.
    scale = stock.abs().max()
    difference = (ours - stock).abs().max()
    assert difference > 0
    assert difference / scale < 1e-4
