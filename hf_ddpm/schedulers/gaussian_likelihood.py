"""The Gaussian terms of the variational bound: KL of two Gaussians (DDPM eq. 5) and the discretized decoder (eq. 13)."""

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """
    KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats:
    ½ (log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²) / σ₂² − 1).

    Args:
        mean1 (`torch.Tensor`): μ₁.
        logvar1 (`torch.Tensor`): log σ₁².
        mean2 (`torch.Tensor`): μ₂.
        logvar2 (`torch.Tensor`): log σ₂².

    Returns:
        `torch.Tensor`: the broadcast elementwise KL.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """
    log P(x) of data on `num_bins` levels in [-1, 1] under a Gaussian discretized to those bins (DDPM eq. 13).

    Level x owns [x − δ, x + δ], δ = 1 / (num_bins − 1); the outermost bins extend to −∞ and +∞, so the
    probabilities of all levels sum to 1.

    Args:
        x (`torch.Tensor`): data on the levels, in [-1, 1].
        means (`torch.Tensor`): Gaussian means, broadcast with `x`.
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
    mass = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_mass = torch.log(mass.clamp(min=1e-12))
    edge = 1.0 - half_bin / 2  # halfway between the last two levels: robust to rounding of x
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mass))
