"""The optimizer of DDPM training: Adam (the paper's §4, lr 2e-4), as torch's AdamW with decoupled weight decay.

torch ships three implementations of the same update: a Python loop over parameters ("for-loop", torch's default on
the CPU), multi-tensor `torch._foreach_*` kernels ("foreach", its default on CUDA) and one fused kernel per dtype
and device ("fused"). They compute the same Adam step up to float rounding; the fused one makes one pass over each
tensor instead of ~10, and is the fastest of the three (timings: `benchmarks/README.md`). `"auto"` picks it wherever
torch has it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["ADAM_IMPLEMENTATIONS", "FUSED_DEVICE_TYPES", "adamw"]

ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
# Device types with a fused AdamW kernel in the torch versions hf_ddpm supports.
FUSED_DEVICE_TYPES = ("cpu", "cuda")


def _fused_supported(parameters: list[torch.Tensor]) -> bool:
    return all(p.device.type in FUSED_DEVICE_TYPES and p.is_floating_point() for p in parameters)


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    implementation: str = "auto",
) -> torch.optim.AdamW:
    """
    torch's AdamW on `parameters` with the chosen implementation.

    Args:
        parameters (`Iterable[torch.nn.Parameter]`):
            The parameters to train (they may move to another device afterwards, e.g. in `accelerator.prepare`,
            as long as torch has the implementation there).
        lr (`float`, *optional*, defaults to 2e-4):
            The learning rate (DDPM §4: 2e-4 for CIFAR10, 2e-5 at 256²).
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`):
            Adam's β1, β2.
        weight_decay (`float`, *optional*, defaults to 0.0):
            Decoupled weight decay; 0 is plain Adam, as in the paper.
        eps (`float`, *optional*, defaults to 1e-8):
            Adam's ε.
        implementation (`str`, *optional*, defaults to `"auto"`):
            `"fused"`, `"foreach"`, `"for-loop"`, or `"auto"`: fused when every parameter is a floating-point tensor
            on a device of `FUSED_DEVICE_TYPES`, torch's default otherwise.

    Returns:
        `torch.optim.AdamW`
    """
    if implementation not in ADAM_IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {list(ADAM_IMPLEMENTATIONS)}, got {implementation!r}.")
    parameters = list(parameters)
    if implementation == "auto":
        implementation = "fused" if _fused_supported(parameters) else "default"
    if implementation == "fused" and not _fused_supported(parameters):
        devices = sorted({f"{p.device.type}:{p.dtype}" for p in parameters})
        raise ValueError(
            f"the fused AdamW needs floating-point parameters on one of {list(FUSED_DEVICE_TYPES)}, got {devices}; "
            "use implementation 'auto', 'foreach' or 'for-loop'."
        )
    # "default": torch's own choice for the device (for-loop on the CPU, foreach on CUDA).
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}, "default": {}}
    return torch.optim.AdamW(
        parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, **options[implementation]
    )
