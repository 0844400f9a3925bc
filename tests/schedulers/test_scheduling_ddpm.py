"""hf_ddpm.DDPMScheduler: drop-in equivalence with stock diffusers, the paper's equations, the VLB terms, errors."""

import math

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm.schedulers.gaussian_likelihood import discretized_gaussian_log_likelihood, normal_kl
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

SHAPE = (4, 3, 8, 8)


def _model(oracle, scheduler, prediction_type="epsilon", variance_type="fixed_small"):
    """The exact predictor for `oracle`, with variance channels for the learned types (deterministic in x)."""

    def model(x, t):
        out = oracle.model_output(x, float(scheduler.alphas_cumprod_f64[int(t)]), prediction_type)
        if variance_type == "learned_range":
            return torch.cat([out, 0.9 * torch.tanh(x)], dim=1)  # v in (-1, 1)
        if variance_type == "learned":
            return torch.cat([out, 1e-3 * (1 + torch.sigmoid(x))], dim=1)  # σ² > 0
        return out

    return model


def _lockstep(ours, theirs, model, seed=0, shape=SHAPE):
    """Runs both schedulers over ours.timesteps from the same x_T and per-step generator seeds; returns the largest
    |Δ prev_sample| over all steps."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    y = x.clone()
    assert torch.equal(ours.timesteps, theirs.timesteps)
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        x = ours.step(model(x, t), t, x, generator=torch.Generator().manual_seed(seed + 1 + i)).prev_sample
        y = theirs.step(model(y, t), t, y, generator=torch.Generator().manual_seed(seed + 1 + i)).prev_sample
        worst = max(worst, (x - y).abs().max().item())
    assert torch.isfinite(x).all()
    return worst


def _float64_reference(betas, timesteps, model, clip, seed=0, shape=SHAPE):
    """DDPM Algorithm 2 with fixed-small variance written out from eq. 7 and 15 in float64 (an oracle independent of
    both schedulers' tables), drawing the same float32 noise as `_lockstep`. Returns the final sample."""
    alpha_bar = torch.cumprod(1 - betas.double(), dim=0)
    timesteps = [int(t) for t in timesteps]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).double()
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t, a_prev = alpha_bar[t], (alpha_bar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
        beta = 1 - a_t / a_prev
        x0 = (x - (1 - a_t).sqrt() * model(x, t)) / a_t.sqrt()
        x0 = x0.clamp(-1, 1) if clip else x0
        mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1 + i)).double()
        x = mean + ((1 - a_prev) / (1 - a_t) * beta).sqrt() * noise if prev >= 0 else mean
    return x


def _pair(**config):
    ours = DDPMScheduler(**config)
    return ours, diffusers.DDPMScheduler.from_config(ours.config)


# ----------------------------------------------------------------------------------------------------------------------
# Drop-in contract against stock diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(
    "x0_handling",
    [{"clip_sample": True}, {"clip_sample": False}, {"clip_sample": False, "thresholding": True}],
    ids=["clip", "noclip", "threshold"],
)
def test_step_matches_diffusers_across_prediction_types_and_clipping(gaussian, prediction_type, x0_handling):
    ours, theirs = _pair(prediction_type=prediction_type, **x0_handling)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(50)
    # Measured max over these 9 configurations: 7.6e-6 (most of it the parent's float32 rounding on the last steps).
    assert _lockstep(ours, theirs, _model(gaussian, ours, prediction_type)) <= 1e-5


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
)
def test_step_matches_diffusers_across_variance_types(gaussian, variance_type):
    ours, theirs = _pair(variance_type=variance_type, clip_sample=False)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(50)
    # Measured max over the 5 types: 8.6e-6.
    assert _lockstep(ours, theirs, _model(gaussian, ours, variance_type=variance_type)) <= 1e-5


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_step_matches_diffusers_across_beta_schedules(gaussian, beta_schedule):
    ours, theirs = _pair(beta_schedule=beta_schedule, timestep_spacing="trailing")
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(40)
    assert _lockstep(ours, theirs, _model(gaussian, ours)) <= 1e-5  # measured max: 4.5e-6


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_inference_steps", [7, 50])
def test_step_matches_diffusers_across_timestep_spacings(gaussian, spacing, num_inference_steps):
    ours, theirs = _pair(timestep_spacing=spacing)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(num_inference_steps)
    assert _lockstep(ours, theirs, _model(gaussian, ours)) <= 1e-5  # measured max: 6.4e-6


