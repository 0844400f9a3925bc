"""The DDIM Table 1 / Table 2 analogues and the NLL row, on the exact ε-model of Gaussian data (a short chain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_ddpm.evaluation.likelihood import bits_per_dim
from hf_ddpm.evaluation.tables import nll_table, quality_pivot, reconstruction_table, sample_quality_table
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

MEAN, STD = 0.1, 0.3


def std_error(images: torch.Tensor) -> float:
    """|sample std − true std| in the model's space: 0 for a perfect sampler of N(MEAN, STD²)."""
    return abs((images * 2 - 1).std().item() - STD)


def test_quality_table_samples_without_clipping_unless_asked():
    # DDIM's released sampler does not clip x̂_0 (the default here); clip_sample=None follows the saved config
    # (diffusers' default True). A random UNet's x̂_0 leaves [-1, 1] at most steps, so clipping changes its samples.
    # (The exact Gaussian ε-models cannot show it: they act per pixel, and a pixel whose x̂_0 is ever clipped ends
    # at the range's edge either way.)
    torch.manual_seed(0)
    pipe = DDPMPipeline(
        unet=DDPMUNet2DModel.from_preset("tiny").eval(), scheduler=DDPMScheduler(num_train_timesteps=20)
    )
    assert pipe.scheduler.config.clip_sample is True

    def value(clip_sample):
        rows = sample_quality_table(
            pipe, steps=(5,), etas=(0.0,), sigma_hat=False, spacings=("linear",), num_samples=4, metric=_mean,
            clip_sample=clip_sample, progress=False,
        )  # fmt: skip
        return rows[0]["value"]

    unclipped, from_config, clipped = value(False), value(None), value(True)
    assert from_config == clipped
    assert abs(clipped - unclipped) > 1e-4  # measured 9e-4; float noise is ~1e-7


def _mean(images: torch.Tensor) -> float:
    return images.mean().item()


def test_quality_table_covers_every_cell_and_the_exact_model_is_right_with_all_steps(gaussian_pipeline):
    pipe = gaussian_pipeline(MEAN, STD, num_train_timesteps=100, beta_end=0.2)
    rows = sample_quality_table(
        pipe, steps=(4, 100), etas=(0.0, 1.0), num_samples=64, batch_size=32, metric=std_error, progress=False
    )
    assert [(r["spacing"], r["sampler"], r["steps"]) for r in rows] == [
        (spacing, sampler, s)
        for spacing in ("linear", "quadratic")
        for sampler in ("eta=0", "eta=1", "sigma_hat")
        for s in (4, 100)
    ]
    assert {r["metric"] for r in rows} == {"std_error"} and all(r["num_samples"] == 64 for r in rows)
    assert rows[0]["eta"] == 0.0 and rows[4]["eta"] is None
    value = {(r["spacing"], r["sampler"], r["steps"]): r["value"] for r in rows}
    # With S = T the ODE (η = 0) with the exact ε reproduces the data's spread (64 × 16 values: the std's own
    # sampling error is about 0.3 / √2048 ≈ 0.007); the stochastic samplers carry the discretisation error of
    # Gaussian reverse steps on a 100-step chain (measured 0.029 for η = 1, 0.011 for σ̂).
    assert value[("linear", "eta=0", 100)] < 0.02
    for sampler in ("eta=0", "eta=1", "sigma_hat"):
        assert value[("linear", sampler, 100)] < 0.05
        # S = T is the same schedule in both spacings: sampled once, reported twice.
        assert value[("quadratic", sampler, 100)] == value[("linear", sampler, 100)]
    # DDIM App. D.2: at few steps the quadratic sub-sequence beats the linear one (measured 0.12 vs 0.20 at S = 4).
    assert value[("quadratic", "eta=0", 4)] < value[("linear", "eta=0", 4)]
    # σ̂ adds β-sized noise that 4 large steps cannot remove (DDIM Table 1's worst row at small S).
    assert value[("linear", "sigma_hat", 4)] > 0.1
    assert value[("linear", "sigma_hat", 4)] > value[("linear", "eta=0", 4)]
    assert pipe.scheduler.__class__ is DDPMScheduler and len(pipe.scheduler.timesteps) == 100  # caller's untouched

    pivot = quality_pivot(rows)
    assert len(pivot) == 6 and pivot[0]["S=4"] == value[("linear", "eta=0", 4)]


def test_quality_table_rejects_bad_arguments(gaussian_pipeline):
    pipe = gaussian_pipeline(MEAN, STD, num_train_timesteps=100, beta_end=0.2)
    with pytest.raises(ValueError, match="steps"):
        sample_quality_table(pipe, steps=(10, 1000), metric=std_error)
    with pytest.raises(ValueError, match="metric"):
        sample_quality_table(pipe, steps=(10,), metric="inception-score")
    with pytest.raises(ValueError, match="reference_statistics"):
        sample_quality_table(pipe, steps=(10,), metric="fid")
    with pytest.raises(ValueError, match="spacing"):
        sample_quality_table(pipe, steps=(10,), spacings=("cubic",), metric=std_error, progress=False)


def test_reconstruction_error_falls_with_steps_to_zero_for_the_exact_model(gaussian_pipeline, quantized_gaussian):
    pipe = gaussian_pipeline(MEAN, STD)
    images = quantized_gaussian(16, MEAN, STD, 4, seed=0).float()
    rows = reconstruction_table(pipe, images, steps=(5, 20, 100, 500), progress=False)
    mse = [r["mse_per_dim"] for r in rows]
    assert [r["steps"] for r in rows] == [5, 20, 100, 500] and rows[0]["num_images"] == 16
    # DDIM Table 2's shape: the ODE discretisation error falls steadily with S (CIFAR10: 0.014 at 10 → 1e-4 at 1000).
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    assert mse[-1] < 1e-4 and mse[0] > 10 * mse[-1]


def test_nll_row_is_the_mean_of_bits_per_dim(gaussian_pipeline, quantized_gaussian):
    pipe = gaussian_pipeline(MEAN, STD)
    images = quantized_gaussian(32, MEAN, STD, 4, seed=0)
    (row,) = nll_table(pipe, images, timesteps=30, seed=5)
    expected = bits_per_dim(pipe, images, generator=torch.Generator().manual_seed(5), timesteps=30)
    assert row["bits_per_dim"] == pytest.approx(expected.double().mean().item(), rel=1e-6)
    assert row["standard_error"] == pytest.approx(expected.double().std().item() / np.sqrt(32), rel=1e-5)
    assert row["prior"] + row["decoder"] + row["kl_terms"] == pytest.approx(row["bits_per_dim"], rel=1e-5)
    assert row["num_images"] == 32 and row["timesteps"] == 30


def test_quality_table_reports_fdd_with_its_error_precision_and_recall(gaussian_pipeline, digit_feature_space):
    # The exact ε-model of Gaussian pixels draws noise images, not digits: far from the real digits in FDD.
    pipe = gaussian_pipeline(MEAN, STD, sample_size=16, num_train_timesteps=20)
    rows = sample_quality_table(
        pipe, steps=(2, 20), etas=(0.0,), sigma_hat=False, spacings=("linear",), num_samples=32, metric="fdd",
        progress=False,
    )  # fmt: skip
    assert [(r["metric"], r["steps"], r["num_samples"]) for r in rows] == [("fdd", 2, 32), ("fdd", 20, 32)]
    for row in rows:
        assert row["value"] > 100 and 0 < row["std_error"] < row["value"]  # real digits vs real digits: ~5
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert rows[0]["value"] != rows[1]["value"]
