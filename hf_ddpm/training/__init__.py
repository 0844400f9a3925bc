"""Training of hf_ddpm: flags (`args`), checkpoints (`checkpoint`), the loss (`loss`), the optimizer (`optimizer`),
the EMA of the weights (`ema`) and the Accelerate loop (`loop`).

Import from the submodules (`from hf_ddpm.training.loop import train`); this package imports nothing heavy itself.
"""

__all__ = ["args", "checkpoint", "ema", "loop", "loss", "optimizer"]
