"""hf_ddpm: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) as first-class diffusers components.

Importing the package imports every component module, because diffusers (>= 0.42) only resolves a saved
component's class when its module is already imported.
"""

from hf_ddpm.models import DDPMUNet2DModel
from hf_ddpm.pipelines import DDPMPipeline
from hf_ddpm.schedulers import DDIMScheduler, DDPMScheduler

__version__ = "0.1.0.dev0"

__all__ = ["DDIMScheduler", "DDPMPipeline", "DDPMScheduler", "DDPMUNet2DModel", "__version__"]
