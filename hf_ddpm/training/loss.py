"""The DDPM training objectives, written against the scheduler's methods (the math lives there, once).

- L_simple (DDPM eq. 14): ‖target − f_θ(x_t, t)‖², where the target is ε, x_0 or v by the scheduler's
  `prediction_type`, and x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε comes from the scheduler's `add_noise` (eq. 4).
- hybrid (Nichol & Dhariwal 2021, eq. 16): L_simple + λ·L_vlb for a learned variance, with L_vlb's term at t taken
  from the scheduler's `vlb_terms` (the KL terms of DDPM eq. 5 and the decoder NLL of eq. 13).
- classifier-free guidance (Ho & Salimans 2022, Algorithm 1): a class-conditional network is trained on labels that
  `drop_class_labels` replaces by the null label ∅ with probability p_uncond.
"""

import math

import torch
import torch.nn.functional as F

from hf_ddpm.schedulers import PREDICTION_TYPES
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES

__all__ = ["LOSS_TYPES", "diffusion_loss", "drop_class_labels", "training_target"]

LOSS_TYPES = ("simple", "hybrid")


def training_target(
    scheduler, clean_images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """
    What the network is trained to output for `scheduler.config.prediction_type`.

    Args:
        scheduler (`hf_ddpm.schedulers.scheduling_ddpm.DDPMScheduler`):
            The noise scheduler (its `get_velocity` gives v).
        clean_images (`torch.Tensor`):
            x_0, shape `[B, C, H, W]`.
        noise (`torch.Tensor`):
            ε, same shape.
        timesteps (`torch.Tensor`):
            t per example, shape `[B]`.

    Returns:
        `torch.Tensor`: ε, x_0 or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return clean_images
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean_images, noise, timesteps)
    raise ValueError(f"scheduler.config.prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def diffusion_loss(
    model_output: torch.Tensor,
    scheduler,
    clean_images: torch.Tensor,
    noise: torch.Tensor,
    noisy_images: torch.Tensor,
    timesteps: torch.Tensor,
    loss_type: str = "simple",
    vlb_weight: float = 0.001,
) -> dict[str, torch.Tensor]:
    """
    The training loss of one batch.

    Args:
        model_output (`torch.Tensor`):
            The UNet's output at (x_t, t): `[B, C, H, W]`, or `[B, 2C, H, W]` (prediction, then variance values) for
            a learned variance.
        scheduler (`hf_ddpm.schedulers.scheduling_ddpm.DDPMScheduler`):
            The noise scheduler that made `noisy_images`.
        clean_images (`torch.Tensor`):
            x_0, `[B, C, H, W]`.
        noise (`torch.Tensor`):
            ε, `[B, C, H, W]`.
        noisy_images (`torch.Tensor`):
            x_t = `scheduler.add_noise(clean_images, noise, timesteps)`.
        timesteps (`torch.Tensor`):
            t per example, `[B]`.
        loss_type (`str`, *optional*, defaults to `"simple"`):
            `"simple"` (L_simple, eq. 14) or `"hybrid"` (L_simple + λ·L_vlb, learned variance only).
        vlb_weight (`float`, *optional*, defaults to `0.001`):
            λ of the hybrid loss.

    Returns:
        `dict[str, torch.Tensor]`: `"loss"` (the scalar to minimize), `"mse"` (L_simple), and for the hybrid loss
        `"vlb"` (the batch mean of L_t in bits per dimension).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}.")
    channels = clean_images.shape[1]
    learned_variance = scheduler.config.variance_type in LEARNED_VARIANCE_TYPES
    if learned_variance:
        prediction, variance_values = model_output.split(channels, dim=1)
    else:
        prediction = model_output
    if loss_type == "hybrid" and not learned_variance:
        raise ValueError(
            f"loss_type 'hybrid' needs a scheduler with a learned variance_type, got "
            f"{scheduler.config.variance_type!r}."
        )

    target = training_target(scheduler, clean_images, noise, timesteps)
    # L_simple (eq. 14), computed in float32 so mixed precision does not round the loss itself.
    mse = F.mse_loss(prediction.float(), target.float())
    losses = {"loss": mse, "mse": mse}
    if loss_type == "hybrid":
        # The mean is trained by L_simple alone; L_vlb only trains the variance (Nichol & Dhariwal Sec. 3.1),
        # hence the stop-gradient on the prediction.
        frozen_output = torch.cat([prediction.detach(), variance_values], dim=1).float()
        vlb_nats = scheduler.vlb_terms(frozen_output, clean_images.float(), noisy_images.float(), timesteps)
        # nats per image → bits per dimension, then L_vlb = Σ_t L_t ≈ T · E_t[L_t] (t is uniform).
        num_dims = clean_images[0].numel()
        vlb_bits_per_dim = vlb_nats / (num_dims * math.log(2.0))
        vlb = scheduler.config.num_train_timesteps * vlb_bits_per_dim.mean()
        losses["vlb"] = vlb_bits_per_dim.mean()
        losses["loss"] = mse + vlb_weight * vlb
    return losses


def drop_class_labels(
    class_labels: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """
    c ← ∅ with probability p_uncond, independently per label (Ho & Salimans 2022, Algorithm 1), so that the same
    network learns ε_θ(x_t, t, c) and the unconditional ε_θ(x_t, t, ∅).

    Args:
        class_labels (`torch.Tensor`):
            c per example, int64 `[B]` in [0, num_classes).
        p_uncond (`float`):
            The probability in [0, 1) of dropping a label.
        null_label (`int`):
            ∅: index `num_classes`, the last row of the UNet's class embedding (as in diffusers' `DiTPipeline`).
        generator (`torch.Generator`, *optional*, defaults to `None`):
            Source of the draws; `None` uses the global RNG (which the training loop reseeds per micro-batch).

    Returns:
        `torch.Tensor`: the labels, with ∅ where dropped.
    """
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond must be a probability in [0, 1), got {p_uncond!r}.")
    dropped = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < p_uncond
    return class_labels.masked_fill(dropped, null_label)
