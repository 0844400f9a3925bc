"""`DiffusionChainMixin`: what hf_ddpm's DDPM and DDIM schedulers share.

The float64 tables of the current sampling chain and their cached per-device gathers, `set_timesteps`,
`previous_timestep`, x̂_0 / ε̂ from any prediction type (DDPM eq. 15), `add_noise` (eq. 4), `get_velocity` and the
clipping of x̂_0. Diffusers' timestep t (0 .. T-1) is the paper's t + 1: diffusers' t = 0 is the decoder step.
"""

import numbers
from typing import Any, Literal, get_args

import numpy as np
import torch

from .chain_coefficients import UNSCHEDULED, chain_coefficients
from .timestep_spacing import TIMESTEP_SPACINGS, check_custom_timesteps, spaced_timesteps

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_float_tensor(value: Any, name: str) -> None:
    # Integer samples would make every coefficient gather round to 0 or 1 (the tables are cast to the sample's dtype).
    if not torch.is_tensor(value):
        raise TypeError(f"`{name}` must be a floating-point torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor (float16, bfloat16, float32 or float64), got {value.dtype}."
        )


def check_schedule_arguments(num_train_timesteps: Any, beta_start: Any, beta_end: Any, trained_betas: Any) -> None:
    """
    The `__init__` arguments the diffusers parent would crash on (T = 2.0, a string β) or keep silently (T = 0,
    `trained_betas` of the wrong length or with NaN): checked before the parent's `__init__` runs.
    """
    if not _is_integer(num_train_timesteps) or num_train_timesteps < 1:
        raise ValueError(f"`num_train_timesteps` must be an int ≥ 1, got {num_train_timesteps!r}.")
    if trained_betas is None:
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be a number in (0, 1), got {value!r}.")
        return
    try:
        betas = np.asarray(trained_betas, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`trained_betas` must be a 1-d sequence of numbers, got {type(trained_betas).__name__}."
        ) from e
    if betas.shape != (num_train_timesteps,):
        raise ValueError(
            f"`trained_betas` must be 1-d with num_train_timesteps={num_train_timesteps} values, got shape "
            f"{betas.shape}."
        )
    if not np.isfinite(betas).all():
        index = int(np.flatnonzero(~np.isfinite(betas))[0])
        raise ValueError(f"`trained_betas` must be finite, got {betas[index]} at index {index}.")


