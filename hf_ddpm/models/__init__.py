"""models of hf_ddpm: the from-scratch DDPM U-Net."""

from .presets import PRESETS
from .unet_2d import DDPMUNet2DModel, UNet2DOutput

__all__ = ["PRESETS", "DDPMUNet2DModel", "UNet2DOutput"]
