"""Helpers for the tests of `examples/*.py`: load a script as a module, save a tiny pipeline for it to load."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """`examples/<name>.py` as a module (its `main(argv)` and `parse_args(argv)` are then callable)."""
    # The scripts import their sibling modules (runtime_flags), as `python examples/<name>.py` would find them.
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_pipeline(folder: Path, num_train_timesteps: int = 1000, **unet_overrides) -> Path:
    """A seeded "tiny" preset DDPMPipeline (3 channels, 8 px, unless `unet_overrides` say otherwise) saved to
    `folder`, which is returned."""
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", **unet_overrides).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=num_train_timesteps)).save_pretrained(folder)
    return folder
