"""Every bad input to the schedulers is a ValueError/TypeError naming the argument, the value and what is allowed;
every configuration stock diffusers builds sensibly still builds, with stock's noise levels.

To cover a new bad input, add a row: (config or call, the exception type, words its message must contain).
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm import DDIMScheduler, DDPMScheduler

T = 10
X = torch.zeros(2, 1, 4, 4)
X_INT = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
SCHEDULERS = [DDPMScheduler, DDIMScheduler]

# (config, exception, words in the message): refused by both schedulers' __init__.
BAD_CONFIGS = [
    ({"num_train_timesteps": 0}, ValueError, ["`num_train_timesteps`", "int ≥ 1", "got 0"]),
    ({"num_train_timesteps": -5}, ValueError, ["`num_train_timesteps`", "got -5"]),
    ({"num_train_timesteps": 10.0}, ValueError, ["`num_train_timesteps`", "got 10.0"]),
    ({"num_train_timesteps": "10"}, ValueError, ["`num_train_timesteps`", "got '10'"]),
    ({"num_train_timesteps": True}, ValueError, ["`num_train_timesteps`", "got True"]),
    ({"beta_start": 0.5, "beta_end": 1.5}, ValueError, ["(0, 1)", "`beta_start`=0.5", "`beta_end`=1.5", "t = 500"]),
    ({"beta_start": 0.0, "beta_end": 0.0}, ValueError, ["(0, 1)", "`beta_start`=0.0", "β = 0 at t = 0"]),
    ({"beta_start": -0.1}, ValueError, ["(0, 1)", "`beta_start`=-0.1", "β = -0.1"]),
    ({"beta_end": 1.0}, ValueError, ["rescale_betas_zero_snr", "`beta_end`=1.0", "β = 1 at t = 999"]),
    ({"beta_start": float("nan")}, ValueError, ["(0, 1)", "`beta_start`=nan"]),
    ({"beta_start": "0.1"}, TypeError, ["`beta_start`", "number", "'0.1'"]),
    ({"num_train_timesteps": T, "trained_betas": [0.1] * 3}, ValueError, ["`trained_betas`", "10 values", "(3,)"]),
    ({"num_train_timesteps": 3, "trained_betas": [[0.1] * 3]}, ValueError, ["`trained_betas`", "1-d", "(1, 3)"]),
    ({"num_train_timesteps": 3, "trained_betas": [-0.1, 0.1, 0.2]}, ValueError, ["`trained_betas`", "β = -0.1"]),
    ({"num_train_timesteps": 3, "trained_betas": [0.0] * 3}, ValueError, ["`trained_betas`", "(0, 1)", "β = 0"]),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, 1.0, 0.2]}, ValueError, ["`trained_betas`", "β = 1 at t = 1"]),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, float("nan"), 0.2]}, ValueError, ["`trained_betas`", "nan"]),
    ({"num_train_timesteps": 3, "trained_betas": "abc"}, TypeError, ["`trained_betas`", "numbers", "str"]),
    (
        {"num_train_timesteps": 2000, "trained_betas": [0.9] * 2000},
        ValueError,
        ["ᾱ_t", "underflow", "`trained_betas`"],
    ),
    ({"steps_offset": -1}, ValueError, ["`steps_offset`", "int ≥ 0", "-1"]),
]


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
@pytest.mark.parametrize(("config", "error", "words"), BAD_CONFIGS, ids=[str(row[0])[:60] for row in BAD_CONFIGS])
def test_bad_config_is_refused_naming_argument_value_and_allowed(scheduler_class, config, error, words):
    with pytest.raises(error) as raised:
        scheduler_class(**config)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def _ddim_on_schedule(**config) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=T, **config)
    scheduler.set_timesteps(5)  # timesteps 8, 6, 4, 2, 0
    return scheduler


# (id, scheduler classes, call(scheduler), exception, words in the message). Schedulers have T = 10 and the full
# chain set, unless the call sets its own.
BAD_CALLS = [
    ("add_noise integer sample", SCHEDULERS, lambda s: s.add_noise(X_INT, X, 3), TypeError,
     ["`original_samples`", "floating-point", "torch.int64"]),
    ("add_noise integer noise", SCHEDULERS, lambda s: s.add_noise(X, X_INT, 3), TypeError, ["`noise`", "torch.int64"]),
    ("add_noise numpy sample", SCHEDULERS, lambda s: s.add_noise(X.numpy(), X, 3), TypeError,
     ["`original_samples`", "ndarray"]),
    ("add_noise noise not broadcasting", SCHEDULERS, lambda s: s.add_noise(X, torch.zeros(2, 1, 4, 5), 3), ValueError,
     ["`noise`", "(2, 1, 4, 5)", "`original_samples`", "(2, 1, 4, 4)"]),
    ("add_noise float timesteps", SCHEDULERS, lambda s: s.add_noise(X, X, torch.tensor([3.0, 4.0])), ValueError,
     ["`timesteps`", "integer tensor", "torch.float32", ".long()"]),
    ("add_noise non-integer float timesteps", SCHEDULERS, lambda s: s.add_noise(X, X, torch.tensor([3.5, 4.0])),
     ValueError, ["`timesteps`", "torch.float32"]),
    ("add_noise Python float timestep", SCHEDULERS, lambda s: s.add_noise(X, X, 3.0), ValueError,
     ["`timesteps`", "int", "float"]),
    ("add_noise bool timesteps", SCHEDULERS, lambda s: s.add_noise(X, X, torch.tensor([True, False])), ValueError,
     ["`timesteps`", "torch.bool"]),
    ("add_noise timestep T", SCHEDULERS, lambda s: s.add_noise(X, X, T), ValueError, ["`timesteps`", "[0, 10)", "10"]),
    ("get_velocity integer noise", SCHEDULERS, lambda s: s.get_velocity(X, X_INT, 3), TypeError, ["`noise`", "int64"]),
    ("predict_original_sample integer output", SCHEDULERS, lambda s: s.predict_original_sample(X_INT, X, 3),
     TypeError, ["`model_output`", "int64"]),
    ("predict_noise integer sample", SCHEDULERS, lambda s: s.predict_noise(X, X_INT, 3), TypeError,
     ["`sample`", "int64"]),
    ("step integer model_output", SCHEDULERS, lambda s: s.step(X_INT, 5, X), TypeError, ["`model_output`", "int64"]),
    ("step integer sample", SCHEDULERS, lambda s: s.step(X, 5, X_INT), TypeError, ["`sample`", "int64"]),
    ("step float timestep", SCHEDULERS, lambda s: s.step(X, torch.tensor(5.0), X), ValueError,
     ["`timestep`", "torch.float32"]),
    ("step shape mismatch", SCHEDULERS, lambda s: s.step(torch.zeros(2, 1, 4, 5), 5, X), ValueError,
     ["`model_output`", "(2, 1, 4, 5)"]),
    ("step unscheduled timestep", [DDIMScheduler], lambda s: _ddim_on_schedule().step(X, 5, X), ValueError,
     ["`timestep`=5", "not in the set schedule"]),
    ("set_timesteps 0", SCHEDULERS, lambda s: s.set_timesteps(0), ValueError, ["`num_inference_steps`", "[1, 10]"]),
    ("set_timesteps -1", SCHEDULERS, lambda s: s.set_timesteps(-1), ValueError, ["`num_inference_steps`", "-1"]),
    ("set_timesteps above T", SCHEDULERS, lambda s: s.set_timesteps(T + 1), ValueError,
     ["`num_inference_steps`", "[1, 10]", "11"]),
    ("q_posterior integer x0", [DDPMScheduler], lambda s: s.q_posterior_mean_variance(X_INT, X, 5), TypeError,
     ["`original_sample`", "int64"]),
    ("p_mean_variance integer output", [DDPMScheduler], lambda s: s.p_mean_variance(X_INT, X, 5), TypeError,
     ["`model_output`", "int64"]),
    ("model_variance integer sample", [DDPMScheduler], lambda s: s.model_variance(5, X_INT), TypeError,
     ["`sample`", "int64"]),
    ("prior_kl integer x0", [DDPMScheduler], lambda s: s.prior_kl(X_INT), TypeError, ["`original_sample`", "int64"]),
    ("vlb_terms integer x0", [DDPMScheduler], lambda s: s.vlb_terms(X, X_INT, X, 5), TypeError,
     ["`original_sample`", "int64"]),
    ("learned variance integer output", [DDPMScheduler],
     lambda s: DDPMScheduler(num_train_timesteps=T, variance_type="learned_range").step(
         torch.zeros(2, 2, 4, 4, dtype=torch.int64), 5, X), TypeError, ["`model_output`", "int64"]),
    ("ddim eta NaN", [DDIMScheduler], lambda s: _ddim_on_schedule().step(X, 8, X, eta=float("nan")), ValueError,
     ["`eta`", "finite number ≥ 0", "nan"]),
    ("ddim eta negative", [DDIMScheduler], lambda s: _ddim_on_schedule().step(X, 8, X, eta=-0.5), ValueError,
     ["`eta`", "≥ 0", "-0.5"]),
    ("ddim eta string", [DDIMScheduler], lambda s: _ddim_on_schedule().step(X, 8, X, eta="1"), ValueError,
     ["`eta`", "'1'"]),
    ("ddim integer variance_noise", [DDIMScheduler],
     lambda s: _ddim_on_schedule().step(X, 8, X, eta=1.0, variance_noise=X_INT), TypeError,
     ["`variance_noise`", "int64"]),
    ("ddim sigma integer like", [DDIMScheduler], lambda s: _ddim_on_schedule().sigma(8, like=X_INT), TypeError,
     ["`like`", "int64"]),
    ("ddim next_timestep float", [DDIMScheduler], lambda s: _ddim_on_schedule().next_timestep(torch.tensor(4.0)),
     ValueError, ["`timestep`", "torch.float32"]),
    ("ddim inversion integer sample", [DDIMScheduler], lambda s: _ddim_on_schedule().inversion_step(X, 8, X_INT),
     TypeError, ["`sample`", "int64"]),
    ("zero-SNR ε-prediction at T", SCHEDULERS,
     lambda s: type(s)(num_train_timesteps=T, rescale_betas_zero_snr=True).step(X, T - 1, X), ValueError,
     ["`timestep`=9", "ᾱ_t = 0", "rescale_betas_zero_snr", "v_prediction"]),
]  # fmt: skip


def _call_rows():
    for name, classes, call, error, words in BAD_CALLS:
        for scheduler_class in classes:
            yield pytest.param(scheduler_class, call, error, words, id=f"{scheduler_class.__name__}: {name}")


@pytest.mark.parametrize(("scheduler_class", "call", "error", "words"), list(_call_rows()))
def test_bad_call_is_refused_naming_argument_value_and_allowed(scheduler_class, call, error, words):
    with pytest.raises(error) as raised:
        call(scheduler_class(num_train_timesteps=T))
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_step_and_add_noise_agree_on_timestep_types(scheduler_class):
    """Both take ints and integer tensors of any width and refuse floating ones, integral or not."""
    scheduler = scheduler_class(num_train_timesteps=T, clip_sample=False)
    expected = scheduler.add_noise(X + 1, X, 4)
    for timestep in (4, np.int64(4), torch.tensor(4), torch.tensor(4, dtype=torch.int32), torch.tensor([4, 4])):
        torch.testing.assert_close(scheduler.add_noise(X + 1, X, timestep), expected)
        scheduler.step(X, timestep, X + 1)
    for timestep in (4.0, torch.tensor(4.0), torch.tensor([4.0, 4.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="`timesteps`"):
            scheduler.add_noise(X + 1, X, timestep)
        with pytest.raises(ValueError, match="`timestep`"):
            scheduler.step(X, timestep, X + 1)


def test_ddim_eta_accepts_numpy_reals_like_floats():
    scheduler = _ddim_on_schedule(clip_sample=False)
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    expected = scheduler.step(X, 8, X + 1, eta=0.5, variance_noise=noise).prev_sample
    actual = scheduler.step(X, 8, X + 1, eta=np.float32(0.5), variance_noise=noise).prev_sample
    torch.testing.assert_close(actual, expected)


# Configurations stock diffusers builds sensibly: ours must build them too, with stock's ᾱ_t.
TRAINED_BETAS = np.linspace(1e-4, 0.02, 1000)
SHARED_VALID_CONFIGS = [
    *({"beta_schedule": schedule} for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2")),
    *({"beta_schedule": s, "rescale_betas_zero_snr": True} for s in ("linear", "scaled_linear", "squaredcos_cap_v2")),
    {"trained_betas": TRAINED_BETAS.tolist()},
    {"trained_betas": TRAINED_BETAS},
    {"trained_betas": TRAINED_BETAS, "rescale_betas_zero_snr": True},
    {"steps_offset": 1},
    {"num_train_timesteps": 1},
    {"num_train_timesteps": np.int64(50)},
]
DDIM_VALID_CONFIGS = [*SHARED_VALID_CONFIGS, {"set_alpha_to_one": False}]
DDPM_VALID_CONFIGS = [
    *SHARED_VALID_CONFIGS,
    *({"beta_schedule": schedule, "rescale_betas_zero_snr": zsnr} for schedule in ("sigmoid", "laplace")
      for zsnr in (False, True)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ours", "stock", "config"),
    [(DDPMScheduler, diffusers.DDPMScheduler, config) for config in DDPM_VALID_CONFIGS]
    + [(DDIMScheduler, diffusers.DDIMScheduler, config) for config in DDIM_VALID_CONFIGS],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value)[:60],
)
def test_every_stock_valid_config_builds_with_stock_noise_levels(ours, stock, config):
    scheduler = ours(**config)
    torch.testing.assert_close(scheduler.alphas_cumprod, stock(**config).alphas_cumprod)
    if config.get("rescale_betas_zero_snr"):
        assert float(scheduler.alphas_cumprod_f64[-1]) == 0.0  # zero terminal SNR: ᾱ_T = 0 is kept, not refused
