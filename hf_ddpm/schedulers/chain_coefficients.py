"""The float64 coefficient tables of a sampling chain that steps from each scheduled timestep t to the next one, prev.

With the full chain (prev = t - 1) these are DDPM's tables; on a sub-sequence they are the same formulas with
β_t = 1 − ᾱ_t / ᾱ_prev, as diffusers and DDIM use them.
"""

import numpy as np
import torch

# Marks, in the `prev_timesteps` table, a timestep that is not in the schedule.
UNSCHEDULED = -2


def chain_coefficients(
    alphas_cumprod: torch.Tensor, timesteps: np.ndarray, final_alpha_cumprod: float = 1.0
) -> dict[str, torch.Tensor]:
    """
    The tables of the step t → prev for the descending schedule `timesteps`, each indexed by diffusers' t.

    Entries at timesteps outside the schedule are NaN (`prev_timesteps` holds `UNSCHEDULED` there).

    Args:
        alphas_cumprod (`torch.Tensor`): ᾱ_t for t = 0 .. T-1, float64.
        timesteps (`np.ndarray`): the schedule, int64, strictly descending, in [0, T).
        final_alpha_cumprod (`float`, defaults to `1.0`): ᾱ_prev after the last step (1: clean data).

    Returns:
        `dict[str, torch.Tensor]`: the tables, by the names the schedulers keep them under.
    """
    T = len(alphas_cumprod)
    prev = np.full(T, UNSCHEDULED, dtype=np.int64)
    prev[timesteps[:-1]] = timesteps[1:]
    prev[timesteps[-1]] = -1
    prev_timesteps = torch.from_numpy(prev)

    alphas_cumprod_prev = torch.full((T,), float("nan"), dtype=torch.float64)
    inner = prev_timesteps >= 0
    alphas_cumprod_prev[inner] = alphas_cumprod[prev_timesteps[inner]]  # ᾱ_prev
    alphas_cumprod_prev[prev_timesteps == -1] = final_alpha_cumprod
    alphas = alphas_cumprod / alphas_cumprod_prev  # α_t of the step (= 1 − β_t)
    betas = 1.0 - alphas  # β_t = 1 − ᾱ_t / ᾱ_prev  ("fixed large"; σ̂_t² of DDIM Table 1)
    posterior_variance = (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * betas  # β̃_t (DDPM eq. 7)

    # β̃ of the last step is 0, which would make the decoder (eq. 13) degenerate. As in the original DDPM code, the
    # reverse variance there is β̃ of the second-to-last step (the paper's β̃_2 at t = 1), for both fixed variances.
    final = int(timesteps[-1])
    floor = posterior_variance[int(timesteps[-2]) if len(timesteps) > 1 else final].clamp(min=1e-20)
    fixed_small_variance = posterior_variance.clone()
    fixed_small_variance[final] = floor
    fixed_large_variance = betas.clone()
    fixed_large_variance[final] = floor
    sigma_hat = betas.sqrt()
    sigma_hat[final] = 0.0  # no noise on the last step (z = 0, DDPM Algorithm 2)
    # Largest η for which DDIM eq. 12 stays defined: 1 − ᾱ_prev − η² β̃_t ≥ 0 (any η where β̃_t = 0).
    max_eta = torch.where(
        posterior_variance > 0,
        ((1.0 - alphas_cumprod_prev) / posterior_variance).sqrt(),
        torch.full_like(alphas_cumprod_prev, float("inf")),
    )
    max_eta[prev_timesteps == UNSCHEDULED] = float("nan")

    return {
        "prev_timesteps": prev_timesteps,  # prev: the next scheduled timestep, -1 after the last step
        "alphas_cumprod_prev": alphas_cumprod_prev,  # ᾱ_prev
        "sqrt_alphas_cumprod_prev": alphas_cumprod_prev.sqrt(),  # √ᾱ_prev  (DDIM eq. 12)
        "one_minus_alphas_cumprod_prev": 1.0 - alphas_cumprod_prev,  # 1 − ᾱ_prev  (DDIM eq. 12's direction)
        "sqrt_one_minus_alphas_cumprod_prev": (1.0 - alphas_cumprod_prev).sqrt(),  # √(1 − ᾱ_prev)
        "step_betas": betas,  # β_t
        "log_step_betas": betas.log(),  # log β_t: the upper end of "learned_range"
        "posterior_variance": posterior_variance,  # β̃_t = (1 − ᾱ_prev) / (1 − ᾱ_t) · β_t  (DDPM eq. 7)
        # μ̃_t = coef1 · x_0 + coef2 · x_t  (DDPM eq. 7)
        "posterior_mean_coef1": alphas_cumprod_prev.sqrt() * betas / (1.0 - alphas_cumprod),  # √ᾱ_prev β_t/(1−ᾱ_t)
        "posterior_mean_coef2": alphas.sqrt()
        * (1.0 - alphas_cumprod_prev)
        / (1.0 - alphas_cumprod),  # √α_t(1−ᾱ_prev)/(1−ᾱ_t)
        "fixed_small_variance": fixed_small_variance,  # σ_t² = β̃_t ("fixed small"), floored on the last step
        "posterior_log_variance_clipped": fixed_small_variance.log(),  # log β̃_t, floored on the last step
        "fixed_large_variance": fixed_large_variance,  # σ_t² = β_t ("fixed large"), floored on the last step
        "fixed_large_log_variance": fixed_large_variance.log(),
        "sigma_hat_table": sigma_hat,  # σ̂_t = √β_t (DDIM Table 1), 0 on the last step
        "max_eta": max_eta,
    }
