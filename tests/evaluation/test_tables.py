"""The DDIM Table 1 / Table 2 analogues, the NLL row and the solver table, on the exact ε-model of Gaussian data (a
short chain) and a tiny random UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import HeunDiscreteScheduler

from hf_ddpm.evaluation.likelihood import bits_per_dim
from hf_ddpm.evaluation.tables import (
    SOLVERS,
    nll_table,
    quality_pivot,
    reconstruction_table,
    sample_quality_table,
    solver_pivot,
    solver_scheduler,
    solver_summary,
    solver_table,
)
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

MEAN, STD = 0.1, 0.3


@pytest.fixture
def tiny_pipeline():
    def make(num_train_timesteps: int) -> DDPMPipeline:
        torch.manual_seed(0)
        unet = DDPMUNet2DModel.from_preset("tiny").eval()
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=num_train_timesteps))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


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


def _row(sampler, nfe, value, std_error=None, reference=False):
    row = {"sampler": sampler, "reference": reference, "nfe_budget": nfe, "steps": nfe, "nfe": nfe, "value": value}
    return row if std_error is None else {**row, "std_error": std_error}


def test_solver_summary_picks_the_fewest_nfe_within_two_standard_errors_of_the_reference():
    # Reference FDD 10 ± 1: a cell with se 1 reaches it when FDD ≤ 10 + 2·√2 ≈ 12.83.
    rows = [
        _row("a", 20, 10.1, 1.0), _row("a", 5, 20.0, 1.0), _row("a", 10, 12.5, 1.0),  # 12.5 reaches, 20 does not
        _row("b", 10, 13.0, 1.0), _row("b", 20, 9.0, 1.0),  # 13.0 is 3.0 > 2.83 worse; beating the reference counts
        _row("c", 50, 30.0, 1.0),
        _row("ddpm_1000", 1000, 10.0, 1.0, reference=True),
    ]  # fmt: skip
    summary = {row["sampler"]: row for row in solver_summary(rows)}
    assert list(summary) == ["a", "b", "c"]
    assert summary["a"]["fewest_nfe"] == 10 and summary["a"]["value"] == 12.5
    assert summary["a"]["allowed_gap"] == pytest.approx(2 * np.sqrt(2))
    assert summary["b"]["fewest_nfe"] == 20 and summary["c"]["fewest_nfe"] is None and summary["c"]["value"] is None
    assert summary["a"]["reference"] == "ddpm_1000" and summary["a"]["reference_value"] == 10.0
    # A wider tolerance lets b reach it at 10; with no error column the reference value itself is the bar.
    assert {r["sampler"]: r["fewest_nfe"] for r in solver_summary(rows, num_std_errors=3)}["b"] == 10
    share = [_row("a", 5, 0.85), _row("a", 10, 0.92), _row("ddpm_1000", 1000, 0.9, reference=True)]
    assert solver_summary(share, higher_is_better=True)[0]["fewest_nfe"] == 10
    with pytest.raises(ValueError, match="reference"):
        solver_summary(rows[:-1])


def test_solver_table_counts_network_evaluations_per_sample(tiny_pipeline):
    pipe = tiny_pipeline(num_train_timesteps=50)
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))  # an independent count of every evaluation
    rows = solver_table(pipe, nfes=(5, 10, 20), num_samples=3, batch_size=2, metric=_mean, progress=False)
    cells = [(r["sampler"], r["nfe_budget"], r["steps"], r["nfe"]) for r in rows]
    one_per_step = ("ddim_linear", "ddim_quadratic", "dpmsolver++_2m", "unipc", "euler")
    assert cells == [
        *[(name, n, n, n) for name in one_per_step for n in (5, 10, 20)],
        # Heun: 2S − 1 evaluations (no correction on the last step to σ = 0).
        ("heun", 5, 3, 5), ("heun", 10, 5, 9), ("heun", 20, 10, 19),
        # PNDM: three Runge–Kutta steps of 4 evaluations, then one per step (S + 9, S >= 4): nothing fits 5 or 10.
        ("pndm", 20, 11, 20),
        ("ddpm_50", 50, 50, 50),
    ]  # fmt: skip
    assert [r["reference"] for r in rows] == [False] * (len(rows) - 1) + [True]
    assert len(calls) == 2 * sum(r["nfe"] for r in rows)  # two pipeline calls (batches of 2 and 1) per cell
    assert all(r["metric"] == "_mean" and r["num_samples"] == 3 and np.isfinite(r["value"]) for r in rows)
    pivot = solver_pivot(rows)
    assert list(pivot[0]) == ["sampler", "NFE ≤ 5", "NFE ≤ 10", "NFE ≤ 20", "NFE ≤ 50", "NFE used"]
    heun = next(p for p in pivot if p["sampler"] == "heun")
    assert heun["NFE used"] == "5, 9, 19" and heun["NFE ≤ 50"] is None
    assert next(p for p in pivot if p["sampler"] == "pndm")["NFE ≤ 5"] is None


def test_solver_table_runs_each_schedule_once_when_budgets_exceed_t(tiny_pipeline):
    pipe = tiny_pipeline(num_train_timesteps=10)
    rows = solver_table(pipe, nfes=(20, 50), samplers=("unipc",), num_samples=2, metric=_mean, progress=False)
    assert [(r["nfe_budget"], r["steps"], r["nfe"]) for r in rows] == [(20, 10, 10), (50, 10, 10), (10, 10, 10)]
    assert rows[0]["seconds"] == rows[1]["seconds"]  # the same measurement, reported under both budgets


def test_solver_scheduler_keeps_the_models_noise_schedule_and_never_clips():
    # A config held in memory marks its default keys; diffusers' from_config would give Heun its own β there.
    config = DDPMScheduler(clip_sample=True).config
    assert HeunDiscreteScheduler.from_config(config).config.beta_end != config.beta_end  # the pitfall
    for name in SOLVERS:
        scheduler = solver_scheduler(name, config)
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), DDPMScheduler().alphas_cumprod.double())
        assert not scheduler.config.get("clip_sample", False), name
    assert solver_scheduler("heun", config).config.timestep_spacing == "trailing"
    assert solver_scheduler("ddim_quadratic", config).config.timestep_spacing == "quadratic"
    with pytest.raises(ValueError, match="name"):
        solver_scheduler("ddpm", config)


def test_solver_table_rejects_bad_arguments(gaussian_pipeline):
    pipe = gaussian_pipeline(MEAN, STD, num_train_timesteps=20)
    with pytest.raises(ValueError, match="samplers"):
        solver_table(pipe, samplers=("euler", "rk45"), metric=_mean)
    with pytest.raises(ValueError, match="nfes"):
        solver_table(pipe, nfes=(0, 10), metric=_mean)
    with pytest.raises(ValueError, match="metric"):
        solver_table(pipe, nfes=(5,), metric="inception-score")


def test_solver_table_on_the_exact_model_ranks_second_order_solvers_first(gaussian_pipeline):
    # The exact ε-model of N(MEAN, STD²), value = |sample std − STD|. Measured: DPM-Solver++ 0.18 / 0.092 / 0.024 /
    # 0.010 and UniPC 0.18 / 0.091 / 0.022 / 0.009 at 5 / 10 / 20 / 50 NFE, DDIM (first order) 0.054 at 20 and 0.019
    # at 50; the DDPM 100-step reference 0.019. (At 5 NFE the last step, from t = 19 straight to x̂_0, shrinks the
    # spread for every sampler.)
    pipe = gaussian_pipeline(MEAN, STD, num_train_timesteps=100, beta_end=0.2)
    samplers = ("ddim_linear", "dpmsolver++_2m", "unipc")
    rows = solver_table(pipe, nfes=(5, 20, 50), samplers=samplers, num_samples=64, metric=std_error, progress=False)
    value = {(r["sampler"], r["nfe"]): r["value"] for r in rows}
    for name in ("dpmsolver++_2m", "unipc"):
        assert value[name, 5] > value[name, 20] > value[name, 50]
        assert value[name, 20] < 0.5 * value["ddim_linear", 20]
    # No error column: a cell must match the reference's own |std − STD| (0.019), which both reach only at 50.
    summary = {row["sampler"]: row["fewest_nfe"] for row in solver_summary(rows)}
    assert summary["dpmsolver++_2m"] == 50 and summary["unipc"] == 50


def test_solver_table_reports_fdd_with_its_error(gaussian_pipeline, digit_feature_space):
    pipe = gaussian_pipeline(MEAN, STD, sample_size=16, num_train_timesteps=20)
    rows = solver_table(pipe, nfes=(5,), samplers=("unipc",), num_samples=32, progress=False)
    assert [(r["sampler"], r["metric"]) for r in rows] == [("unipc", "fdd"), ("ddpm_20", "fdd")]
    assert all(0 < r["std_error"] < r["value"] and 0 <= r["precision"] <= 1 for r in rows)
    (summary,) = solver_summary(rows)
    assert summary["allowed_gap"] is None or summary["allowed_gap"] > 0
