"""Training of hf_ddpm: flags (`args`), checkpoints (`checkpoint`), the loss (`loss`), the optimizer (`optimizer`),
the EMA of the weights (`ema`), the UNet of `--model_config` (`unet`), what a run's steps share (`run`), the checks
before a run (`run_checks`), sample grids and pipeline saves (`saving`) and the Accelerate loop (`loop`).

Import from the submodules (`from hf_ddpm.training.loop import train`); this package imports nothing heavy itself.
"""

__all__ = ["args", "checkpoint", "ema", "loop", "loss", "optimizer", "run", "run_checks", "saving", "unet"]