def test_step_matches_diffusers_with_custom_timesteps(gaussian):
    custom = [980, 900, 700, 421, 300, 130, 50, 20, 0]
    ours, theirs = _pair()
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(timesteps=custom)
    assert ours.timesteps.tolist() == custom
    assert _lockstep(ours, theirs, _model(gaussian, ours)) <= 1e-5  # measured: 4.0e-6


def test_full_chain_matches_diffusers_without_set_timesteps(gaussian):
    # Every one of T steps, never calling set_timesteps (the training-time default), at T = 20 (β from 0.01 to 0.2).
    ours, theirs = _pair(num_train_timesteps=20, beta_start=0.01, beta_end=0.2)
    assert len(ours.timesteps) == 20
    assert _lockstep(ours, theirs, _model(gaussian, ours)) <= 1e-5  # measured: 1.1e-6


@pytest.mark.parametrize(
    ("config", "timesteps"),
    [
        ({}, [980, 900, 700, 421, 300, 130, 50, 12, 3, 0]),  # fine last steps
        ({"num_train_timesteps": 100, "beta_end": 0.2}, None),  # every step of a T = 100 chain
        pytest.param({"clip_sample": False}, None, marks=pytest.mark.slow),  # all steps of the paper's T = 1000
        pytest.param({"clip_sample": True}, None, marks=pytest.mark.slow),
    ],
    ids=["custom-fine-end", "full-T100", "full-T1000-noclip", "full-T1000-clip"],
)
def test_small_last_steps_are_closer_to_float64_than_diffusers(gaussian, config, timesteps):
    """
    Where the last steps are small, the parent's float32 β_t = 1 − ᾱ_t / ᾱ_prev cancels (β ≈ 1e-4 keeps ~3 digits)
    and its samples drift from the exact ones; ours gathers float64 tables. Against the float64 oracle with the same
    noise, measured (ours / parent, max |Δ| of the final sample): custom-fine-end 2.3e-7 / 3.3e-5, full-T100
    4.3e-7 / 1.3e-5, full-T1000 1.7e-6 / 2.3e-5 (no clip) and 1.2e-6 / 3.5e-5 (clip). This is why the ≤ 1e-5
    drop-in checks above use schedules whose last step is not tiny: there the parent itself is off by more.
    """
    ours, theirs = _pair(**config)
    if timesteps is not None:
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(timesteps=timesteps)
    model = _model(gaussian, ours)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for i, t in enumerate(ours.timesteps):
        x = ours.step(model(x, t), t, x, generator=torch.Generator().manual_seed(1 + i)).prev_sample
        y = theirs.step(model(y, t), t, y, generator=torch.Generator().manual_seed(1 + i)).prev_sample
    reference = _float64_reference(ours.betas, ours.timesteps, model, clip=ours.config.clip_sample)
    ours_error, parent_error = (x - reference).abs().max().item(), (y - reference).abs().max().item()
    assert ours_error < 4e-6
    assert ours_error < parent_error / 3


def test_from_config_swaps_with_diffusers_both_ways():
    ours = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", prediction_type="v_prediction"
    )
    stock = diffusers.DDPMScheduler.from_config(ours.config)
    back = DDPMScheduler.from_config(stock.config)
    assert type(back) is DDPMScheduler
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }
    assert torch.equal(back.betas, stock.betas)


def test_add_noise_and_velocity_match_diffusers():
    ours, theirs = _pair(beta_schedule="scaled_linear")
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 17, 500, 999])
    # The parent's float32 ᾱ (a float32 cumprod) differs from float64 by up to ~1e-6 relative; measured ≤ 2.9e-6.
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Where the parent is wrong


def test_fixed_large_log_is_log_beta_not_nan(gaussian):
    ours = DDPMScheduler(variance_type="fixed_large_log", clip_sample=False)
    stock = diffusers.DDPMScheduler.from_config(ours.config)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = _model(gaussian, ours)(x, 500)
    assert torch.isnan(stock.step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample).all()
    # Ours is the "fixed_large" step: σ_t² = β_t, log σ_t² = log β_t.
    large = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    got = ours.step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    want = large.step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    _, log_variance = ours.model_variance(500, x)
    assert torch.allclose(log_variance, torch.tensor(math.log(ours.betas[500].item())), atol=1e-6)


