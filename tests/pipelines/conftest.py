"""Fixtures for the pipeline tests: a tiny seeded UNet, pipelines around it, and an exact ε-model for Gaussian data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from closed_form import GaussianEpsModel

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

REPO_ROOT = Path(__file__).resolve().parents[2]
# A short chain keeps DDPM's default (num_inference_steps = T) cheap on CPU.
TINY_T = 10


def tiny_unet(seed: int = 0) -> DDPMUNet2DModel:
    """hf_ddpm's "tiny" preset (8×8×3) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    unet = DDPMUNet2DModel.from_preset("tiny")
    # Random init leaves some outputs near zero; perturbing every weight makes the network's output depend on all of
    # them, so a mis-loaded tensor cannot go unnoticed in the image comparisons.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def stock_unet_like(unet: torch.nn.Module) -> diffusers.UNet2DModel:
    """diffusers' UNet2DModel with the same config and weights (the oracle for drop-in tests)."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    stock = diffusers.UNet2DModel.from_config(config)
    stock.load_state_dict(unet.state_dict(), strict=True)
    return stock.eval()


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def ddpm_pipe() -> DDPMPipeline:
    return quiet(DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=TINY_T)))


@pytest.fixture
def ddim_pipe() -> DDPMPipeline:
    return quiet(DDPMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=TINY_T)))


def images_of(pipe, seed: int = 0, **kwargs) -> torch.Tensor:
    """Sample with a fresh seeded generator; `"pt"` output, so any later comparison is numeric."""
    kwargs.setdefault("output_type", "pt")
    kwargs.setdefault("batch_size", 2)
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def gaussian_pipe(scheduler_cls=DDIMScheduler, **scheduler_kwargs) -> DDPMPipeline:
    scheduler = scheduler_cls(**scheduler_kwargs)
    model = GaussianEpsModel(alphas_cumprod=scheduler.alphas_cumprod.tolist(), std=0.5, sample_size=8, in_channels=3)
    return quiet(DDPMPipeline(unet=model, scheduler=scheduler))


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (nothing imported, no module cache shared with this process)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    full_env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    assert result.returncode == 0, f"subprocess failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}"
    return result


# Test modules are imported with --import-mode=importlib, where conftest is not importable by name: the helpers
# above reach them as fixtures.
@pytest.fixture(name="tiny_unet")
def _tiny_unet_factory():
    return tiny_unet


@pytest.fixture(name="stock_unet_like")
def _stock_unet_like():
    return stock_unet_like


@pytest.fixture(name="images_of")
def _images_of():
    return images_of


@pytest.fixture(name="gaussian_pipe")
def _gaussian_pipe():
    return gaussian_pipe


@pytest.fixture(name="run_python")
def _run_python():
    return run_python


@pytest.fixture(name="quiet")
def _quiet():
    return quiet
