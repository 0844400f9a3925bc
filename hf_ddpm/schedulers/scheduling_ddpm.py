"""DDPM (Ho et al. 2020) as a drop-in `diffusers.DDPMScheduler`, with the paper's quantities as methods.

Diffusers' timestep t (0 .. T-1) is the paper's t + 1 throughout: diffusers' t = 0 is the decoder step of eq. 13.
"""

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from diffusers import DDPMScheduler as DiffusersDDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .diffusion_chain import DiffusionChainMixin, PredictionType, check_float_tensor, check_schedule_arguments
from .gaussian_likelihood import discretized_gaussian_log_likelihood, normal_kl
from .timestep_spacing import TimestepSpacing

# Variance types whose model output carries C extra channels for σ_t² (the prediction comes first).
LearnedVarianceType = Literal["learned", "learned_range"]
VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", LearnedVarianceType]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"]
LEARNED_VARIANCE_TYPES: tuple[str, ...] = get_args(LearnedVarianceType)
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)  # DDPMScheduler's; DDIM accepts fewer


@dataclass
class DDPMMeanVariance(BaseOutput):
    """
    The reverse step p_θ(x_prev | x_t) = N(mean, variance) of `DDPMScheduler.p_mean_variance`.

    Args:
        mean (`torch.Tensor`): μ_θ(x_t, t) (DDPM eq. 11, computed as the posterior mean of eq. 7 at x̂_0).
        variance (`torch.Tensor`): σ_t² per `variance_type`.
        log_variance (`torch.Tensor`): log σ_t².
        pred_original_sample (`torch.Tensor`): x̂_0 (eq. 15), clipped/thresholded per the config.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


class DDPMScheduler(DiffusionChainMixin, DiffusersDDPMScheduler):
    """
    DDPM's ancestral sampler (Algorithm 2), a drop-in for `diffusers.DDPMScheduler`.

    Same config keys and call signatures as the parent; where the parent is right the same generator gives the same
    `prev_sample`. Differs where the parent is wrong: `"fixed_large_log"` is log β_t (the parent returns NaN), a step
    at a timestep outside the set schedule raises `ValueError` (the parent raises `IndexError`), and no noise is
    added on the last step of a schedule that ends above t = 0 (the parent adds β-sized noise to the final sample).
    Adds `"quadratic"` spacing, the paper's quantities as methods and the variational-bound terms.

    Args:
        num_train_timesteps (`int`, defaults to `1000`):
            T, the number of diffusion steps used in training.
        beta_start (`float`, defaults to `0.0001`):
            β_1 of the "linear" schedule (the paper's setting: 1e-4).
        beta_end (`float`, defaults to `0.02`):
            β_T of the "linear" schedule (the paper's setting: 0.02).
        beta_schedule (`str`, defaults to `"linear"`):
            One of `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`, `"sigmoid"`, `"laplace"`.
        trained_betas (`np.ndarray` or `list[float]`, *optional*):
            Explicit β_t, overriding `beta_start`/`beta_end`/`beta_schedule`.
        variance_type (`str`, defaults to `"fixed_small"`):
            σ_t² of the reverse step: `"fixed_small"`/`"fixed_small_log"` (β̃_t), `"fixed_large"`/`"fixed_large_log"`
            (β_t), `"learned"` (the model's extra C channels are σ_t²) or `"learned_range"` (they are v in [-1, 1],
            log σ_t² = ((v+1)/2) log β_t + ((1−v)/2) log β̃_t, Nichol & Dhariwal 2021).
        clip_sample (`bool`, defaults to `True`):
            Clip x̂_0 to [-clip_sample_range, clip_sample_range] when sampling.
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
            `"leading"`, `"trailing"`, `"linspace"` (diffusers) or `"quadratic"` (DDIM App. D.2).
        steps_offset (`int`, defaults to `0`):
            Added to "leading" timesteps.
        rescale_betas_zero_snr (`bool`, defaults to `False`):
            Rescale β so that ᾱ_T = 0 (Lin et al. 2023).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_schedule_arguments(num_train_timesteps, beta_start, beta_end, trained_betas)
        if trained_betas is None and beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"`beta_schedule` must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"`variance_type` must be one of {VARIANCE_TYPES}, got {variance_type!r}.")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self._check_config()
        self._init_tables()

    # ----------------------------------------------------------------------------------------------------------------
    # The paper's quantities

    def q_posterior_mean_variance(
        self, original_sample: torch.Tensor, sample: torch.Tensor, timesteps: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Mean, variance and log variance of q(x_prev | x_t, x_0) (DDPM eq. 6-7), prev = `previous_timestep(t)`.

        μ̃_t = √ᾱ_prev β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_prev) / (1 − ᾱ_t) · x_t and β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) β_t.
        The log variance is clipped at the last step (β̃ = 0 there) to β̃ of the second-to-last step.

        Args:
            original_sample (`torch.Tensor`): x_0 (or x̂_0).
            sample (`torch.Tensor`): x_t, of x_0's shape.
            timesteps (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1), int, 0-d or one per example.

        Returns:
            `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: (μ̃_t, β̃_t, log β̃_t clipped), broadcast to x_t.
        """
        self._check_same_shape(original_sample, sample, "original_sample", "sample")
        t = self._as_timesteps(timesteps, sample, scheduled=True)
        return self._q_posterior_mean_variance(original_sample, sample, t)

    def _q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coef_x0 = self._gather("posterior_mean_coef1", t, x_t)  # √ᾱ_prev β_t / (1 − ᾱ_t)
        coef_xt = self._gather("posterior_mean_coef2", t, x_t)  # √α_t (1 − ᾱ_prev) / (1 − ᾱ_t)
        variance = self._gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return coef_x0 * x0 + coef_xt * x_t, variance, log_variance

    def _check_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        """The model output has the sample's shape, with 2C channels (prediction, variance) for learned variances."""
        if self.config.variance_type not in LEARNED_VARIANCE_TYPES:
            self._check_same_shape(model_output, sample, "model_output", "sample")
            return
        check_float_tensor(model_output, "model_output")
        check_float_tensor(sample, "sample")
        if sample.ndim < 2 or model_output.shape != (sample.shape[0], 2 * sample.shape[1], *sample.shape[2:]):
            channels = sample.shape[1] if sample.ndim >= 2 else "C"
            raise ValueError(
                f"`variance_type`={self.config.variance_type!r} needs a model_output with 2×{channels} channels "
                f"(prediction, variance), got shape {tuple(model_output.shape)} for a sample of shape "
                f"{tuple(sample.shape)}."
            )

    def _split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance channels or `None`) of a checked model output."""
        if self.config.variance_type in LEARNED_VARIANCE_TYPES:
            prediction, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
            return prediction, predicted_variance
        return model_output, None

    def model_variance(
        self,
        timesteps: int | torch.Tensor,
        sample: torch.Tensor,
        predicted_variance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        σ_t² and log σ_t² of the reverse step p_θ(x_prev | x_t) per `config.variance_type`.

        "fixed_small(_log)": β̃_t; "fixed_large(_log)": β_t (log β_t, finite); both use β̃ of the second-to-last step
        at the last step (the original DDPM code's convention, so the decoder of eq. 13 is not degenerate);
        "learned": the model's output is σ_t² (as in diffusers); "learned_range": log σ_t² interpolates between
        log β̃_t and log β_t with weight (v + 1) / 2.

        Args:
            timesteps (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1).
            sample (`torch.Tensor`): x_t (gives the shape, dtype and device).
            predicted_variance (`torch.Tensor`, *optional*): the model's variance channels, for the learned types.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: (σ_t², log σ_t²), broadcast to the sample's shape.
        """
        check_float_tensor(sample, "sample")
        t = self._as_timesteps(timesteps, sample, scheduled=True)
        variance_type = self.config.variance_type
        if variance_type in LEARNED_VARIANCE_TYPES:
            if predicted_variance is None:
                raise ValueError(f"`variance_type`={variance_type!r} needs the model's `predicted_variance` channels.")
            check_float_tensor(predicted_variance, "predicted_variance")
        return self._model_variance(t, sample, predicted_variance)

    def _model_variance(
        self, t: int | torch.Tensor, sample: torch.Tensor, predicted_variance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        variance_type = self.config.variance_type
        if variance_type in ("fixed_small", "fixed_small_log"):
            variance = self._gather("fixed_small_variance", t, sample)
            log_variance = self._gather("posterior_log_variance_clipped", t, sample)
        elif variance_type in ("fixed_large", "fixed_large_log"):
            variance = self._gather("fixed_large_variance", t, sample)
            log_variance = self._gather("fixed_large_log_variance", t, sample)
        elif variance_type == "learned":
            variance, log_variance = predicted_variance, predicted_variance.log()
        else:  # learned_range (Nichol & Dhariwal eq. 15)
            min_log = self._gather("posterior_log_variance_clipped", t, sample)  # log β̃_t
            max_log = self._gather("log_step_betas", t, sample)  # log β_t
            frac = (predicted_variance + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = log_variance.exp()
        return variance.expand_as(sample), log_variance.expand_as(sample)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        clip_sample: bool | None = None,
    ) -> DDPMMeanVariance:
        """
        The reverse step p_θ(x_prev | x_t) = N(μ_θ, σ_t²): x̂_0 (eq. 15), clip, μ_θ = μ̃_t(x̂_0, x_t) (eq. 7 = eq. 11
        for ε-prediction), σ_t² per `variance_type`.

        Args:
            model_output (`torch.Tensor`): the model's output (2C channels for the learned variance types).
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1), int, 0-d or one per example.
            clip_sample (`bool`, *optional*): `None` clips/thresholds x̂_0 per the config; `False` never (e.g. for the
                hybrid loss); `True` clips even where the config does not.

        Returns:
            [`DDPMMeanVariance`]: `mean`, `variance`, `log_variance`, `pred_original_sample`.
        """
        t = self._as_timesteps(timesteps, sample, scheduled=True)
        self._check_model_output(model_output, sample)
        self._check_original_sample_defined(t, "timesteps")
        return self._p_mean_variance(model_output, sample, t, clip_sample)

    def _p_mean_variance(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int | torch.Tensor, clip_sample: bool | None
    ) -> DDPMMeanVariance:
        prediction, predicted_variance = self._split_model_output(model_output, sample)
        pred_original_sample = self._x0_and_noise(prediction, sample, t)[0]  # x̂_0, eq. 15
        pred_original_sample = self._clip_or_threshold(pred_original_sample, clip_sample)
        mean = self._q_posterior_mean_variance(pred_original_sample, sample, t)[0]  # μ_θ, eq. 7 / 11
        variance, log_variance = self._model_variance(t, sample, predicted_variance)
        return DDPMMeanVariance(
            mean=mean, variance=variance, log_variance=log_variance, pred_original_sample=pred_original_sample
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Variational bound terms (DDPM eq. 5), nats per example (summed over all non-batch dimensions)

    @staticmethod
    def _sum_per_example(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(values.shape[0], -1).sum(dim=1)

    def prior_kl(self, original_sample: torch.Tensor) -> torch.Tensor:
        """
        L_T = KL(q(x_T | x_0) ‖ N(0, I)) in nats per example, with q(x_T | x_0) = N(√ᾱ_T x_0, (1 − ᾱ_T) I) (eq. 4).

        Args:
            original_sample (`torch.Tensor`): x_0, batch first.

        Returns:
            `torch.Tensor`: shape (batch,), in at least float32.
        """
        check_float_tensor(original_sample, "original_sample")
        x0 = original_sample.to(torch.promote_types(original_sample.dtype, torch.float32))
        last = self.config.num_train_timesteps - 1  # diffusers' T - 1 is the paper's T
        mean = self._gather("sqrt_alphas_cumprod", last, x0) * x0
        log_variance = torch.log1p(-self._gather("alphas_cumprod_f64", last, x0)).expand_as(x0)
        zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
        return self._sum_per_example(normal_kl(mean, log_variance, zero, zero))

    def _check_vlb_arguments(
        self, model_output: torch.Tensor, original_sample: torch.Tensor, sample: torch.Tensor, timesteps: Any
    ) -> int | torch.Tensor:
        t = self._as_timesteps(timesteps, sample, scheduled=True)
        self._check_model_output(model_output, sample)
        self._check_same_shape(original_sample, sample, "original_sample", "sample")
        return t

    def posterior_kl(
        self,
        model_output: torch.Tensor,
        original_sample: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        clip_sample: bool | None = False,
    ) -> torch.Tensor:
        """
        L_{t-1} = KL(q(x_prev | x_t, x_0) ‖ p_θ(x_prev | x_t)) in nats per example (DDPM eq. 5).

        Args:
            model_output (`torch.Tensor`): the model's output at (x_t, t).
            original_sample (`torch.Tensor`): the data x_0.
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1).
            clip_sample (`bool`, *optional*, defaults to `False`): clip x̂_0 in p_θ (`None`: per the config).

        Returns:
            `torch.Tensor`: shape (batch,), in the sample's dtype.
        """
        t = self._check_vlb_arguments(model_output, original_sample, sample, timesteps)
        return self._posterior_kl(model_output, original_sample, sample, t, clip_sample)

    def _posterior_kl(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, clip_sample: Any
    ) -> torch.Tensor:
        true_mean, _, true_log_variance = self._q_posterior_mean_variance(x0, x_t, t)
        model = self._p_mean_variance(model_output, x_t, t, clip_sample)
        return self._sum_per_example(normal_kl(true_mean, true_log_variance, model.mean, model.log_variance))

    def decoder_nll(
        self,
        model_output: torch.Tensor,
        original_sample: torch.Tensor,
        sample: torch.Tensor,
        clip_sample: bool | None = False,
    ) -> torch.Tensor:
        """
        L_0 = −log p_θ(x_0 | x_1) in nats per example (DDPM eq. 13), at diffusers' t = 0 (the paper's t = 1).

        p_θ is N(μ_θ, σ_1²) discretized to bins of width 2/255 around each of the 256 levels of [-1, 1], the outermost
        bins extending to ±∞; σ_1² is β̃ of the second step (never 0).

        Args:
            model_output (`torch.Tensor`): the model's output at (x_1, t=0).
            original_sample (`torch.Tensor`): x_0 on the 256 levels of [-1, 1].
            sample (`torch.Tensor`): x_1 (diffusers' t = 0).
            clip_sample (`bool`, *optional*, defaults to `False`): clip x̂_0 in p_θ (`None`: per the config).

        Returns:
            `torch.Tensor`: shape (batch,), in at least float32.
        """
        self._check_vlb_arguments(model_output, original_sample, sample, 0)
        return self._decoder_nll(model_output, original_sample, sample, clip_sample)

    def _decoder_nll(
        self, model_output: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, clip_sample: Any
    ) -> torch.Tensor:
        model = self._p_mean_variance(model_output, x1, 0, clip_sample)
        return -self._sum_per_example(discretized_gaussian_log_likelihood(x0, model.mean, 0.5 * model.log_variance))

    def vlb_terms(
        self,
        model_output: torch.Tensor,
        original_sample: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        clip_sample: bool | None = False,
    ) -> torch.Tensor:
        """
        The bound's term for each example's timestep, in nats: L_0 (`decoder_nll`) where t == 0, else L_{t-1}
        (`posterior_kl`). Divide by D·ln 2 for bits/dim; add `prior_kl` for the full bound.

        Args:
            model_output (`torch.Tensor`): the model's output at (x_t, t).
            original_sample (`torch.Tensor`): the data x_0 (on the 256 levels of [-1, 1] where t == 0).
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): scheduled diffusers' t (paper t + 1), int, 0-d or one per example.
            clip_sample (`bool`, *optional*, defaults to `False`): clip x̂_0 in p_θ (`None`: per the config).

        Returns:
            `torch.Tensor`: shape (batch,).
        """
        t = self._check_vlb_arguments(model_output, original_sample, sample, timesteps)
        if isinstance(t, int) and t == 0:
            return self._decoder_nll(model_output, original_sample, sample, clip_sample)
        kl = self._posterior_kl(model_output, original_sample, sample, t, clip_sample)
        if isinstance(t, int):
            return kl
        self._as_timesteps(0, scheduled=True)  # the decoder term, computed for the whole batch, needs t = 0
        nll = self._decoder_nll(model_output, original_sample, sample, clip_sample)
        return torch.where(t.to(kl.device) == 0, nll, kl.to(nll.dtype))

    # ----------------------------------------------------------------------------------------------------------------
    # Sampling

    def _noise_scale(self, p: DDPMMeanVariance, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """σ_t computed as the parent does (same noise, same samples); 0 for examples of a batch on their last step."""
        std = torch.exp(0.5 * p.log_variance) if self.config.variance_type == "learned_range" else p.variance.sqrt()
        if not isinstance(t, int):
            std = std * (self._gather("prev_timesteps", t, sample) >= 0).to(std.dtype)
        return std

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """
        One step of DDPM's Algorithm 2, from `timestep` to `previous_timestep(timestep)`: x_prev = μ_θ + σ_t z from
        `p_mean_variance`, with z = 0 on the schedule's last step. z is drawn as the parent draws it, so a generator
        gives the same samples.

        Args:
            model_output (`torch.Tensor`):
                The model's output at (x_t, t) (2C channels for the learned variance types).
            timestep (`int` or `torch.Tensor`):
                A timestep of the set schedule (diffusers' t, the paper's t + 1); a 1-d tensor steps each example
                from its own timestep.
            sample (`torch.Tensor`):
                x_t.
            generator (`torch.Generator`, *optional*):
                The random generator for z.
            return_dict (`bool`, defaults to `True`):
                Return a `DDPMSchedulerOutput` instead of a tuple.

        Returns:
            `DDPMSchedulerOutput` or `tuple`: `prev_sample` (x_prev) and `pred_original_sample` (x̂_0).
        """
        t = self._as_timesteps(timestep, sample, scheduled=True, name="timestep")
        self._check_model_output(model_output, sample)
        self._check_original_sample_defined(t)
        p = self._p_mean_variance(model_output, sample, t, clip_sample=None)  # x̂_0, μ_θ and σ_t²
        prev_sample = p.mean
        if not (isinstance(t, int) and int(self.prev_timesteps[t]) < 0):  # z = 0 on the schedule's last step
            noise = randn_tensor(
                sample.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            prev_sample = prev_sample + self._noise_scale(p, t, sample) * noise

        if not return_dict:
            return (prev_sample, p.pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=p.pred_original_sample)
