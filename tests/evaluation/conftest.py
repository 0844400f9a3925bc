"""Closed-form oracles for the evaluation tests: pipelines around the exact ε-model of Gaussian data
(`tests/closed_form.py`), whose every bound term has an expectation the tests compute by hand (see
`expected_kl_terms` in test_likelihood.py)."""

from __future__ import annotations

import pytest
import torch
from closed_form import GaussianEpsModel

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler


def gaussian_pipeline(
    mean: float = 0.0, std: float = 0.3, sample_size: int = 4, variance_type: str = "fixed_small", **scheduler_kwargs
) -> DDPMPipeline:
    """A DDPM pipeline whose UNet is the exact ε-model of N(mean, std²) data."""
    scheduler = DDPMScheduler(variance_type=variance_type, **scheduler_kwargs)
    model = GaussianEpsModel(
        alphas_cumprod=scheduler.alphas_cumprod.tolist(),
        mean=mean,
        std=std,
        sample_size=sample_size,
        learned_range_v=0.3 if variance_type == "learned_range" else None,
    )
    pipe = DDPMPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quantized_gaussian(num: int, mean: float, std: float, sample_size: int, seed: int) -> torch.Tensor:
    """Draws of N(mean, std²) rounded to the 256 levels of [-1, 1] (outer values clamped), shape (num, 1, R, R)."""
    x = mean + std * torch.randn(num, 1, sample_size, sample_size, generator=torch.Generator().manual_seed(seed))
    return (((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1).double()


@pytest.fixture(name="gaussian_pipeline")
def _gaussian_pipeline():
    return gaussian_pipeline


@pytest.fixture(name="quantized_gaussian")
def _quantized_gaussian():
    return quantized_gaussian


@pytest.fixture(scope="session")
def digit_feature_space(tmp_path_factory):
    """The default 16 px digit classifier, trained once per session into a temporary `HF_DDPM_CACHE`."""
    from hf_ddpm.evaluation.digit_features import get_digit_feature_space

    cache = tmp_path_factory.mktemp("hf_ddpm_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DDPM_CACHE", str(cache))
        yield get_digit_feature_space(16)
