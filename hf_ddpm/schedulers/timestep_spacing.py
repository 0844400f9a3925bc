"""Sampling schedules: diffusers' spacings, DDIM's quadratic sub-sequence (App. D.2) and checked custom lists.

Diffusers' timestep t is 0-indexed (0 .. T-1): it is the paper's t + 1.
"""

from typing import Any, Literal, get_args

import numpy as np
import torch

TimestepSpacing = Literal["leading", "trailing", "linspace", "quadratic"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)

# Fraction of T that DDIM's quadratic sub-sequence reaches (DDIM App. D.2: "about 0.8 T").
QUADRATIC_SPAN = 0.8


def check_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int) -> int:
    """Returns `num_inference_steps` as an int after checking it is an integer in [1, T]."""
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

    τ_i = ⌊c·i²⌋ for i = 0 .. S-1 with τ_{S-1} = ⌊0.8·T⌋, as the original code's
    `np.linspace(0, sqrt(0.8 T), S) ** 2`. Where ⌊c·i²⌋ would repeat (large S, small i), τ_i is raised to
    τ_{i-1} + 1, so there are no duplicates and τ_{S-1} ≤ max(⌊0.8·T⌋, S - 1) ≤ T - 1.

    Args:
        num_inference_steps (`int`): the number of sampling steps S, in [1, T].
        num_train_timesteps (`int`): the number of training timesteps T.

    Returns:
        `np.ndarray`: int64 timesteps, strictly descending, ending at 0.
    """
    if num_inference_steps == 1:
        return np.zeros(1, dtype=np.int64)
    # Same floating-point recipe as the original code, so the paper's sequences are reproduced exactly.
    curve = np.linspace(0, np.sqrt(num_train_timesteps * QUADRATIC_SPAN), num_inference_steps) ** 2
    taus = curve.astype(np.int64)  # ⌊c·i²⌋ (all values are non-negative)
    for i in range(1, len(taus)):
        taus[i] = max(taus[i], taus[i - 1] + 1)  # at least one timestep per step
    return taus[::-1].copy()


def spaced_timesteps(
    timestep_spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """
    The descending timesteps of a sampling schedule with S = `num_inference_steps` steps.

    "linspace", "leading" and "trailing" are computed as diffusers does (Table 2 of Lin et al. 2023), so the same
    configuration gives the same schedule; "quadratic" is [`quadratic_timesteps`].

    Args:
        timestep_spacing (`str`): one of `TIMESTEP_SPACINGS`.
        num_inference_steps (`int`): the number of sampling steps S, in [1, T].
        num_train_timesteps (`int`): the number of training timesteps T.
        steps_offset (`int`, defaults to `0`): added to every "leading" timestep, as in diffusers.

    Returns:
        `np.ndarray`: int64 timesteps in [0, T), strictly descending.
    """
    S = check_num_inference_steps(num_inference_steps, num_train_timesteps)
    T = num_train_timesteps
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, S).round()[::-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        timesteps = (np.arange(0, S) * (T // S)).round()[::-1].copy().astype(np.int64) + steps_offset
        if timesteps[0] >= T:  # diffusers indexes past the end here (e.g. steps_offset=1 with S=T)
            raise ValueError(
                f'`steps_offset`={steps_offset} with `num_inference_steps`={S} and "leading" spacing puts timestep '
                f"{timesteps[0]} outside [0, {T}); use steps_offset < {T - (S - 1) * (T // S)} or another spacing."
            )
        return timesteps
    if timestep_spacing == "trailing":
        # diffusers' np.arange(T, 0, -T / S) yields S + 1 values for some S (e.g. S = 61 of T = 1000), the last
        # one becoming timestep -1; keep its first S values, which are diffusers' schedule whenever it is right.
        return np.round(np.arange(T, 0, -T / S)[:S]).astype(np.int64) - 1
    if timestep_spacing == "quadratic":
        return quadratic_timesteps(S, T)
    raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")


def check_custom_timesteps(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """
    Checks a custom schedule passed to `set_timesteps(timesteps=[...])`.

    Args:
        timesteps (`list[int]`, `np.ndarray` or `torch.Tensor`): integers, strictly descending, each in [0, T).
        num_train_timesteps (`int`): the number of training timesteps T.

    Returns:
        `np.ndarray`: the timesteps as int64.
    """
    values = timesteps.detach().cpu().numpy() if torch.is_tensor(timesteps) else np.asarray(timesteps)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`timesteps` must be a non-empty 1-d list of ints, got {timesteps!r}.")
    integral = np.issubdtype(values.dtype, np.integer) or (
        np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values))
    )
    if not integral:
        raise ValueError(f"`timesteps` must be integers, got {timesteps!r}.")
    values = values.astype(np.int64)
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"`timesteps` must be strictly descending (no duplicates), got {values.tolist()}.")
    if values[-1] < 0 or values[0] >= num_train_timesteps:
        raise ValueError(
            f"`timesteps` must lie in [0, {num_train_timesteps}) (num_train_timesteps), got {values.tolist()}."
        )
    return values
