"""The training objectives against closed forms: L_simple (eq. 14), the v target, and the hybrid loss's L_vlb."""

import math

import pytest
import torch
from diffusers import DDPMScheduler as StockDDPMScheduler

from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training.loss import diffusion_loss, training_target


def _batch(seed=0, shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(shape, generator=g) * 2 - 1
    noise = torch.randn(shape, generator=g)
    timesteps = torch.tensor([1, 10, 500, 999])
    return clean, noise, timesteps


def test_simple_loss_is_the_mean_squared_error_of_eq_14():
    scheduler = DDPMScheduler()
    clean, noise, t = _batch()
    noisy = scheduler.add_noise(clean, noise, t)
    # Eq. 4 by hand, from stock diffusers' ᾱ table: the loss sees the x_t the paper defines.
    alpha_bar = StockDDPMScheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise)
    error = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    losses = diffusion_loss(noise + error, scheduler, clean, noise, noisy, t)
    torch.testing.assert_close(losses["loss"], error.pow(2).mean())
    assert diffusion_loss(noise, scheduler, clean, noise, noisy, t)["loss"] == 0


def test_targets_for_each_prediction_type_match_their_closed_forms():
    clean, noise, t = _batch()
    alpha_bar = StockDDPMScheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(training_target(DDPMScheduler(prediction_type="epsilon"), clean, noise, t), noise)
    assert torch.equal(training_target(DDPMScheduler(prediction_type="sample"), clean, noise, t), clean)
    v = training_target(DDPMScheduler(prediction_type="v_prediction"), clean, noise, t)
    torch.testing.assert_close(v, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean)


def test_hybrid_loss_adds_lambda_T_times_the_gaussian_kl_in_bits_per_dim():
    # With the exact ε, p_θ's mean is the true posterior mean μ̃_t; learned_range with v = 1 gives σ_t² = β_t, so
    # L_{t-1} = KL(N(μ̃, β̃_t) ‖ N(μ̃, β_t)) = ½ (log(β_t/β̃_t) + β̃_t/β_t − 1) nats per dimension (t ≥ 1).
    scheduler = DDPMScheduler(variance_type="learned_range")
    clean, noise, t = _batch()
    noisy = scheduler.add_noise(clean, noise, t)
    output = torch.cat([noise, torch.ones_like(noise)], dim=1)
    losses = diffusion_loss(output, scheduler, clean, noise, noisy, t, loss_type="hybrid", vlb_weight=0.001)

    stock = StockDDPMScheduler()
    beta = stock.betas[t].double()
    alpha_bar, alpha_bar_prev = stock.alphas_cumprod[t].double(), stock.alphas_cumprod[t - 1].double()
    beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    kl_per_dim = 0.5 * (torch.log(beta / beta_tilde) + beta_tilde / beta - 1)
    expected_vlb = (kl_per_dim / math.log(2)).mean()
    assert losses["mse"] == 0
    torch.testing.assert_close(losses["vlb"].double(), expected_vlb, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["loss"].double(), 0.001 * 1000 * expected_vlb, rtol=1e-4, atol=1e-7)


def test_hybrid_loss_trains_the_variance_through_vlb_and_the_mean_through_l_simple_only():
    scheduler = DDPMScheduler(variance_type="learned_range")
    clean, noise, t = _batch()
    noisy = scheduler.add_noise(clean, noise, t)
    g = torch.Generator().manual_seed(2)
    output = torch.cat([noise + 0.3 * torch.randn(noise.shape, generator=g), torch.rand(noise.shape, generator=g)], 1)
    hybrid_input = output.clone().requires_grad_(True)
    diffusion_loss(hybrid_input, scheduler, clean, noise, noisy, t, loss_type="hybrid")["loss"].backward()
    simple_input = output[:, :3].clone().requires_grad_(True)
    torch.nn.functional.mse_loss(simple_input, noise).backward()
    # Stop-gradient: the prediction channels get exactly L_simple's gradient; the variance channels get L_vlb's.
    torch.testing.assert_close(hybrid_input.grad[:, :3], simple_input.grad)
    assert hybrid_input.grad[:, 3:].abs().sum() > 0


def test_hybrid_loss_needs_a_learned_variance():
    scheduler = DDPMScheduler()
    clean, noise, t = _batch()
    with pytest.raises(ValueError, match="loss_type 'hybrid' needs a scheduler with a learned variance_type"):
        diffusion_loss(noise, scheduler, clean, noise, clean, t, loss_type="hybrid")
    with pytest.raises(ValueError, match=r"loss_type must be one of \['simple', 'hybrid'\], got 'l1'"):
        diffusion_loss(noise, scheduler, clean, noise, clean, t, loss_type="l1")
