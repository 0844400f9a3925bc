"""Negative log-likelihood bounds in bits/dim: the variational bound of DDPM eq. 5, term by term.

L = L_T + Σ_{t=2}^{T} L_{t−1} + L_0 with
- L_T = KL(q(x_T | x_0) ‖ N(0, I)) (the prior term, `DDPMScheduler.prior_kl`),
- L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) (`DDPMScheduler.posterior_kl`, via `vlb_terms`),
- L_0 = −log p_θ(x_0 | x_1), the discretized Gaussian decoder of eq. 13 (`DDPMScheduler.decoder_nll`).

Every coefficient comes from the scheduler; this module only draws x_t ~ q(x_t | x_0) (eq. 4), runs the network and
adds the terms up. Nats per image are divided by D·ln 2 (D = C·H·W) to give bits/dim, the unit of DDPM Table 1.

Timestep convention: diffusers' t (0 .. T−1) is the paper's t + 1, so diffusers' t = 0 is the decoder term L_0 and
diffusers' t = 1 .. T−1 are the KL terms L_1 .. L_{T−1}.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from hf_ddpm.schedulers.scheduling_ddpm import VARIANCE_TYPES, DDPMScheduler

__all__ = ["BitsPerDimOutput", "bits_per_dim", "check_image_grid", "strided_timesteps", "vlb_scheduler"]

NUM_LEVELS = 256  # 8-bit data: {0 .. 255} scaled linearly to [-1, 1] (DDPM §4)
# Images a float round trip left a hair off the grid or the range (e.g. x / 127.5 − 1 in float32) are accepted.
_GRID_TOLERANCE = 1e-3  # in units of one level
_RANGE_TOLERANCE = 1e-4


@dataclass
class BitsPerDimOutput(BaseOutput):
    """
    The bound of DDPM eq. 5 per image, and its terms, all in bits/dim.

    Args:
        bits_per_dim (`torch.Tensor`):
            Shape (N,): the bound (or its strided estimate) per image, `prior + decoder + (weights · terms).sum(1)`.
        prior (`torch.Tensor`):
            Shape (N,): L_T, exact.
        decoder (`torch.Tensor`):
            Shape (N,): L_0 (eq. 13), one draw of x_1.
        terms (`torch.Tensor`):
            Shape (N, K): L_{t−1} at each evaluated timestep, one draw of x_t each, unweighted.
        timesteps (`torch.Tensor`):
            Shape (K,): the diffusers timesteps t of `terms` (1 .. T−1; the paper's t + 1).
        weights (`torch.Tensor`):
            Shape (K,): the factor on each column of `terms` (all 1 for the full sum; see [`strided_timesteps`]).
    """

    bits_per_dim: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor
    terms: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor


def vlb_scheduler(scheduler, variance_type: str | None = None) -> DDPMScheduler:
    """
    hf_ddpm's `DDPMScheduler` with `scheduler`'s config and the full chain (t → t − 1), for the bound.

    The bound is that of DDPM's full chain whatever the pipeline samples with: keys a DDPM scheduler does not take
    (e.g. DDIM's `set_alpha_to_one`) are dropped, and a scheduler without `variance_type` gets "fixed_small".

    Args:
        scheduler (`diffusers.SchedulerMixin`):
            Any scheduler with a diffusers config (β schedule, T, prediction type...).
        variance_type (`str`, *optional*):
            Override the reverse variance σ_t²: one of `VARIANCE_TYPES` ("fixed_small", "fixed_large",
            "learned_range", ...). `None` keeps the config's.

    Returns:
        [`~hf_ddpm.schedulers.scheduling_ddpm.DDPMScheduler`]
    """
    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(scheduler.config).items() if k in accepted}
    if variance_type is not None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"`variance_type` must be one of {VARIANCE_TYPES}, got {variance_type!r}.")
        config["variance_type"] = variance_type
    return DDPMScheduler.from_config(config)


def check_image_grid(images: torch.Tensor, quantize: bool = False, num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """
    Checks that images are 8-bit data in the model's space: in [−1, 1] and on the `num_levels` levels k/127.5 − 1.

    The decoder of eq. 13 is a distribution over those levels, so values outside [−1, 1] are an error, and values
    between levels are one unless `quantize=True` rounds them.

    Args:
        images (`torch.Tensor`):
            Float images, batch first, in [−1, 1].
        quantize (`bool`, defaults to `False`):
            Round off-grid values to the nearest level instead of raising.
        num_levels (`int`, defaults to 256):
            Number of levels (256 for 8-bit data).

    Returns:
        `torch.Tensor`: the images exactly on the grid, float32 (or float64 if given), clamped to [−1, 1].
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise ValueError(
            f"`images` must be a floating-point torch.Tensor in [-1, 1], got "
            f"{images.dtype if torch.is_tensor(images) else type(images).__name__}."
        )
    if images.numel() == 0:
        raise ValueError(f"`images` is empty (shape {tuple(images.shape)}).")
    x = images.to(torch.promote_types(images.dtype, torch.float32))
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"`images` must lie in [-1, 1] (8-bit data scaled as x / 127.5 - 1, DDPM §4), got values in "
            f"[{lo:.4g}, {hi:.4g}]. Images in [0, 1] need 2 * x - 1; images in [0, 255] need x / 127.5 - 1."
        )
    half_range = (num_levels - 1) / 2
    levels = (x.clamp(-1, 1) + 1) * half_range
    off_grid = float((levels - levels.round()).abs().max())
    if off_grid > _GRID_TOLERANCE and not quantize:
        raise ValueError(
            f"`images` are not on the {num_levels}-level grid k / {half_range:g} - 1 (k = 0 .. {num_levels - 1}): a "
            f"value lies {off_grid:.3g} levels from the nearest one. The bound's decoder (DDPM eq. 13) is a "
            "distribution over those levels; pass `quantize=True` to round to them."
        )
    return levels.round() / half_range - 1


def strided_timesteps(
    num_train_timesteps: int, num_timesteps: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    K of the T − 1 KL timesteps and weights that make their weighted sum an unbiased estimate of the full sum:

    Σ_{t=1}^{T−1} L_t ≈ Σ_{t=1}^{H} L_t + Σ_k L_{t_k} / π_{t_k}.

    L_t falls roughly like 1/t, so the head t = 1 .. H (H = ⌊K/2⌋, raised until every π_t ≤ 1) is evaluated
    exactly, and the K − H tail timesteps are drawn by systematic sampling with inclusion probabilities
    π_t ∝ 1/t (sizes laid end to end, points U, U + 1, ..., U ~ Uniform[0, 1) from `generator`). Each t is then
    drawn with probability π_t, at most once, so the weights 1/π_t give the Horvitz-Thompson estimate, and the
    1/t sizes keep the weighted terms, hence its variance, small. K ≥ T − 1 returns every timestep with weight 1.

    Args:
        num_train_timesteps (`int`):
            T.
        num_timesteps (`int`):
            K, the number of KL terms to evaluate, ≥ 1.
        generator (`torch.Generator`, *optional*):
            Source of the random phase U.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: int64 timesteps (ascending) and float64 weights, both (K,) on the CPU.
    """
    num_kl = num_train_timesteps - 1
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"`timesteps` must be None (all {num_kl} KL terms) or an int K in [1, {num_kl}] (a strided estimate), "
            f"got {num_timesteps!r}."
        )
    if num_timesteps >= num_kl:
        return torch.arange(1, num_train_timesteps, dtype=torch.int64), torch.ones(num_kl, dtype=torch.float64)
    head = num_timesteps // 2
    while True:
        tail_timesteps = torch.arange(head + 1, num_train_timesteps, dtype=torch.float64)
        sizes = (num_timesteps - head) / tail_timesteps  # π_t ∝ 1/t, summing to the number of tail draws
        sizes = sizes * ((num_timesteps - head) / sizes.sum())
        if sizes[0] <= 1.0 or head == num_timesteps - 1:
            break
        head += 1  # a certain timestep belongs in the exact head
    sizes = sizes.clamp(max=1.0)
    device = generator.device if generator is not None else "cpu"
    phase = float(torch.rand((), generator=generator, device=device, dtype=torch.float64))
    points = phase + torch.arange(num_timesteps - head, dtype=torch.float64)
    ends = sizes.cumsum(0)  # timestep H+1+i owns [ends[i] − π, ends[i])
    index = torch.searchsorted(ends, points, right=True).clamp(max=len(sizes) - 1)
    timesteps = torch.cat([torch.arange(1, head + 1, dtype=torch.int64), tail_timesteps[index].long()])
    weights = torch.cat([torch.ones(head, dtype=torch.float64), 1.0 / sizes[index]])
    return timesteps, weights


@torch.no_grad()
def bits_per_dim(
    pipeline,
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    timesteps: int | None = None,
    batch_size: int | None = None,
    quantize: bool = False,
    variance_type: str | None = None,
    class_labels: torch.Tensor | None = None,
    return_terms: bool = False,
) -> torch.Tensor | BitsPerDimOutput:
    r"""
    The variational bound on −log p_θ(x_0) of DDPM eq. 5, in bits/dim, per image.

    L_T is exact (`prior_kl`); every other term is a one-draw Monte-Carlo estimate at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    (eq. 4, `add_noise`) through the scheduler's `vlb_terms` (L_{t−1} for t ≥ 1, the decoder L_0 of eq. 13 at t = 0),
    so the result is an unbiased estimate of the bound; its mean over images is DDPM Table 1's NLL column.
    `timesteps=None` sums every KL term (T network calls per image); `timesteps=K` is the unbiased strided estimate
    of [`strided_timesteps`] (K + 1 calls). The reverse variance follows the scheduler's `variance_type`; x̂_0 is not
    clipped, since clipping would change μ_θ and with it the density.

    Args:
        pipeline (`DDPMPipeline` or any pipeline with `unet` and `scheduler`):
            The model; the bound uses a `DDPMScheduler` of its scheduler's config ([`vlb_scheduler`]).
        images (`torch.Tensor`):
            x_0, (N, C, H, W) matching the UNet, on the 256-level grid k/127.5 − 1 of [−1, 1] ([`check_image_grid`]).
        generator (`torch.Generator`, *optional*, defaults to `None`):
            Source of the noise ε (and of the strided timesteps' phase); same generator state, same result.
        timesteps (`int`, *optional*, defaults to `None`):
            `None` for every timestep, or K for the strided estimate above.
        batch_size (`int`, *optional*, defaults to `None`):
            Images per network call; `None` sends all N at once.
        quantize (`bool`, *optional*, defaults to `False`):
            Round images that are off the 256-level grid to it instead of raising `ValueError`.
        variance_type (`str`, *optional*, defaults to `None`):
            Override the scheduler's `variance_type` for the bound (e.g. "fixed_large" for a DDIM-scheduled model).
        class_labels (`torch.Tensor`, *optional*, defaults to `None`):
            For a class-conditional UNet (required there), the label of each image, shape (N,): its class c for the
            bound on −log p_θ(x_0 | c), or the null label ∅ (index `num_class_embeds − 1`) for the unconditional
            −log p_θ(x_0). `None` for an unconditional UNet.
        return_terms (`bool`, *optional*, defaults to `False`):
            Return a [`BitsPerDimOutput`] with every term instead of the tensor of totals.

    Returns:
        `torch.Tensor` of shape (N,) (bits/dim per image, float32 on the CPU), or [`BitsPerDimOutput`].
    """
    unet = pipeline.unet
    scheduler = vlb_scheduler(pipeline.scheduler, variance_type)
    T = int(scheduler.config.num_train_timesteps)
    if T < 2:
        raise ValueError(f"the scheduler's `num_train_timesteps` must be ≥ 2 for a bound with KL terms, got {T}.")
    x0 = check_image_grid(images, quantize=quantize)
    expected = (unet.config.in_channels, *_sample_hw(unet.config.sample_size))
    if x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
        raise ValueError(
            f"`images` must have shape (N, {', '.join(map(str, expected))}) (N, C, H, W) to match the UNet, got "
            f"{tuple(images.shape)}."
        )
    _check_class_labels(unet, class_labels, len(x0))
    if batch_size is None:
        batch_size = len(x0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be None or an int ≥ 1, got {batch_size!r}.")

    if timesteps is None:
        kl_timesteps, weights = torch.arange(1, T, dtype=torch.int64), torch.ones(T - 1, dtype=torch.float64)
    else:
        kl_timesteps, weights = strided_timesteps(T, timesteps, generator)

    device = pipeline.device if hasattr(pipeline, "device") else x0.device
    x0 = x0.to(device)
    num_images, dims = len(x0), x0[0].numel()
    nats_to_bpd = 1.0 / (dims * math.log(2.0))

    prior = scheduler.prior_kl(x0).float().cpu()  # L_T, exact
    decoder = torch.zeros(num_images)
    terms = torch.zeros(num_images, len(kl_timesteps))
    # t = 0 first (the decoder), then the KL terms; one progress step per timestep.
    all_timesteps = [0] + kl_timesteps.tolist()
    for column, t in enumerate(pipeline.progress_bar(all_timesteps)):
        timestep = torch.tensor(t, device=device)
        for start in range(0, num_images, batch_size):
            chunk = x0[start : start + batch_size]
            noise = randn_tensor(chunk.shape, generator=generator, device=device, dtype=chunk.dtype)
            x_t = scheduler.add_noise(chunk, noise, t)  # eq. 4
            labels = (
                {} if class_labels is None else {"class_labels": class_labels[start : start + batch_size].to(device)}
            )
            model_output = unet(x_t.to(unet.dtype), timestep, **labels).sample.to(chunk.dtype)
            nats = scheduler.vlb_terms(model_output, chunk, x_t, t).float().cpu()  # L_0 at t = 0, else L_{t-1}
            if t == 0:
                decoder[start : start + batch_size] = nats
            else:
                terms[start : start + batch_size, column - 1] = nats

    prior, decoder, terms = prior * nats_to_bpd, decoder * nats_to_bpd, terms * nats_to_bpd
    total = prior + decoder + (terms * weights.float()).sum(dim=1)
    if not return_terms:
        return total
    return BitsPerDimOutput(
        bits_per_dim=total, prior=prior, decoder=decoder, terms=terms, timesteps=kl_timesteps, weights=weights
    )


def _check_class_labels(unet, class_labels: torch.Tensor | None, num_images: int) -> None:
    num_class_embeds = unet.config.get("num_class_embeds")
    if num_class_embeds is None:
        if class_labels is not None:
            raise ValueError("`class_labels` were given but the UNet is unconditional (no num_class_embeds).")
        return
    if class_labels is None:
        raise ValueError(
            f"the UNet is class-conditional ({num_class_embeds} class embeddings): pass `class_labels`, each image's "
            f"class for −log p(x | c), or the null label {num_class_embeds - 1} for the unconditional −log p(x)."
        )
    if class_labels.shape != (num_images,) or class_labels.dtype != torch.long:
        raise ValueError(
            f"`class_labels` must be a long tensor of shape ({num_images},), one per image, got "
            f"{class_labels.dtype} of shape {tuple(class_labels.shape)}."
        )


def _sample_hw(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
