"""DDIM (Song et al. 2021) as a drop-in `diffusers.DDIMScheduler`: eq. 12 / 16 on the schedule's own timesteps.

Diffusers' timestep t (0 .. T-1) is the paper's t + 1 throughout.
"""

import math
import numbers
from typing import Any, Literal, get_args

import numpy as np
import torch
from diffusers import DDIMScheduler as DiffusersDDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .diffusion_chain import (
    DiffusionChainMixin,
    PredictionType,
    _is_integer,
    check_float_tensor,
    check_schedule_arguments,
)
from .timestep_spacing import TimestepSpacing

DDIMBetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
DDIM_BETA_SCHEDULES: tuple[str, ...] = get_args(DDIMBetaSchedule)  # the parent accepts fewer than DDPM's


def _check_eta(eta: Any) -> float:
    """η of DDIM eq. 16 as a float, after checking it is a finite number ≥ 0."""
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"`eta` must be a finite number ≥ 0 (0: DDIM, 1: DDPM's fixed small), got {eta!r}.")
    return float(eta)


class DDIMScheduler(DiffusionChainMixin, DiffusersDDIMScheduler):
    """
    DDIM's generalized sampler (eq. 12 with σ_t(η) of eq. 16), a drop-in for `diffusers.DDIMScheduler`.

    Same config keys and call signatures as the parent (extended with keywords); where the parent is right ("leading"
    spacing, "trailing" when S divides T, 0 ≤ η ≤ 1) the same generator gives the same `prev_sample`. Differs where
    the parent is wrong: the previous timestep is the next element of the scheduler's own `timesteps` for every
    spacing (the parent uses t − T // S). Adds `"quadratic"` spacing and custom `timesteps=[...]`, the σ̂ sampler,
    η > 1 where eq. 12 stays defined, and the deterministic encoder of DDIM §4.3 (`inversion_step`). Before any
    `set_timesteps` it steps along all T timesteps (the parent raises), like `DDPMScheduler`.

    Args:
        num_train_timesteps (`int`, defaults to `1000`):
            T, the number of diffusion steps used in training.
        beta_start (`float`, defaults to `0.0001`):
            β_1 of the "linear" schedule.
        beta_end (`float`, defaults to `0.02`):
            β_T of the "linear" schedule.
        beta_schedule (`str`, defaults to `"linear"`):
            One of `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`.
        trained_betas (`np.ndarray` or `list[float]`, *optional*):
            Explicit β_t, overriding the schedule.
        clip_sample (`bool`, defaults to `True`):
            Clip x̂_0 to [-clip_sample_range, clip_sample_range].
        set_alpha_to_one (`bool`, defaults to `True`):
            ᾱ after the last step: 1 (clean data) if `True`, else ᾱ at t = 0.
        steps_offset (`int`, defaults to `0`):
            Added to "leading" timesteps.
        prediction_type (`str`, defaults to `"epsilon"`):
            What the model predicts: `"epsilon"`, `"sample"` (x_0) or `"v_prediction"`.
        thresholding (`bool`, defaults to `False`):
            Dynamic thresholding of x̂_0 (Imagen) instead of clipping.
        dynamic_thresholding_ratio (`float`, defaults to `0.995`):
            The percentile of |x̂_0| used by dynamic thresholding.
        clip_sample_range (`float`, defaults to `1.0`):
            The clipping bound for x̂_0.
        sample_max_value (`float`, defaults to `1.0`):
            The upper bound of the dynamic threshold.
        timestep_spacing (`str`, defaults to `"leading"`):
            `"leading"`, `"trailing"`, `"linspace"` (diffusers) or `"quadratic"` (DDIM App. D.2, its CIFAR10 setting).
        rescale_betas_zero_snr (`bool`, defaults to `False`):
            Rescale β so that ᾱ_T = 0 (Lin et al. 2023).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: DDIMBetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        check_schedule_arguments(num_train_timesteps, beta_start, beta_end, trained_betas)
        if trained_betas is None and beta_schedule not in DDIM_BETA_SCHEDULES:
            raise ValueError(f"`beta_schedule` must be one of {DDIM_BETA_SCHEDULES}, got {beta_schedule!r}.")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self._check_config()
        self._init_tables()

    def _final_alpha_cumprod(self) -> float:
        # After the last step: clean data (ᾱ = 1) or, as the parent offers, ᾱ at t = 0.
        return 1.0 if self.config.set_alpha_to_one else float(self.alphas_cumprod_f64[0])

    def sigma(
        self,
        timestep: int | torch.Tensor,
        eta: float = 1.0,
        sigma_hat: bool = False,
        like: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The noise scale of a step from `timestep` to `previous_timestep(timestep)`.

        σ_t(η) = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev) = η √β̃_t (DDIM eq. 16), or with `sigma_hat=True`
        σ̂_t = √(1 − ᾱ_t/ᾱ_prev) = √β_t (Table 1's σ̂ row, DDPM's "fixed large"), 0 on the schedule's last step.

        Args:
            timestep (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1), int, 0-d or one per example.
            eta (`float`, defaults to `1.0`): η ≥ 0 (ignored with `sigma_hat`).
            sigma_hat (`bool`, defaults to `False`): return σ̂_t instead of σ_t(η).
            like (`torch.Tensor`, *optional*): a sample giving dtype, device and the shape to broadcast to; float64 on
                the CPU if omitted.

        Returns:
            `torch.Tensor`: σ, broadcastable against `like`.
        """
        eta = _check_eta(eta)
        if like is not None:
            check_float_tensor(like, "like")
        t = self._as_timesteps(timestep, like, scheduled=True, name="timestep")
        if like is None:  # a 1-d float64 stand-in: σ comes back 0-d for an int, 1-d for a batch of timesteps
            like = torch.empty(0, dtype=torch.float64, device=None if isinstance(t, int) else t.device)
        return self._sigma(t, eta, sigma_hat, like)

    def _sigma(self, t: int | torch.Tensor, eta: float, sigma_hat: bool, like: torch.Tensor) -> torch.Tensor:
        if sigma_hat:
            return self._gather("sigma_hat_table", t, like)  # σ̂_t = √β_t, 0 on the last step
        return eta * self._gather("posterior_variance", t, like).sqrt()  # σ_t(η) = η √β̃_t (eq. 16)

    def _check_eta_defined(self, eta: float, t: int | torch.Tensor) -> None:
        """η > 1 only while eq. 12's 1 − ᾱ_prev − σ_t(η)² ≥ 0 (checked on the CPU tables: no device sync)."""
        max_eta = self.max_eta[t] if isinstance(t, int) else self.max_eta[t.cpu()].min()
        max_eta = float(max_eta)
        if eta > max_eta * (1 + 1e-12):
            raise ValueError(
                f"`eta`={eta} makes DDIM eq. 12 undefined at timestep {t if isinstance(t, int) else t.tolist()} "
                f"(1 − ᾱ_prev − σ_t(η)² < 0); allowed: 0 ≤ eta ≤ {max_eta:.6g} for this step."
            )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        sigma_hat: bool = False,
    ) -> DDIMSchedulerOutput | tuple:
        """
        One DDIM step (eq. 12) from `timestep` to `previous_timestep(timestep)`, the next element of the schedule:

        x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε̂ + σ_t z, with σ_t = σ_t(η) of eq. 16.

        With `sigma_hat=True` the mean is eq. 12's at η = 1 (DDPM's posterior mean μ̃_t; exactly the original code's
        σ̂ sampler when `use_clipped_model_output=True`) and the noise has the larger scale σ̂_t = √β_t, none on the
        last step.

        Args:
            model_output (`torch.Tensor`):
                The model's output at (x_t, t).
            timestep (`int` or `torch.Tensor`):
                A timestep of the set schedule (diffusers' t, the paper's t + 1); a 1-d tensor gives one per example.
            sample (`torch.Tensor`):
                x_t.
            eta (`float`, defaults to `0.0`):
                η of eq. 16: 0 is deterministic DDIM, 1 is DDPM's fixed-small sampler; η > 1 is allowed while
                1 − ᾱ_prev − σ_t(η)² ≥ 0 (else `ValueError`); η < 0 raises `ValueError`.
            use_clipped_model_output (`bool`, defaults to `False`):
                Re-derive ε̂ from the clipped x̂_0 (as GLIDE and the original σ̂ code do).
            generator (`torch.Generator`, *optional*):
                The random generator for z.
            variance_noise (`torch.Tensor`, *optional*):
                z itself, instead of drawing it with `generator` (not both).
            return_dict (`bool`, defaults to `True`):
                Return a `DDIMSchedulerOutput` instead of a tuple.
            sigma_hat (`bool`, defaults to `False`):
                Use the σ̂ sampler (DDIM Table 1's larger-variance row); `eta` is then ignored.

        Returns:
            `DDIMSchedulerOutput` or `tuple`: `prev_sample` (x_prev) and `pred_original_sample` (x̂_0).
        """
        eta = _check_eta(eta)
        self._check_same_shape(model_output, sample, "model_output", "sample")
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("Pass at most one of `generator` and `variance_noise`, got both.")
            self._check_same_shape(variance_noise, sample, "variance_noise", "sample")
        t = self._as_timesteps(timestep, sample, scheduled=True, name="timestep")
        self._check_original_sample_defined(t)
        if eta > 1 and not sigma_hat:
            self._check_eta_defined(eta, t)

        pred_original_sample, pred_epsilon = self._x0_and_noise(model_output, sample, t)  # x̂_0 (eq. 15 / 12), ε̂
        pred_original_sample = self._clip_or_threshold(pred_original_sample)
        if use_clipped_model_output:
            pred_epsilon = self._noise_from_original_sample(
                pred_original_sample, sample, *self._noise_levels(t, sample)
            )
        std_dev_t = self._sigma(t, eta, sigma_hat, sample)  # σ_t (eq. 16) or σ̂_t
        direction_std = self._sigma(t, 1.0, False, sample) if sigma_hat else std_dev_t
        # "direction pointing to x_t": √(1 − ᾱ_prev − σ_t²) ε̂ (clamped at 0 against rounding for η ≈ its maximum)
        direction_scale = (self._gather("one_minus_alphas_cumprod_prev", t, sample) - direction_std**2).clamp(min=0)
        prev_sample = self._gather("sqrt_alphas_cumprod_prev", t, sample) * pred_original_sample
        prev_sample = prev_sample + direction_scale.sqrt() * pred_epsilon
        if eta > 0 or sigma_hat:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + std_dev_t * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def next_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """
        The timestep an encoding step from `timestep` lands on: the schedule element before it (the next larger one).

        `timestep=-1` (clean data) gives the smallest scheduled timestep, where encoding starts.

        Args:
            timestep (`int` or `torch.Tensor`): -1 or a scheduled timestep other than the largest.

        Returns:
            `int` or `torch.Tensor` (0-d, on the input's device), as given.
        """
        if not _is_integer(timestep):  # a tensor: checked for an integer dtype, then read (one sync)
            timestep = self._timestep_tensor(timestep, None, "timestep")
        value = int(timestep)
        schedule = self.timesteps.tolist()
        if value == -1:
            result = schedule[-1]
        else:
            self._as_timesteps(value, scheduled=True, name="timestep")
            index = schedule.index(value)
            if index == 0:
                raise ValueError(
                    f"`timestep`={value} is the largest scheduled timestep; encoding has no step after it. "
                    f"Allowed: -1 and {schedule[1:]}."
                )
            result = schedule[index - 1]
        return torch.tensor(result, device=timestep.device) if torch.is_tensor(timestep) else result

    def inversion_step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """
        One DDIM encoding step (DDIM §4.3): eq. 12 with η = 0 run forward, from the level of
        `previous_timestep(timestep)` up to `timestep`: ε̂ from the model output, x̂_0 = (x_prev − √(1 − ᾱ_prev) ε̂) /
        √ᾱ_prev, then x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂. No clipping (it would break invertibility).

        The model is evaluated at (`sample`, `timestep`), the target timestep, because the level below the first step
        has no trained timestep (as in diffusers' DDIMInverseScheduler). From clean data the first step is eq. 4 with
        ε_θ(x_0, τ_1).

        Loop: `for t in scheduler.timesteps.flip(0): sample = scheduler.inversion_step(model(sample, t), t, sample)`.

        Args:
            model_output (`torch.Tensor`): the model's output at (`sample`, `timestep`).
            timestep (`int` or `torch.Tensor`): the scheduled timestep to encode up to (diffusers' t, paper t + 1).
            sample (`torch.Tensor`): x at the level of `previous_timestep(timestep)`.
            return_dict (`bool`, defaults to `True`): return a `DDIMSchedulerOutput` instead of a tuple.

        Returns:
            `DDIMSchedulerOutput` or `tuple`: `prev_sample` holds the encoded x_t (named as in diffusers' inverse
            scheduler), `pred_original_sample` holds x̂_0.
        """
        self._check_same_shape(model_output, sample, "model_output", "sample")
        t = self._as_timesteps(timestep, sample, scheduled=True, name="timestep")
        pred_epsilon = self._x0_and_noise(model_output, sample, t)[1]  # ε̂, whatever the prediction type
        sqrt_alpha_prod_prev = self._gather("sqrt_alphas_cumprod_prev", t, sample)
        sqrt_one_minus_alpha_prod_prev = self._gather("sqrt_one_minus_alphas_cumprod_prev", t, sample)
        pred_original_sample = self._original_sample_from_noise(
            pred_epsilon, sample, sqrt_alpha_prod_prev, sqrt_one_minus_alpha_prod_prev
        )  # eq. 15 at the sample's own level
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._noise_levels(t, sample)
        next_sample = sqrt_alpha_prod * pred_original_sample + sqrt_one_minus_alpha_prod * pred_epsilon  # eq. 12, η=0

        if not return_dict:
            return (next_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=next_sample, pred_original_sample=pred_original_sample)
