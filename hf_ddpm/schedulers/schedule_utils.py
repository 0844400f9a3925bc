"""What hf_ddpm's DDPM and DDIM schedulers share, written once.

- Timestep schedules: diffusers' spacings plus DDIM's quadratic sub-sequence (App. D.2) and validated custom lists.
- The chain coefficients: for a sampling chain that steps from each scheduled timestep `t` to the next element of
  its schedule `prev`, the float64 tables of ᾱ_prev, β_t = 1 - ᾱ_t / ᾱ_prev and the posterior q(x_prev | x_t, x_0)
  of DDPM eq. 6-7. With the full chain (`prev = t - 1`) these are exactly the paper's tables.
- `DiffusionChainMixin`: `set_timesteps`, `previous_timestep`, x̂_0 / ε̂ from any prediction type (DDPM eq. 15),
  `add_noise` (eq. 4), `get_velocity`, and the cached per-device gathers they all use.
- Gaussian helpers for the variational bound: `normal_kl` and `discretized_gaussian_log_likelihood` (DDPM eq. 13).

Timestep convention: diffusers' timestep `t` is 0-indexed (0 .. T-1); it is the paper's `t + 1`. So diffusers' t = 0
is the paper's t = 1 (the decoder step) and diffusers' t = T - 1 is the paper's t = T.
"""

import math
from typing import Any

import numpy as np
import torch

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "quadratic")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# Marks, in the `prev_timesteps` table, a timestep that is not in the set schedule.
UNSCHEDULED = -2

# Fraction of T that DDIM's quadratic sub-sequence reaches (DDIM App. D.2: "about 0.8 T").
QUADRATIC_SPAN = 0.8


def _check_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(
            f"`num_inference_steps` must be an int in [1, {num_train_timesteps}] (num_train_timesteps), got "
            f"{num_inference_steps!r}."
        )
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"`num_inference_steps` must be in [1, {num_train_timesteps}] (num_train_timesteps), got "
            f"{num_inference_steps}."
        )
    return int(num_inference_steps)


def quadratic_timesteps(num_inference_steps: int, num_train_timesteps: int) -> np.ndarray:
    """
    DDIM's quadratic sub-sequence (DDIM App. D.2, the paper's CIFAR10 setting), descending.

    τ_i = ⌊c·i²⌋ for i = 0 .. S-1 with c chosen so that τ_{S-1} = ⌊0.8·T⌋, as in the original DDIM code
    (`np.linspace(0, sqrt(0.8 T), S) ** 2`). When S is so large that ⌊c·i²⌋ would repeat (small i), each τ_i is
    raised to τ_{i-1} + 1: the schedule starts with unit steps and joins the quadratic curve once it grows faster than
    1 per index. This never produces a duplicate and never exceeds T - 1 (τ_{S-1} ≤ max(⌊0.8·T⌋, S - 1)).

    Args:
        num_inference_steps (`int`):
            The number of sampling steps S, in [1, T].
        num_train_timesteps (`int`):
            The number of training timesteps T.

    Returns:
        `np.ndarray`: int64 timesteps (diffusers' 0-indexed convention), strictly descending, ending at 0.
    """
    if num_inference_steps == 1:
        return np.zeros(1, dtype=np.int64)
    # Same floating-point recipe as the original code, so the paper's sequences are reproduced exactly.
    curve = np.linspace(0, np.sqrt(num_train_timesteps * QUADRATIC_SPAN), num_inference_steps) ** 2
    taus = curve.astype(np.int64)  # ⌊c·i²⌋ (all values are non-negative)
    for i in range(1, len(taus)):
        taus[i] = max(taus[i], taus[i - 1] + 1)  # never a duplicate: at least one timestep per step
    return taus[::-1].copy()