def test_step_outside_the_schedule_is_a_value_error():
    scheduler = DDPMScheduler()
    scheduler.set_timesteps(10)  # leading: 900, 800, ..., 0
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="not in the set schedule"):
        scheduler.step(x, 901, x)
    with pytest.raises(ValueError, match="not in the set schedule"):
        scheduler.step(x, torch.tensor(5), x)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        scheduler.step(x, 1000, x)
    with pytest.raises(ValueError, match="not in the set schedule"):
        scheduler.previous_timestep(3)


def test_last_step_of_a_schedule_ending_above_zero_adds_no_noise(gaussian):
    # Algorithm 2: z = 0 on the last step. Diffusers adds β-sized noise there when the schedule ends at t > 0.
    scheduler = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    scheduler.set_timesteps(timesteps=[600, 300, 10])
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = _model(gaussian, scheduler)(x, 10)
    a = scheduler.step(out, 10, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = scheduler.step(out, 10, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)
    assert scheduler.previous_timestep(10) == -1


# ----------------------------------------------------------------------------------------------------------------------
# The paper's equations against hand-computed values


@pytest.mark.parametrize("t", [1, 2, 500, 999])
def test_posterior_coefficients_match_eq_7_by_hand(t):
    scheduler = DDPMScheduler()
    betas = scheduler.betas.numpy().astype(np.float64)  # the paper's linear schedule, 1e-4 .. 0.02
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    alpha_bar = np.cumprod(1 - betas)
    a_t, a_prev, b_t = alpha_bar[t], alpha_bar[t - 1], betas[t]
    assert scheduler.posterior_variance[t].item() == pytest.approx((1 - a_prev) / (1 - a_t) * b_t, rel=1e-12)
    assert scheduler.posterior_mean_coef1[t].item() == pytest.approx(math.sqrt(a_prev) * b_t / (1 - a_t), rel=1e-12)
    assert scheduler.posterior_mean_coef2[t].item() == pytest.approx(
        math.sqrt(1 - b_t) * (1 - a_prev) / (1 - a_t), rel=1e-12
    )


@pytest.mark.parametrize("t", [1, 40, 999])
def test_q_posterior_is_the_gaussian_conditional_of_the_forward_process(t):
    """Independent derivation: x_{t-1} | x_0 ~ N(√ᾱ_{t-1} x_0, 1−ᾱ_{t-1}), x_t | x_{t-1} ~ N(√α_t x_{t-1}, β_t);
    Bayes' rule gives precision 1/(1−ᾱ_{t-1}) + α_t/β_t and mean var·(√ᾱ_{t-1} x_0/(1−ᾱ_{t-1}) + √α_t x_t/β_t)."""
    scheduler = DDPMScheduler()
    x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    beta = scheduler.betas[t].double()
    a_prev = scheduler.alphas_cumprod_f64[t - 1]
    var = 1 / (1 / (1 - a_prev) + (1 - beta) / beta)
    mean = var * (a_prev.sqrt() * x0 / (1 - a_prev) + (1 - beta).sqrt() * xt / beta)
    got_mean, got_var, got_log_var = scheduler.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(got_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_var, var.expand_as(xt), rtol=1e-10, atol=0)
    torch.testing.assert_close(got_log_var, var.log().expand_as(xt), rtol=1e-10, atol=0)


def test_eq_4_eq_15_and_prediction_types_invert_each_other():
    scheduler = DDPMScheduler()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([3, 250, 600, 999])
    xt = scheduler.add_noise(x0, eps, t)
    a = scheduler.alphas_cumprod_f64[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)  # eq. 4 by hand
    v = scheduler.get_velocity(x0, eps, t)
    for prediction_type, output in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        scheduler.register_to_config(prediction_type=prediction_type)
        torch.testing.assert_close(scheduler.predict_original_sample(output, xt, t), x0)  # eq. 15 and its forms
        torch.testing.assert_close(scheduler.predict_noise(output, xt, t), eps)


def test_mu_theta_is_eq_11_for_epsilon_prediction():
    scheduler = DDPMScheduler(clip_sample=False)
    xt = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (1, 300, 999):
        beta, a = scheduler.betas[t].double(), scheduler.alphas_cumprod_f64[t]
        mean = (xt - beta / (1 - a).sqrt() * eps) / (1 - beta).sqrt()  # eq. 11
        torch.testing.assert_close(scheduler.p_mean_variance(eps, xt, t).mean, mean)


def test_reverse_variances_and_the_decoder_convention():
    small = DDPMScheduler(variance_type="fixed_small")
    large = DDPMScheduler(variance_type="fixed_large")
    x = torch.zeros(1, 1, dtype=torch.float64)
    beta_tilde_2 = small.posterior_variance[1].item()  # β̃ of the second step (paper t = 2)
    for scheduler in (small, large):
        variance, log_variance = scheduler.model_variance(0, x)  # paper t = 1: never degenerate
        assert variance.item() == pytest.approx(beta_tilde_2, rel=1e-12)
        assert log_variance.item() == pytest.approx(math.log(beta_tilde_2), rel=1e-12)
    assert small.model_variance(700, x)[0].item() == pytest.approx(small.posterior_variance[700].item())
    assert large.model_variance(700, x)[0].item() == pytest.approx(large.betas[700].item(), rel=1e-6)
    # learned_range: v = -1 gives β̃_t, v = +1 gives β_t (Nichol & Dhariwal eq. 15)
    ranged = DDPMScheduler(variance_type="learned_range")
    for v, want in [(-1.0, small.posterior_variance[700].item()), (1.0, ranged.betas[700].item())]:
        variance, _ = ranged.model_variance(700, x, predicted_variance=torch.full_like(x, v))
        assert variance.item() == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Variational-bound terms


def test_normal_kl_matches_torch_distributions_and_is_zero_for_identical_gaussians():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0])
    lv1, lv2 = torch.tensor([-2.0, 0.5]), torch.tensor([-1.0, 0.0])
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), want)
    assert torch.equal(normal_kl(m1, lv1, m1, lv1), torch.zeros(2))