class DiffusionChainMixin:
    """
    Shared by hf_ddpm's `DDPMScheduler` and `DDIMScheduler` (placed before the diffusers parent in the bases).

    The float64 tables of the current chain are rebuilt only by `set_timesteps` and gathered in the sample's dtype and
    device through a cache per (table, device, dtype), so a sampling loop copies each table to the device once.

    Public methods check their arguments once and call unchecked private helpers. A timestep argument may be a Python
    int, a 0-d tensor, or a 1-d tensor with one timestep per batch element, broadcast over the other dimensions.
    """

    def _final_alpha_cumprod(self) -> float:
        """ᾱ after the last step of a schedule: 1 (clean data); DDIM overrides it for `set_alpha_to_one=False`."""
        return 1.0

    def _check_config(self) -> None:
        """Checks the options and the β_t the parent built; called once from `__init__`."""
        steps_offset = self.config.steps_offset
        if not _is_integer(steps_offset) or steps_offset < 0:
            raise ValueError(f"`steps_offset` must be an int ≥ 0, got {steps_offset!r}.")
        self._check_betas()
        if self.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.config.prediction_type!r}."
            )
        if self.config.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {self.config.timestep_spacing!r}."
            )

    def _beta_source(self) -> str:
        """The arguments the β_t came from, for error messages."""
        if self.config.trained_betas is not None:
            return "`trained_betas`"
        config = self.config
        return (
            f"`beta_schedule`={config.beta_schedule!r}, `beta_start`={config.beta_start}, `beta_end`={config.beta_end}"
        )

    def _check_betas(self) -> None:
        """
        0 < β_t < 1 for every t, so that 0 < ᾱ_t < 1 (DDPM eq. 4 has noise and signal at every step). With
        `rescale_betas_zero_snr` the last β is 1 (ᾱ_T = 0, zero terminal SNR, Lin et al. 2023), as the parent builds it.
        """
        betas = self.betas.to(torch.float64)
        upper = torch.ones_like(betas)
        upper[-1] = 2.0 if self.config.rescale_betas_zero_snr else 1.0  # β_T = 1 allowed there
        bad = ~((betas > 0) & (betas < upper))  # also catches NaN
        if bool(bad.any()):
            t = int(bad.nonzero()[0])
            allowed = "(0, 1), or 1 at the last t with rescale_betas_zero_snr" if t == len(betas) - 1 else "(0, 1)"
            raise ValueError(
                f"β_t must be in {allowed} at every t; {self._beta_source()} give β = {float(betas[t]):.6g} at t = {t}."
            )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        underflow = alphas_cumprod[: len(betas) - int(self.config.rescale_betas_zero_snr)] <= 0
        if bool(underflow.any()):
            t = int(underflow.nonzero()[0])
            raise ValueError(
                f"ᾱ_t = ∏(1 − β_s) must stay > 0; {self._beta_source()} make it underflow to 0 at t = {t}."
            )

    def _init_tables(self) -> None:
        """Builds the noise levels and the full chain's tables; called once from `__init__`."""
        T = self.config.num_train_timesteps
        # β_t exactly as the parent built it (schedule, trained_betas, zero-SNR rescale), in float64 from here on.
        alphas_cumprod = torch.cumprod(1.0 - self.betas.to(torch.float64), dim=0)  # ᾱ_t = ∏_{s≤t} (1 − β_s)
        self.alphas_cumprod_f64 = alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()  # √ᾱ_t  (eq. 4 mean, eq. 15)
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()  # √(1 − ᾱ_t)  (eq. 4 std, eq. 15)
        self._table_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._set_chain(np.arange(T - 1, -1, -1, dtype=np.int64))

    def _set_chain(self, timesteps: np.ndarray) -> None:
        """Sets the step tables of [`chain_coefficients`] (`posterior_variance`, ...) for the schedule `timesteps`."""
        for name, table in chain_coefficients(self.alphas_cumprod_f64, timesteps, self._final_alpha_cumprod()).items():
            setattr(self, name, table)
        self._scheduled = set(timesteps.tolist())
        self._table_cache.clear()

    # ----------------------------------------------------------------------------------------------------------------
    # Tables and timesteps

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, torch.device(device), dtype)
        table = self._table_cache.get(key)
        if table is None:
            table = getattr(self, name).to(device=device, dtype=dtype)
            self._table_cache[key] = table
        return table

    def _gather(self, name: str, timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at `timesteps`, in `like`'s dtype/device, shaped to broadcast against `like`."""
        table = self._table(name, like.device, like.dtype)
        if isinstance(timesteps, int):
            return table[timesteps]  # 0-d: broadcasts; indexing by a Python int does not sync the device
        values = table[timesteps.to(like.device)]
        if values.ndim == 1:
            values = values.reshape(-1, *([1] * (like.ndim - 1)))
        return values

    def _as_timesteps(
        self, timesteps: Any, like: torch.Tensor | None = None, scheduled: bool = False, name: str = "timesteps"
    ) -> int | torch.Tensor:
        """
        Checks a timestep argument and returns it as an int or an int64 tensor (0-d or 1-d).

        The range [0, T) is checked for ints and CPU tensors only: checking an accelerator tensor would sync the device
        on every training step. With `scheduled=True` (steps, posterior quantities) the timesteps must be in the set
        schedule, and a 0-d tensor becomes an int (one sync, as in the parent's step).
        """
        if _is_integer(timesteps):
            return self._check_int_timestep(int(timesteps), scheduled, name)
        timesteps = self._timestep_tensor(timesteps, like, name)
        if scheduled and timesteps.ndim == 0:
            return self._check_int_timestep(int(timesteps), scheduled, name)
        if scheduled or timesteps.device.type == "cpu":
            self._check_timestep_tensor(timesteps, scheduled, name)
        return timesteps

    def _timestep_tensor(self, timesteps: Any, like: torch.Tensor | None, name: str) -> torch.Tensor:
        """The int64 form of a 0-d/1-d timestep tensor whose length fits `like`'s batch (no device sync)."""
        if not torch.is_tensor(timesteps):
            raise ValueError(f"`{name}` must be an int or a 0-d/1-d integer tensor, got {type(timesteps).__name__}.")
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            # Refused rather than rounded: whether a CUDA float is integral cannot be checked without a device sync,
            # and diffusers' schedulers and pipelines index with integer timesteps too.
            raise ValueError(
                f"`{name}` must be an int or an integer tensor, got a {timesteps.dtype} tensor; convert with `.long()`."
            )
        if timesteps.ndim > 1:
            raise ValueError(
                f"`{name}` must be 0-d or 1-d (one per batch element), got shape {tuple(timesteps.shape)}."
            )
        if like is not None and timesteps.ndim == 1 and timesteps.shape[0] not in (1, like.shape[0]):
            raise ValueError(
                f"`{name}` has {timesteps.shape[0]} entries but the sample's batch size is {like.shape[0]}; pass one "
                "timestep, or one per batch element."
            )
        return timesteps.long()

    def _check_int_timestep(self, value: int, scheduled: bool, name: str) -> int:
        if not 0 <= value < self.config.num_train_timesteps:
            self._raise_out_of_range(value, name)
        if scheduled and value not in self._scheduled:
            self._raise_unscheduled(value, name)
        return value

    def _check_timestep_tensor(self, timesteps: torch.Tensor, scheduled: bool, name: str) -> None:
        T = self.config.num_train_timesteps
        out_of_range = (timesteps < 0) | (timesteps >= T)
        bad = out_of_range
        if scheduled:
            prev = self._table("prev_timesteps", timesteps.device, torch.int64)[timesteps.clamp(0, T - 1)]
            bad = out_of_range | (prev == UNSCHEDULED)
        if bool(bad.any()):  # the check's one device sync; what follows is the error path only
            if bool(out_of_range.any()):
                self._raise_out_of_range(timesteps.tolist(), name)
            self._raise_unscheduled(timesteps.tolist(), name)

    def _check_original_sample_defined(self, t: int | torch.Tensor, name: str = "timestep") -> None:
        """Zero terminal SNR (ᾱ_T = 0) leaves ε-prediction no x̂_0 at T: eq. 15 divides by √ᾱ_T (the parent gives NaN)."""
        if self.config.prediction_type != "epsilon" or not self.config.rescale_betas_zero_snr:
            return
        last = self.config.num_train_timesteps - 1
        if (t == last) if isinstance(t, int) else bool((t == last).any()):
            raise ValueError(
                f"`{name}`={last} has ᾱ_t = 0 (rescale_betas_zero_snr=True), where prediction_type='epsilon' gives no "
                f"x̂_0 (DDPM eq. 15 divides by √ᾱ_t); use prediction_type='v_prediction' (Lin et al. 2023) or a "
                f"schedule that starts below t = {last} (e.g. timestep_spacing='leading')."
            )

    def _raise_out_of_range(self, value: Any, name: str) -> None:
        T = self.config.num_train_timesteps
        raise ValueError(f"`{name}` must be in [0, {T}) (num_train_timesteps), got {value}.")

    def _raise_unscheduled(self, value: Any, name: str) -> None:
        raise ValueError(
            f"`{name}`={value} is not in the set schedule; step only at the scheduler's `timesteps` "
            f"(set by `set_timesteps`, now {len(self._scheduled)} steps from {max(self._scheduled)} to "
            f"{min(self._scheduled)})."
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """
        Sets the descending sampling schedule and rebuilds the step tables for it (run before inference).

        Each step then goes from a scheduled timestep to the next one (`previous_timestep`), -1 (clean data) after the
        last.

        Args:
            num_inference_steps (`int`, *optional*):
                The number of sampling steps S, in [1, num_train_timesteps], spaced per `config.timestep_spacing`
                (`"leading"`, `"trailing"`, `"linspace"`, or `"quadratic"`: DDIM App. D.2). Exactly one of
                `num_inference_steps` and `timesteps` must be given.
            device (`str` or `torch.device`, *optional*):
                The device to which the timesteps are moved. If `None`, they stay on the CPU.
            timesteps (`list[int]`, *optional*):
                A custom schedule: integers, strictly descending, in [0, num_train_timesteps).
        """
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "Pass exactly one of `num_inference_steps` and `timesteps`, got "
                f"num_inference_steps={num_inference_steps!r} and timesteps={timesteps!r}."
            )
        if timesteps is not None:
            schedule = check_custom_timesteps(timesteps, T)
        else:
            schedule = spaced_timesteps(self.config.timestep_spacing, num_inference_steps, T, self.config.steps_offset)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(schedule)
        self._set_chain(schedule)
        self.timesteps = torch.from_numpy(schedule).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """
        The timestep a step from `timestep` lands on: the next element of the set schedule, -1 after the last.

        Args:
            timestep (`int` or `torch.Tensor`): a scheduled timestep, or a 1-d tensor of them.

        Returns:
            `int` or `torch.Tensor`: an int for an int, otherwise an int64 tensor on the timestep's device.
        """
        t = self._as_timesteps(timestep, scheduled=True, name="timestep")
        if isinstance(t, int):
            prev = int(self.prev_timesteps[t])
            return torch.tensor(prev, device=timestep.device) if torch.is_tensor(timestep) else prev
        return self._table("prev_timesteps", t.device, torch.int64)[t]

    # ----------------------------------------------------------------------------------------------------------------
    # Noise levels and prediction types (DDPM eq. 4, eq. 15 and its sample / v forms)

    def _noise_levels(self, t: int | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1 − ᾱ_t)), gathered to broadcast against `like`."""
        return self._gather("sqrt_alphas_cumprod", t, like), self._gather("sqrt_one_minus_alphas_cumprod", t, like)

    def _x0_and_noise(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from the model output at timestep t, whatever the prediction type."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._noise_levels(t, sample)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            noise = model_output
            x0 = self._original_sample_from_noise(noise, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod)
        elif prediction_type == "sample":
            x0 = model_output
            noise = self._noise_from_original_sample(x0, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod)
        elif prediction_type == "v_prediction":
            # v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022), so x_0 = √ᾱ x_t − √(1−ᾱ) v and ε = √ᾱ v + √(1−ᾱ) x_t.
            x0 = sqrt_alpha_prod * sample - sqrt_one_minus_alpha_prod * model_output
            noise = sqrt_alpha_prod * model_output + sqrt_one_minus_alpha_prod * sample
        else:  # the config was changed after construction
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        return x0, noise

    @staticmethod
    def _original_sample_from_noise(
        noise: torch.Tensor, sample: torch.Tensor, sqrt_alpha_prod: Any, sqrt_one_minus_alpha_prod: Any
    ) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ) ε̂) / √ᾱ: DDPM eq. 15."""
        return (sample - sqrt_one_minus_alpha_prod * noise) / sqrt_alpha_prod

    @staticmethod
    def _noise_from_original_sample(
        pred_original_sample: torch.Tensor, sample: torch.Tensor, sqrt_alpha_prod: Any, sqrt_one_minus_alpha_prod: Any
    ) -> torch.Tensor:
        """ε̂ = (x_t − √ᾱ x̂_0) / √(1 − ᾱ): DDPM eq. 4 solved for ε."""
        return (sample - sqrt_alpha_prod * pred_original_sample) / sqrt_one_minus_alpha_prod

    @staticmethod
    def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
        """Both are floating-point tensors of one shape (no broadcasting: a mismatch is a caller's bug)."""
        check_float_tensor(a, name_a)
        check_float_tensor(b, name_b)
        if a.shape != b.shape:
            raise ValueError(f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has shape {tuple(b.shape)}.")

    def predict_original_sample(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """
        x̂_0 from the model output: DDPM eq. 15 for ε, the output itself for "sample", √ᾱ_t x_t − √(1−ᾱ_t) v for "v".
        Not clipped (`step` clips or thresholds per the config).

        Args:
            model_output (`torch.Tensor`): the model's prediction, of the sample's shape.
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): diffusers' t (paper t + 1), int, 0-d, or one per batch element.

        Returns:
            `torch.Tensor`: x̂_0 in the sample's dtype.
        """
        self._check_same_shape(model_output, sample, "model_output", "sample")
        return self._x0_and_noise(model_output, sample, self._as_timesteps(timesteps, sample))[0]

    def predict_noise(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """
        ε̂ from the model output, whatever the prediction type (eq. 4 solved for ε, or √ᾱ_t v + √(1−ᾱ_t) x_t).

        Args:
            model_output (`torch.Tensor`): the model's prediction, of the sample's shape.
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): diffusers' t (paper t + 1), int, 0-d, or one per batch element.

        Returns:
            `torch.Tensor`: ε̂ in the sample's dtype.
        """
        self._check_same_shape(model_output, sample, "model_output", "sample")
        return self._x0_and_noise(model_output, sample, self._as_timesteps(timesteps, sample))[1]

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """
        Samples q(x_t | x_0) (DDPM eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. Never syncs an accelerator.

        Args:
            original_samples (`torch.Tensor`): x_0.
            noise (`torch.Tensor`): ε, of x_0's shape.
            timesteps (`int` or `torch.Tensor`): diffusers' t (paper t + 1), int, 0-d, or one per batch element.

        Returns:
            `torch.Tensor`: x_t in x_0's dtype.
        """
        self._check_same_shape(noise, original_samples, "noise", "original_samples")
        t = self._as_timesteps(timesteps, original_samples)
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._noise_levels(t, original_samples)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor) -> torch.Tensor:
        """
        The v-prediction target v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022).

        Args:
            sample (`torch.Tensor`): x_0 (named `sample` as in diffusers).
            noise (`torch.Tensor`): ε, of x_0's shape.
            timesteps (`int` or `torch.Tensor`): diffusers' t (paper t + 1), int, 0-d, or one per batch element.

        Returns:
            `torch.Tensor`: v in the sample's dtype.
        """
        self._check_same_shape(noise, sample, "noise", "sample")
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._noise_levels(self._as_timesteps(timesteps, sample), sample)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def _clip_or_threshold(self, pred_original_sample: torch.Tensor, clip_sample: bool | None = None) -> torch.Tensor:
        """Dynamic thresholding or clipping of x̂_0 per the config (`clip_sample=False` turns both off)."""
        if clip_sample is False:
            return pred_original_sample
        if self.config.thresholding:
            return self._threshold_sample(pred_original_sample)
        if self.config.clip_sample or clip_sample:
            limit = self.config.clip_sample_range
            return pred_original_sample.clamp(-limit, limit)
        return pred_original_sample