def spaced_timesteps(
    timestep_spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """
    The descending timesteps of a sampling schedule with S = `num_inference_steps` steps.

    "linspace", "leading" and "trailing" are diffusers' spacings (Table 2 of Lin et al. 2023), computed exactly as
    diffusers does so the same configuration gives the same schedule; "quadratic" is DDIM App. D.2
    (see [`quadratic_timesteps`]). `steps_offset` applies to "leading" only, as in diffusers.

    Args:
        timestep_spacing (`str`):
            One of `"leading"`, `"trailing"`, `"linspace"`, `"quadratic"`.
        num_inference_steps (`int`):
            The number of sampling steps S, in [1, T].
        num_train_timesteps (`int`):
            The number of training timesteps T.
        steps_offset (`int`, defaults to `0`):
            Added to every "leading" timestep.

    Returns:
        `np.ndarray`: int64 timesteps in [0, T), strictly descending.
    """
    num_inference_steps = _check_num_inference_steps(num_inference_steps, num_train_timesteps)
    T, S = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, S).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        timesteps = (np.arange(0, S) * (T // S)).round()[::-1].copy().astype(np.int64) + steps_offset
        if timesteps[0] >= T:
            # diffusers indexes past the end here (e.g. steps_offset=1 with S=T); say so instead.
            raise ValueError(
                f'`steps_offset`={steps_offset} with `num_inference_steps`={S} and "leading" spacing puts timestep '
                f"{timesteps[0]} outside [0, {T}); use steps_offset < {T - (S - 1) * (T // S)} or another spacing."
            )
    elif timestep_spacing == "trailing":
        # diffusers' np.arange(T, 0, -T / S) yields S + 1 values for some S (e.g. S = 61 of T = 1000), the last
        # one becoming timestep -1; keep its first S values, which are diffusers' schedule whenever it is right.
        timesteps = np.round(np.arange(T, 0, -T / S)[:S]).astype(np.int64) - 1
    elif timestep_spacing == "quadratic":
        timesteps = quadratic_timesteps(S, T)
    else:
        raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
    return timesteps


def check_custom_timesteps(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """
    Validates a custom schedule passed to `set_timesteps(timesteps=[...])`.

    Args:
        timesteps (`list[int]`, `np.ndarray` or `torch.Tensor`):
            Integer timesteps, strictly descending, each in [0, T).
        num_train_timesteps (`int`):
            The number of training timesteps T.

    Returns:
        `np.ndarray`: the timesteps as int64.
    """
    values = timesteps.detach().cpu().numpy() if torch.is_tensor(timesteps) else np.asarray(timesteps)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`timesteps` must be a non-empty 1-d list of ints, got {timesteps!r}.")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.floating) or not np.all(values == np.round(values)):
            raise ValueError(f"`timesteps` must be integers, got {timesteps!r}.")
    values = values.astype(np.int64)
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"`timesteps` must be strictly descending (no duplicates), got {values.tolist()}.")
    if values[-1] < 0 or values[0] >= num_train_timesteps:
        raise ValueError(
            f"`timesteps` must lie in [0, {num_train_timesteps}) (num_train_timesteps), got {values.tolist()}."
        )
    return values


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """
    KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats.

    KL = ½ (log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²) / σ₂² − 1).

    Args:
        mean1 (`torch.Tensor`): mean of the first Gaussian.
        logvar1 (`torch.Tensor`): log variance of the first Gaussian.
        mean2 (`torch.Tensor`): mean of the second Gaussian.
        logvar2 (`torch.Tensor`): log variance of the second Gaussian.

    Returns:
        `torch.Tensor`: the broadcast elementwise KL.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """
    log P(x) of data on `num_bins` levels in [-1, 1] under a Gaussian discretized to those bins (DDPM eq. 13).

    Each level x owns the bin [x − δ, x + δ] with δ = 1 / (num_bins − 1) (bins of width 2/255 for 8-bit data); the
    outermost bins extend to −∞ and +∞, so the probabilities of all levels sum to 1. Uses the exact normal CDF and
    takes the difference on the side of the mean where it does not cancel.

    Args:
        x (`torch.Tensor`): data on the levels, in [-1, 1].
        means (`torch.Tensor`): Gaussian means (broadcast with `x`).
        log_scales (`torch.Tensor`): log standard deviations (½ log variance), broadcast with `x`.
        num_bins (`int`, defaults to `256`): the number of levels.

    Returns:
        `torch.Tensor`: elementwise log-probabilities in nats, in at least float32.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # log_ndtr has no half kernels; nats need the precision
    x, means, log_scales = x.to(dtype), means.to(dtype), log_scales.to(dtype)
    half_bin = 1.0 / (num_bins - 1)
    inv_stdv = torch.exp(-log_scales)
    upper = inv_stdv * (x - means + half_bin)
    lower = inv_stdv * (x - means - half_bin)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X ≤ x + δ): the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X ≥ x − δ): the highest bin
    # Inner bins: Φ(upper) − Φ(lower), or Φ(−lower) − Φ(−upper) above the mean, where Φ ≈ 1 would cancel.
    above = lower > 0
    mass = torch.where(
        above,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_mass = torch.log(mass.clamp(min=1e-12))
    edge = 1.0 - half_bin / 2  # halfway between the last two levels: robust to rounding of x
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mass))