def test_posterior_kl_is_zero_when_the_model_predicts_the_true_noise():
    scheduler = DDPMScheduler(variance_type="fixed_small")
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    xt = scheduler.add_noise(x0, eps, t)
    kl = scheduler.posterior_kl(eps, x0, xt, t)
    assert kl.shape == (4,)
    assert kl.abs().max().item() < 1e-8
    assert (scheduler.posterior_kl(eps + 0.1, x0, xt, t) > 1e-3).all()


def test_prior_kl_matches_the_closed_form():
    scheduler = DDPMScheduler()
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    a = scheduler.alphas_cumprod_f64[-1]
    want = 0.5 * (a * x0**2 + (1 - a) - 1 - torch.log(1 - a)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(scheduler.prior_kl(x0), want)
    # The paper's schedule makes L_T negligible (about 1e-5 nats per dimension, as the paper reports)
    assert scheduler.prior_kl(x0).max().item() / 48 < 1e-4


@pytest.mark.parametrize("log_scale", [-5.0, -2.0, 0.0])
def test_discretized_gaussian_probabilities_sum_to_one_over_256_bins(log_scale):
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean in (-1.0, 0.0, 0.37, 1.2):
        log_p = discretized_gaussian_log_likelihood(levels, torch.tensor(mean), torch.tensor(log_scale))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-8)


def test_decoder_nll_is_the_discretized_gaussian_at_t0_and_sums_to_one():
    scheduler = DDPMScheduler(clip_sample=False)
    x1 = torch.full((256, 1), 0.2, dtype=torch.float64)
    eps = torch.full_like(x1, 0.3)
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64).view(256, 1)
    nll = scheduler.decoder_nll(eps, levels, x1)  # one example per level
    assert (-nll).exp().sum().item() == pytest.approx(1.0, abs=1e-8)
    # eq. 13 by hand at one level: N(μ_θ, β̃_2) mass of [x − 1/255, x + 1/255]
    mu = scheduler.p_mean_variance(eps[:1], x1[:1], 0).mean.item()
    std = math.sqrt(scheduler.posterior_variance[1].item())
    k = int(torch.argmin((levels.flatten() - mu).abs()))  # the level nearest μ_θ: an inner bin with real mass
    x = levels[k].item()
    mass = 0.5 * (math.erf((x + 1 / 255 - mu) / (std * 2**0.5)) - math.erf((x - 1 / 255 - mu) / (std * 2**0.5)))
    assert 0 < k < 255 and mass > 0.05
    assert nll[k].item() == pytest.approx(-math.log(mass), rel=1e-9)


def _vlb_term_by_hand(betas, x0, xt, eps_hat, t):
    """L_0 (eq. 13) or L_{t-1} (eq. 5) of one example with fixed-small σ_t² and ε-prediction, from the papers' formulas
    in float64: μ̃_t and β̃_t of eq. 7, μ_θ of eq. 11, the KL of two Gaussians, the discretized Gaussian's bin mass."""
    beta = betas.double()
    alpha_bar = torch.cumprod(1 - beta, dim=0)
    mu_theta = (xt - beta[t] / (1 - alpha_bar[t]).sqrt() * eps_hat) / (1 - beta[t]).sqrt()  # eq. 11
    if t == 0:
        # σ_1² is β̃ of the second step; level x owns [x − 1/255, x + 1/255], the outer bins reach ±∞.
        std = ((1 - alpha_bar[0]) / (1 - alpha_bar[1]) * beta[1]).sqrt()
        normal = torch.distributions.Normal(mu_theta, std)
        upper = torch.where(x0 > 0.999, torch.ones_like(x0), normal.cdf(x0 + 1 / 255))
        lower = torch.where(x0 < -0.999, torch.zeros_like(x0), normal.cdf(x0 - 1 / 255))
        return -(upper - lower).log().sum()
    a_t, a_prev = alpha_bar[t], alpha_bar[t - 1]
    posterior_mean = a_prev.sqrt() * beta[t] / (1 - a_t) * x0 + (1 - beta[t]).sqrt() * (1 - a_prev) / (1 - a_t) * xt
    beta_tilde = (1 - a_prev) / (1 - a_t) * beta[t]  # q's and p_θ's variance: the KL is the mean term alone
    return ((posterior_mean - mu_theta) ** 2 / (2 * beta_tilde)).sum()


def test_vlb_terms_are_the_decoder_nll_at_t0_and_the_posterior_kl_elsewhere_by_hand():
    scheduler = DDPMScheduler(clip_sample=False)
    x0 = torch.randint(0, 256, (3, 2, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 127.5 - 1
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # the decoder's two outer bins, which reach ±∞
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 5, 999])
    xt = scheduler.add_noise(x0, eps, t)
    out = eps + 0.05
    want = torch.stack([_vlb_term_by_hand(scheduler.betas, x0[i], xt[i], out[i], int(t[i])) for i in range(3)])
    torch.testing.assert_close(scheduler.vlb_terms(out, x0, xt, t), want, rtol=1e-9, atol=0)
    for i in range(3):  # one int timestep: the same terms
        one = scheduler.vlb_terms(out[i : i + 1], x0[i : i + 1], xt[i : i + 1], int(t[i]))
        torch.testing.assert_close(one, want[i : i + 1], rtol=1e-9, atol=0)
    torch.testing.assert_close(scheduler.decoder_nll(out[:1], x0[:1], xt[:1]), want[:1], rtol=1e-9, atol=0)
    torch.testing.assert_close(scheduler.posterior_kl(out[1:], x0[1:], xt[1:], t[1:]), want[1:], rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("config", "argument"),
    [
        ({"timestep_spacing": "cubic"}, "timestep_spacing"),
        ({"prediction_type": "score"}, "prediction_type"),
        ({"variance_type": "huge"}, "variance_type"),
        ({"beta_schedule": "exponential"}, "beta_schedule"),
    ],
)
def test_unknown_options_are_value_errors_naming_argument_and_choices(config, argument):
    with pytest.raises(ValueError, match=rf"`{argument}` must be one of \(") as error:
        DDPMScheduler(**config)
    assert repr(next(iter(config.values()))) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_inference_steps": 0}, r"`num_inference_steps` must be in \[1, 1000\]"),
        ({"num_inference_steps": 1001}, r"`num_inference_steps` must be in \[1, 1000\]"),
        ({"timesteps": [10, 20]}, "strictly descending"),
        ({"timesteps": [20, 10, 10]}, "strictly descending"),
        ({"timesteps": [1000, 10]}, r"\[0, 1000\)"),
        ({"timesteps": [10, -1]}, r"\[0, 1000\)"),
        ({"timesteps": []}, "non-empty"),
        ({}, "exactly one of"),
        ({"num_inference_steps": 10, "timesteps": [5, 0]}, "exactly one of"),
    ],
)
def test_bad_schedules_are_value_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        DDPMScheduler().set_timesteps(**kwargs)