def chain_coefficients(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """
    The float64 coefficients of one step t → prev of a sampling chain, given ᾱ_t and ᾱ_prev per timestep.

    For the full chain (ᾱ_prev = ᾱ_{t-1}, ᾱ_{-1} = 1) these are DDPM's tables; for a sub-sequence they are the same
    formulas with β_t = 1 − ᾱ_t / ᾱ_prev, as diffusers and DDIM do.

    Args:
        alphas_cumprod (`torch.Tensor`): ᾱ_t, float64.
        alphas_cumprod_prev (`torch.Tensor`): ᾱ_prev, float64 (same shape).

    Returns:
        `dict[str, torch.Tensor]`: `betas`, `posterior_variance`, `posterior_mean_coef1`, `posterior_mean_coef2`.
    """
    alphas = alphas_cumprod / alphas_cumprod_prev  # α_t of the step (= 1 − β_t)
    betas = 1.0 - alphas  # β_t = 1 − ᾱ_t / ᾱ_prev
    return {
        "betas": betas,
        # β̃_t = (1 − ᾱ_prev) / (1 − ᾱ_t) · β_t  (DDPM eq. 7); also σ_t(η=1)² of DDIM eq. 16
        "posterior_variance": (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * betas,
        # μ̃_t = coef1 · x_0 + coef2 · x_t  (DDPM eq. 7)
        "posterior_mean_coef1": alphas_cumprod_prev.sqrt() * betas / (1.0 - alphas_cumprod),  # √ᾱ_prev β_t/(1−ᾱ_t)
        "posterior_mean_coef2": alphas.sqrt() * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
    }


class DiffusionChainMixin:
    """
    Shared by hf_ddpm's `DDPMScheduler` and `DDIMScheduler` (placed before the diffusers parent in the bases).

    Holds the float64 coefficient tables of the current sampling chain, rebuilt only by `set_timesteps` (never per
    step), and gathers them cast to the sample's dtype and device with a cache per (table, device, dtype), so a
    sampling loop copies each table to the device once.

    Timestep arguments may be a Python int, a 0-d tensor, or a 1-d tensor with one timestep per batch element; values
    are broadcast over the sample's non-batch dimensions. Diffusers' timestep t (0 .. T-1) is the paper's t + 1.
    """

    # Subclasses: ᾱ used as "previous" after the last step of a schedule (1 for DDPM; DDIM's `set_alpha_to_one`).
    def _final_alpha_cumprod(self) -> float:
        return 1.0

    def _check_config(self) -> None:
        """Rejects unknown string options at construction, naming the argument and the allowed values."""
        if self.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.config.prediction_type!r}."
            )
        if self.config.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {self.config.timestep_spacing!r}."
            )

    def _init_tables(self) -> None:
        """Builds the full-chain float64 tables; called once from `__init__`."""
        T = self.config.num_train_timesteps
        # β_t exactly as the parent built it (same schedule, trained_betas, zero-SNR rescale), in float64 from here.
        betas = self.betas.to(torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # ᾱ_t = ∏_{s≤t} (1 − β_s)
        self.alphas_cumprod_f64 = alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()  # √ᾱ_t  (eq. 4 mean, eq. 15)
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()  # √(1 − ᾱ_t)  (eq. 4 std, eq. 15)
        self._table_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._set_chain(np.arange(T - 1, -1, -1, dtype=np.int64))

    def _set_chain(self, timesteps: np.ndarray) -> None:
        """
        Rebuilds the per-timestep step tables for the descending schedule `timesteps` (prev = next element, -1 after
        the last). Entries of timesteps outside the schedule are NaN and `prev_timesteps` holds `UNSCHEDULED` there.
        """
        T = self.config.num_train_timesteps
        prev = np.full(T, UNSCHEDULED, dtype=np.int64)
        prev[timesteps[:-1]] = timesteps[1:]
        prev[timesteps[-1]] = -1
        self.prev_timesteps = torch.from_numpy(prev)
        self._scheduled = set(timesteps.tolist())

        alphas_cumprod = self.alphas_cumprod_f64
        scheduled = torch.from_numpy(prev != UNSCHEDULED)
        alphas_cumprod_prev = torch.full((T,), float("nan"), dtype=torch.float64)
        inner = torch.from_numpy(prev >= 0)
        alphas_cumprod_prev[inner] = alphas_cumprod[self.prev_timesteps[inner]]
        alphas_cumprod_prev[self.prev_timesteps == -1] = self._final_alpha_cumprod()
        coefficients = chain_coefficients(alphas_cumprod, alphas_cumprod_prev)

        # The tables of the current chain, each indexed by diffusers' timestep t (the step t → prev):
        self.alphas_cumprod_prev = alphas_cumprod_prev  # ᾱ_prev (ᾱ after the last step: 1, or DDIM's final alpha)
        self.sqrt_alphas_cumprod_prev = alphas_cumprod_prev.sqrt()  # √ᾱ_prev  (DDIM eq. 12)
        self.one_minus_alphas_cumprod_prev = 1.0 - alphas_cumprod_prev  # 1 − ᾱ_prev  (DDIM eq. 12 direction)
        self.sqrt_one_minus_alphas_cumprod_prev = self.one_minus_alphas_cumprod_prev.sqrt()  # √(1 − ᾱ_prev)
        self.step_betas = coefficients["betas"]  # β_t = 1 − ᾱ_t / ᾱ_prev  ("fixed large"; σ̂_t² of DDIM)
        self.posterior_variance = coefficients["posterior_variance"]  # β̃_t  (DDPM eq. 7)
        self.posterior_mean_coef1 = coefficients["posterior_mean_coef1"]  # √ᾱ_prev β_t / (1 − ᾱ_t)
        self.posterior_mean_coef2 = coefficients["posterior_mean_coef2"]  # √α_t (1 − ᾱ_prev) / (1 − ᾱ_t)
        # The last step's β̃ is 0 (the decoder would be degenerate). As in the original DDPM code, the reverse
        # variance there is β̃ of the second-to-last step (paper: β̃_2 at t = 1), for both fixed variances.
        final = int(timesteps[-1])
        second = int(timesteps[-2]) if len(timesteps) > 1 else final
        floor = self.posterior_variance[second].clamp(min=1e-20)
        small = self.posterior_variance.clone()
        small[final] = floor
        large = self.step_betas.clone()
        large[final] = floor
        self.posterior_log_variance_clipped = small.log()  # log β̃_t, with the last step's β̃ → β̃ of the second
        self.fixed_small_variance = small  # σ_t² = β̃_t ("fixed small")
        self.fixed_large_variance = large  # σ_t² = β_t ("fixed large"), last step β̃ of the second
        self.fixed_large_log_variance = large.log()
        self.log_step_betas = self.step_betas.log()  # log β_t: the upper end of "learned_range"
        # σ̂_t = √β_t of DDIM's Table 1, with no noise on the last step (z = 0 there, DDPM Algorithm 2)
        sigma_hat = self.step_betas.sqrt()
        sigma_hat[final] = 0.0
        self.sigma_hat_table = sigma_hat
        # Largest η for which DDIM eq. 12 stays defined: 1 − ᾱ_prev − η² β̃_t ≥ 0.
        self.max_eta = torch.where(
            self.posterior_variance > 0,
            ((1.0 - alphas_cumprod_prev) / self.posterior_variance).sqrt(),
            torch.full_like(alphas_cumprod_prev, float("inf")),  # σ_t(η) = 0 for every η: always defined
        )
        self.max_eta[~scheduled] = float("nan")
        self._table_cache.clear()
        self._validated: tuple[torch.Tensor, int] | None = None  # (timesteps tensor, its version) checked last

    # ----------------------------------------------------------------------------------------------------------------
    # Timestep handling

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
        Normalizes a timestep argument: Python/NumPy ints stay ints; tensors become int64 tensors (0-d or 1-d).

        Checks the range [0, T) for ints and CPU tensors (checking an accelerator tensor would sync the device on
        every training step). With `scheduled=True` (steps, posterior quantities), a 0-d tensor becomes an int (one
        sync, as the parent's step) and the timesteps must be in the set schedule.
        """
        T = self.config.num_train_timesteps
        if isinstance(timesteps, (int, np.integer)) and not isinstance(timesteps, bool):
            value = int(timesteps)
            if not 0 <= value < T:
                raise ValueError(f"`{name}` must be in [0, {T}) (num_train_timesteps), got {value}.")
            if scheduled and value not in self._scheduled:
                self._raise_unscheduled(value, name)
            return value
        if not torch.is_tensor(timesteps):
            raise ValueError(f"`{name}` must be an int or a 0-d/1-d integer tensor, got {type(timesteps).__name__}.")
        if timesteps.ndim > 1:
            raise ValueError(
                f"`{name}` must be 0-d or 1-d (one per batch element), got shape {tuple(timesteps.shape)}."
            )
        if timesteps.is_floating_point():
            timesteps = timesteps.round()
        timesteps = timesteps.long()
        if timesteps.ndim == 0 and scheduled:
            return self._as_timesteps(int(timesteps), like, scheduled, name)
        if like is not None and timesteps.ndim == 1 and timesteps.shape[0] not in (1, like.shape[0]):
            raise ValueError(
                f"`{name}` has {timesteps.shape[0]} entries but the sample's batch size is {like.shape[0]}; pass one "
                "timestep, or one per batch element."
            )
        checked = self._validated
        if scheduled and checked is not None and checked[0] is timesteps and checked[1] == timesteps._version:
            return timesteps  # already checked by the public method that called this one: no second device sync
        if timesteps.device.type == "cpu" or scheduled:
            out_of_range = (timesteps < 0) | (timesteps >= T)
            bad = out_of_range
            if scheduled:
                prev = self._table("prev_timesteps", timesteps.device, torch.int64)[timesteps.clamp(0, T - 1)]
                bad = out_of_range | (prev == UNSCHEDULED)
            if bool(bad.any()):  # the one device sync of a check; the messages below are the error path only
                if bool(out_of_range.any()):
                    raise ValueError(f"`{name}` must be in [0, {T}) (num_train_timesteps), got {timesteps.tolist()}.")
                self._raise_unscheduled(timesteps.tolist(), name)
            if scheduled:
                self._validated = (timesteps, timesteps._version)
        return timesteps

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

        Every step then goes from a scheduled timestep to the next element of the schedule (`previous_timestep`);
        after the last one comes -1 (clean data).

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
            self.custom_timesteps = True
        else:
            schedule = spaced_timesteps(self.config.timestep_spacing, num_inference_steps, T, self.config.steps_offset)
            self.custom_timesteps = False
        self.num_inference_steps = len(schedule)
        self._set_chain(schedule)
        self.timesteps = torch.from_numpy(schedule).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """
        The timestep a step from `timestep` lands on: the next element of the set schedule, -1 after the last.

        Args:
            timestep (`int` or `torch.Tensor`):
                A scheduled timestep (or a 1-d tensor of them).

        Returns:
            `int` or `torch.Tensor`: an int for an int, otherwise an int64 tensor on the timestep's device.
        """
        t = self._as_timesteps(timestep, scheduled=True, name="timestep")
        if isinstance(t, int):
            prev = int(self.prev_timesteps[t])
            return torch.tensor(prev, device=timestep.device) if torch.is_tensor(timestep) else prev
        return self._table("prev_timesteps", t.device, torch.int64)[t]

    # ----------------------------------------------------------------------------------------------------------------
    # Prediction types (DDPM eq. 15 and its sample / v forms)

    def _x0_and_noise(
        self, model_output: torch.Tensor, sample: torch.Tensor, sqrt_alpha_prod: Any, sqrt_one_minus_alpha_prod: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from the model output, given √ᾱ and √(1 − ᾱ) of the sample's noise level."""
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            noise = model_output
            pred_original_sample = self._original_sample_from_noise(
                noise, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod
            )
        elif prediction_type == "sample":
            pred_original_sample = model_output
            noise = self._noise_from_original_sample(
                pred_original_sample, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod
            )
        elif prediction_type == "v_prediction":
            # v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022), so x_0 = √ᾱ x_t − √(1−ᾱ) v and ε = √ᾱ v + √(1−ᾱ) x_t.
            pred_original_sample = sqrt_alpha_prod * sample - sqrt_one_minus_alpha_prod * model_output
            noise = sqrt_alpha_prod * model_output + sqrt_one_minus_alpha_prod * sample
        else:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        return pred_original_sample, noise

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

    def _check_same_shape(self, a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
        if a.shape != b.shape:
            raise ValueError(f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has shape {tuple(b.shape)}.")

    def _noise_levels(self, timesteps: int | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self._gather("sqrt_alphas_cumprod", timesteps, like),
            self._gather("sqrt_one_minus_alphas_cumprod", timesteps, like),
        )

    def predict_original_sample(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """
        x̂_0 from the model output (DDPM eq. 15 for ε; identity for "sample"; √ᾱ_t x_t − √(1−ᾱ_t) v for "v").

        Not clipped; `step` clips or thresholds per the config.

        Args:
            model_output (`torch.Tensor`): the model's prediction, of the sample's shape.
            sample (`torch.Tensor`): x_t.
            timesteps (`int` or `torch.Tensor`): diffusers' t (paper t + 1), int, 0-d, or one per batch element.

        Returns:
            `torch.Tensor`: x̂_0 in the sample's dtype.
        """
        self._check_same_shape(model_output, sample, "model_output", "sample")
        t = self._as_timesteps(timesteps, sample)
        return self._x0_and_noise(model_output, sample, *self._noise_levels(t, sample))[0]

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
        t = self._as_timesteps(timesteps, sample)
        return self._x0_and_noise(model_output, sample, *self._noise_levels(t, sample))[1]

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """
        Samples q(x_t | x_0) (DDPM eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.

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
        t = self._as_timesteps(timesteps, sample)
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._noise_levels(t, sample)
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


def check_eta(eta: float) -> float:
    """η must be a finite, non-negative number (DDIM eq. 16)."""
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"`eta` must be a finite number ≥ 0 (0: DDIM, 1: DDPM's fixed small), got {eta!r}.")
    return float(eta)