def test_leading_steps_offset_past_the_end_is_a_value_error():
    scheduler = DDPMScheduler(steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset"):
        scheduler.set_timesteps(1000)


def test_mismatched_shapes_are_value_errors():
    scheduler = DDPMScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(torch.zeros(4, 3, 8, 7), 10, x)
    with pytest.raises(ValueError, match="noise"):
        scheduler.add_noise(x, torch.zeros(4, 3, 8, 7), 10)
    with pytest.raises(ValueError, match="batch size"):
        scheduler.add_noise(x, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="2×3"):
        DDPMScheduler(variance_type="learned_range").step(x, 10, x)


# ----------------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, devices, batches of timesteps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_step_and_add_noise_keep_the_sample_dtype(dtype, gaussian):
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    for t in scheduler.timesteps:
        g = torch.Generator().manual_seed(int(t))
        x = scheduler.step(_model(gaussian, scheduler)(x, t), t, x, generator=g).prev_sample
        assert x.dtype == dtype
    assert torch.isfinite(x).all()
    assert scheduler.add_noise(x, x, 5).dtype == dtype
    # The samples still follow N(0.3, 0.5²) roughly (96 values): half precision did not break the chain.
    assert abs(x.double().mean().item() - 0.3) < 0.2 and abs(x.double().std().item() - 0.5) < 0.2


@pytest.mark.parametrize("shape", [(5, 2), (2, 3, 16), (2, 1, 4, 4, 4)])
def test_any_sample_shape_and_per_example_timesteps(shape):
    scheduler = DDPMScheduler(clip_sample=False)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.arange(shape[0]) * 111 + 1
    batched = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(2)).prev_sample
    means = scheduler.p_mean_variance(eps, x, t).mean
    for i in range(shape[0]):
        # Each example's mean equals its own scalar-timestep computation; add_noise too.
        one = scheduler.p_mean_variance(eps[i : i + 1], x[i : i + 1], int(t[i])).mean
        torch.testing.assert_close(means[i : i + 1], one)
        torch.testing.assert_close(
            scheduler.add_noise(x, eps, t)[i : i + 1], scheduler.add_noise(x[i : i + 1], eps[i : i + 1], int(t[i]))
        )
    assert batched.shape == x.shape
    assert not torch.equal(batched, means)  # noise was added where t > 0


def test_per_example_last_step_gets_no_noise():
    scheduler = DDPMScheduler(clip_sample=False)
    x = torch.randn(2, 3, dtype=torch.float64)
    eps = torch.zeros_like(x)
    t = torch.tensor([0, 500])
    out = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(out[0], scheduler.p_mean_variance(eps, x, t).mean[0])


def test_a_new_schedule_replaces_the_tables_of_the_last_one():
    # Steps gather their tables through a per-device cache; after `set_timesteps` they must use the new chain.
    scheduler = DDPMScheduler(clip_sample=False)
    x0 = torch.full((2, 3), 0.4)
    eps = torch.tensor([[0.3, -1.0, 2.0], [0.1, 0.5, -0.2]])
    xt = scheduler.add_noise(x0, eps, 800)

    def posterior_mean_by_hand(prev):  # eq. 7 for the step 800 → prev; the exact ε gives x̂_0 = x_0
        a_t, a_prev = scheduler.alphas_cumprod_f64[800], scheduler.alphas_cumprod_f64[prev]
        beta = 1 - a_t / a_prev
        return (
            a_prev.sqrt() * beta / (1 - a_t) * x0.double() + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * xt.double()
        )

    scheduler.set_timesteps(5)  # leading: 800 → 600
    torch.testing.assert_close(scheduler.p_mean_variance(eps, xt, 800).mean, posterior_mean_by_hand(600).float())
    scheduler.set_timesteps(timesteps=[800, 300, 0])
    torch.testing.assert_close(scheduler.p_mean_variance(eps, xt, 800).mean, posterior_mean_by_hand(300).float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_matches_cpu(gaussian):
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(10, device="cuda")
    x = torch.randn(SHAPE, dtype=torch.float64)
    eps = _model(gaussian, scheduler)(x, 900)
    noise_free = scheduler.p_mean_variance(eps.cuda(), x.cuda(), scheduler.timesteps[0])
    cpu = scheduler.p_mean_variance(eps, x, 900)
    assert noise_free.mean.device.type == "cuda"
    torch.testing.assert_close(noise_free.mean.cpu(), cpu.mean)
    out = scheduler.step(eps.cuda().half(), scheduler.timesteps[0], x.cuda().half())
    assert out.prev_sample.dtype == torch.float16 and out.prev_sample.device.type == "cuda"
